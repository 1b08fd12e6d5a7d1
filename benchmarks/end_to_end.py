"""Whole runs: wall time, peak memory and training throughput.

Each workload runs as its own process (so that its peak resident memory, from
``os.wait4``'s rusage, is its own), with ``OMP_NUM_THREADS`` set to ``--threads``:

- ``train``: ``pyro-mmt train DATA --rho R --beta B --epochs E`` (the CLI: split, standardise,
  fit the estimator, score, plots). Its run folder gives the training seconds per epoch, from
  which samples per second (rows through SVI steps, labelled and unlabelled) and ms per step;
- ``demo``: ``pyro-mmt demo`` (what ``make demo`` runs), wall time and memory only.

By default small settings (mfeat, ρ = 10, β = 0.05, 3 epochs; demo with 2 epochs), a few
minutes in all. ``--fmnist`` trains on Fashion-MNIST at ρ = 100, β = 0.05 for 8 epochs (the
setting of ``examples/fashion_mnist.py`` for the t/γ model; needs the Debian package
``dataset-fashion-mnist``), ``--full-demo`` runs ``make demo`` as it is (40 epochs).

    python -m benchmarks.end_to_end                       # small settings
    python -m benchmarks.end_to_end --fmnist --full-demo  # the full runs (about an hour here)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.timing import machine

RESULTS = Path(__file__).parent / "results"


def run(command: list[str], threads: int) -> dict:
    """Run ``command``; its wall time (s), peak RSS (MiB), exit status and output tail."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    tic = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - tic
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        tail = log.read()[-2000:]
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{tail}")
    return {"wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "user_s": usage.ru_utime,
            "tail": tail}


def training_throughput(run_dir: Path, batch_size: int) -> dict:
    """Samples per second and ms per step of the training epochs of a CLI run folder."""
    history = pd.read_csv(run_dir / "history.csv")
    with np.load(run_dir / "train.npz", allow_pickle=False) as f:
        y = f["y"]
    n_lab, n_unl = int((y >= 0).sum()), int((y < 0).sum())
    pairs = math.ceil(n_unl / batch_size)
    samples = n_unl + pairs * min(batch_size, n_lab)  # one labelled batch per unlabelled one
    steps = pairs * (2 if n_lab else 1)
    seconds = float(history["seconds"].sum())
    epochs = len(history)
    # the first epoch also pays one-off costs (the optimiser's first construction imports
    # torch._dynamo, about a second): the steady rate leaves it out
    later = float(history["seconds"].iloc[1:].sum()) if epochs > 1 else float("nan")
    return {"train_rows": len(y), "labelled_rows": n_lab, "epochs": epochs,
            "train_s": seconds, "samples_per_s": samples * epochs / seconds,
            "steady_samples_per_s": samples * (epochs - 1) / later if epochs > 1 else later,
            "ms_per_step": 1e3 * seconds / (steps * epochs),
            "first_epoch_s": float(history["seconds"].iloc[0])}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mfeat", help="data set of the small train run")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the small train run")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--demo-epochs", type=int, default=2)
    p.add_argument("--fmnist", action="store_true", help="also Fashion-MNIST, rho 100, beta 0.05")
    p.add_argument("--fmnist-epochs", type=int, default=8)
    p.add_argument("--full-demo", action="store_true", help="make demo as it is (40 epochs)")
    p.add_argument("--no-demo", action="store_true")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch of a tiny model")
    p.add_argument("--out", type=Path, default=RESULTS / "end_to_end.csv")
    args = p.parse_args(argv)
    cli = [sys.executable, "-m", "pyro_mmt.cli"]
    small = ["--hidden", "8", "--latent-dim", "2"] if args.quick else []
    trains = [(args.data, 10.0, 0.05, 1 if args.quick else args.epochs)]
    if args.fmnist:
        trains.append(("fmnist", 100.0, 0.05, args.fmnist_epochs))
    info = machine()
    print(f"machine: {info} (children run with {args.threads} thread(s))")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for data, rho, beta, epochs in trains:
            out = Path(tmp) / f"train-{data}"
            command = cli + ["train", data, "--rho", str(rho), "--beta", str(beta), "--epochs",
                             str(epochs), "--batch-size", str(args.batch_size), "--quiet",
                             "--out", str(out), *small]
            result = run(command, args.threads)
            config = json.loads((out / "config.json").read_text())
            row = {"workload": f"train {data} rho={rho:g} beta={beta:g}",
                   "hidden": str(config["estimator"].get("hidden")),
                   "latent_dim": config["estimator"].get("latent_dim"),
                   "batch": args.batch_size, **training_throughput(out, args.batch_size),
                   **{k: v for k, v in result.items() if k != "tail"}}
            rows.append(row)
            print(f"  {row['workload']}: {row['wall_s']:.0f} s wall, {row['train_s']:.0f} s "
                  f"training, {row['samples_per_s']:.0f} samples/s ({row['steady_samples_per_s']:.0f}"
                  f" after the first epoch), {row['ms_per_step']:.1f} ms/step, peak "
                  f"{row['peak_rss_mib']:.0f} MiB", flush=True)
        if not args.no_demo:
            demo_epochs = [] if args.full_demo else ["--epochs", "1" if args.quick else
                                                     str(args.demo_epochs)]
            command = cli + ["demo", "--out", str(Path(tmp) / "demo"), *demo_epochs]
            if args.quick:
                command += ["--methods", "lr"]
            result = run(command, args.threads)
            rows.append({"workload": "demo" + ("" if args.full_demo else
                                               f" (epochs {demo_epochs[-1]})"),
                         **{k: v for k, v in result.items() if k != "tail"}})
            print(f"  {rows[-1]['workload']}: {result['wall_s']:.0f} s wall, peak "
                  f"{result['peak_rss_mib']:.0f} MiB", flush=True)
    table = pd.DataFrame(rows)
    table["threads"] = args.threads
    table["loadavg_1min"] = machine()["loadavg_1min"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
