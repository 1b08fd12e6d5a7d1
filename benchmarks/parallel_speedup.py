"""Wall time of independent fits in parallel processes against the same fits one after the other.

Two workloads, each run with ``jobs = 1`` and with ``jobs = 2`` (or ``--jobs``), alternating
(``--repeats`` pairs), so that a change of load from other processes hits both:

- ``cli``: ``pyro-mmt benchmark`` on a small but real grid (by default digits and breast, ρ = 10,
  β = 0.05 and 0.2, seeds 0 and 1, methods t_gamma, lr, selftrain: 24 fits), each run a fresh
  process; its ``results.csv`` rows must be equal apart from the seconds column;
- ``members``: :func:`pyro_mmt.training.parallel.fit_members`, the ``n_init`` members of one
  estimator fit (default model, mfeat at ρ = 10, β = 0.05, 3 members, ``--epochs``), in one
  process; the trained parameters must be equal.

    python -m benchmarks.parallel_speedup                        # both, ~30 minutes here
    python -m benchmarks.parallel_speedup --workload members --epochs 3
    python -m benchmarks.parallel_speedup --quick                # smoke run

Results: ``benchmarks/results/parallel_speedup.csv`` (one row per run; for ``cli`` also the CPU
seconds of the command and its workers, and ``cores_used`` = CPU seconds / wall seconds, which
says whether the parallel run found a second core to use; ``fit_seconds``, the fits' own
seconds summed, says how much each fit slowed down) and a summary printed.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from benchmarks.timing import machine

RESULTS = Path(__file__).parent / "results"

#: The default grid of the ``cli`` workload.
GRID = ["--datasets", "digits", "breast", "--rho", "10", "--beta", "0.05", "0.2",
        "--seeds", "0", "1", "--methods", "t_gamma", "lr", "selftrain"]


def run_cli(jobs: int, out: Path, extra: list[str]) -> tuple[float, float]:
    """Wall seconds of ``pyro-mmt benchmark ... --jobs jobs`` in a fresh process, and the CPU
    seconds (user + system) it and its worker processes used."""
    argv = [sys.executable, "-m", "pyro_mmt.cli", "benchmark", *GRID, *extra, "--jobs",
            str(jobs), "--out", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def cli_rows_equal(a: Path, b: Path) -> bool:
    """Whether two runs' results.csv hold the same rows, apart from the seconds."""
    ra = pd.read_csv(a / "results.csv").drop(columns="seconds")
    rb = pd.read_csv(b / "results.csv").drop(columns="seconds")
    return ra.equals(rb)


def run_members(jobs: int, epochs: int, members: int):
    """Wall seconds of fit_members for the estimator's default model on mfeat; the members."""
    import torch

    from pyro_mmt.data import Standardiser, load_dataset, long_tailed_split
    from pyro_mmt.estimator import build_model, make_objective
    from pyro_mmt.training.parallel import fit_members

    torch.set_num_threads(1)
    split = long_tailed_split(load_dataset("mfeat"), 10, 0.05, 0)
    data = Standardiser().fit_transform(split.train)

    def build():
        return build_model(data.dims, data.num_classes, alpha=1000.0, alpha_unit="datum",
                           logit_adjustment=0.0, unlabelled_prior_shift=0.0)

    tic = time.perf_counter()
    fitted = fit_members(build, data, [1000 * i for i in range(members)], jobs=jobs,
                         objective=make_objective, epochs=epochs, progress=False)
    return time.perf_counter() - tic, fitted


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=["cli", "members", "both"], default="both")
    p.add_argument("--jobs", type=int, default=2, help="processes of the parallel runs")
    p.add_argument("--repeats", type=int, default=1, help="pairs of runs (serial, parallel)")
    p.add_argument("--epochs", type=int, default=None,
                   help="cli: override the deep models' epochs; members: epochs (default 10)")
    p.add_argument("--members", type=int, default=3, help="members of the members workload")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: breast, one seed, lr and t_gamma for 1 epoch; 2 members")
    p.add_argument("--out", type=Path, default=RESULTS / "parallel_speedup.csv")
    args = p.parse_args(argv)
    global GRID
    if args.quick:
        GRID = ["--datasets", "breast", "--rho", "10", "--beta", "0.2", "--seeds", "0",
                "--methods", "t_gamma", "lr"]
        args.epochs, args.members = 1, 2
    info = machine()
    print(f"machine: {info}", flush=True)
    rows = []
    if args.workload in ("cli", "both"):
        extra = [] if args.epochs is None else ["--epochs", str(args.epochs)]
        with tempfile.TemporaryDirectory() as tmp:
            for repeat in range(args.repeats):
                outs = {}
                for jobs in (1, args.jobs):
                    outs[jobs] = Path(tmp) / f"r{repeat}_j{jobs}"
                    seconds, cpu = run_cli(jobs, outs[jobs], extra)
                    rows.append({"workload": "cli", "repeat": repeat, "jobs": jobs,
                                 "seconds": seconds, "cpu_seconds": cpu,
                                 "cores_used": cpu / seconds,
                                 "fits": len(pd.read_csv(outs[jobs] / "results.csv")),
                                 "fit_seconds": pd.read_csv(outs[jobs] / "results.csv")[
                                     "seconds"].sum(),
                                 "loadavg_1min": machine()["loadavg_1min"]})
                    print(f"  cli jobs={jobs}: {seconds:.1f} s, {cpu:.1f} CPU s "
                          f"({cpu / seconds:.2f} cores)", flush=True)
                same = cli_rows_equal(outs[1], outs[args.jobs])
                rows[-1]["same_as_serial"] = rows[-2]["same_as_serial"] = same
                print(f"  rows equal apart from seconds: {same}", flush=True)
    if args.workload in ("members", "both"):
        import torch

        epochs = args.epochs or 10
        for repeat in range(args.repeats):
            fitted = {}
            for jobs in (1, args.jobs):
                seconds, fitted[jobs] = run_members(jobs, epochs, args.members)
                rows.append({"workload": "members", "repeat": repeat, "jobs": jobs,
                             "seconds": seconds, "fits": args.members, "epochs": epochs,
                             "loadavg_1min": machine()["loadavg_1min"]})
                print(f"  members jobs={jobs}: {seconds:.1f} s", flush=True)
            same = all(torch.equal(v, b.state_dict[k])
                       for a, b in zip(fitted[1], fitted[args.jobs], strict=True)
                       for k, v in a.state_dict.items())
            rows[-1]["same_as_serial"] = rows[-2]["same_as_serial"] = same
            print(f"  parameters equal: {same}", flush=True)
    table = pd.DataFrame(rows)
    summary = (table.groupby(["workload", "jobs"])["seconds"].median().unstack("jobs"))
    summary["ratio"] = summary[args.jobs] / summary[1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    print(summary.to_markdown(floatfmt=".3g"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
