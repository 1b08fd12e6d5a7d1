"""How the training step scales: time against batch size, classes K, modalities M, input size.

Each sweep changes one size from the base setting (two modalities of 384, K = 10, batch 256,
hidden 256, d = 32) and times the Pyro step (SVI + GammaPowerELBO + MultiTensorAdam, as the
training loop runs it) and the plain-PyTorch step, interleaved, on labelled and unlabelled
batches. The modality sweep keeps the total input size at 768 and splits it into M parts, so
it measures the price of more encoders and decoders for the same data.

An unlabelled step enumerates the K labels (every decoder and encoder body runs K times in one
batched pass), so it should cost about K labelled steps or less (less: the classifier and the
encoders' first layers see x once). ``enum_ratio`` = unlabelled / (K x labelled) is reported.

    python -m benchmarks.scaling            # CSV + PNG in benchmarks/results/ (about 5 minutes)
    python -m benchmarks.scaling --quick    # a smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchmarks.steps import build, plain_step, pyro_step, random_batch
from benchmarks.timing import interleaved, machine, parse_threads

RESULTS = Path(__file__).parent / "results"

BASE = {"modalities": 2, "total_dim": 768, "K": 10, "batch": 256}
SWEEPS = {
    "batch": [32, 64, 128, 256, 512, 1024, 2048],
    "K": [2, 5, 10, 20, 50],
    "modalities": [1, 2, 3, 4, 6, 8],
    "dim_per_modality": [16, 64, 256, 1024],
}


def dims_for(modalities: int, total_dim: int) -> dict[str, int]:
    return {f"m{j}": total_dim // modalities for j in range(modalities)}


def time_cell(dims, k, batch_size, *, hidden, latent_dim, rounds, repeats):
    """Median step times (ms) of plain and Pyro steps, labelled and unlabelled."""
    m2 = build(dims, k, hidden=hidden, latent_dim=latent_dim)
    steps = {}
    for labelled in (True, False):
        batch = random_batch(dims, batch_size, k, labelled=labelled)
        tag = "lab" if labelled else "unl"
        plain, pyro_ = plain_step(m2), pyro_step(m2)
        steps[f"plain_{tag}"] = lambda f=plain, b=batch: f(b)
        steps[f"pyro_{tag}"] = lambda f=pyro_, b=batch: f(b)
    timings = interleaved(steps, rounds=rounds, repeats=repeats, warmup=1)
    row = {f"{k_}_ms": 1e3 * timings.median(k_) for k_ in steps}
    for impl in ("plain", "pyro"):
        row[f"{impl}_enum_ratio"] = row[f"{impl}_unl_ms"] / (k * row[f"{impl}_lab_ms"])
    return row


def plot(table: pd.DataFrame, path: Path) -> None:
    """One panel per sweep (ms per step, log-log) and the enumeration ratio against K."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 3.6), layout="constrained")
    axes = fig.subplots(1, 5)
    for ax, sweep in zip(axes, SWEEPS, strict=False):
        part = table[table["sweep"] == sweep].sort_values("value")
        for col, style, label in (("pyro_unl_ms", "-o", "Pyro, unlabelled"),
                                  ("plain_unl_ms", "--o", "plain, unlabelled"),
                                  ("pyro_lab_ms", "-s", "Pyro, labelled"),
                                  ("plain_lab_ms", "--s", "plain, labelled")):
            ax.plot(part["value"], part[col], style, label=label, markersize=4)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel({"batch": "batch size", "K": "classes K", "modalities":
                       "modalities M (total dim 768)",
                       "dim_per_modality": "input dim per modality (M = 2)"}[sweep])
        ax.set_ylabel("ms per step")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    part = table[table["sweep"] == "K"].sort_values("value")
    ax = axes[4]
    ax.plot(part["value"], part["pyro_enum_ratio"], "-o", label="Pyro")
    ax.plot(part["value"], part["plain_enum_ratio"], "--o", label="plain")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("classes K")
    ax.set_ylabel("unlabelled / (K x labelled)")
    ax.set_title("cost of enumeration", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny networks, two points")
    p.add_argument("--out", type=Path, default=RESULTS / "scaling.csv")
    args = p.parse_args(argv)
    sweeps = {k: SWEEPS[k] for k in args.sweeps}
    if args.quick:
        sweeps = {k: v[:2] for k, v in sweeps.items()}
        args.hidden, args.latent_dim, args.rounds, args.repeats = 16, 4, 1, 1
    threads = parse_threads(args.threads)
    print(f"machine: {machine()}")
    rows = []
    for sweep, values in sweeps.items():
        for value in values:
            setting = dict(BASE)
            if sweep == "dim_per_modality":
                setting["total_dim"] = 2 * value
            elif sweep in setting:
                setting[sweep] = value
            if args.quick:
                setting["batch"] = min(setting["batch"], 32)
            dims = dims_for(setting["modalities"], setting["total_dim"])
            row = {"sweep": sweep, "value": value, **setting, "threads": threads}
            row.update(time_cell(dims, setting["K"], setting["batch"], hidden=(args.hidden,),
                                 latent_dim=args.latent_dim, rounds=args.rounds,
                                 repeats=args.repeats))
            rows.append(row)
            print(f"  {sweep}={value}: pyro {row['pyro_lab_ms']:.1f} / {row['pyro_unl_ms']:.1f} ms, "
                  f"plain {row['plain_lab_ms']:.1f} / {row['plain_unl_ms']:.1f} ms "
                  "(labelled / unlabelled)", flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    print(table.drop(columns=["threads"]).to_markdown(index=False, floatfmt=".3g"))
    if set(SWEEPS) <= set(sweeps):
        png = args.out.with_suffix(".png")
        plot(table, png)
        print(f"wrote {args.out} and {png}")
    else:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
