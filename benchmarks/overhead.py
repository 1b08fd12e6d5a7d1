"""Pyro's overhead: one training step through SVI against the same step in plain PyTorch.

For each cell (data dims, number of classes K, labelled or unlabelled batch, batch size) the
same networks take interleaved steps (``benchmarks/timing.py``) with

- ``plain``: the loss written directly in PyTorch (``benchmarks/plain_step.py``), one
  ``torch.optim.Adam(fused=True)``: the reference;
- ``pyro``: ``SVI(m2.model, m2.guide, MultiTensorAdam, GammaPowerELBO())`` stepped as
  the training loop steps it, Pyro validation on (its default);
- ``pyro_noval``: the same with ``pyro.enable_validation(False)``;
- ``pyro_stock``: the same with ``pyro.optim.ClippedAdam`` (one Adam per tensor), the training
  loop's default optimiser before issue 14.

These are single steps at the sizes of issue 7 (hidden 256, d = 32, batch 64–1024), through
Pyro's own ``SVI``. The overhead of whole epochs of :func:`pyro_mmt.training.train` at the
estimator's default sizes (issue 14) is ``--defaults`` (``benchmarks/epoch_overhead.py``).

All clamp gradients to ±10. The table gives median step times (ms), the ratio of medians over
``plain`` with the min–max of the per-round ratios (the CSV also has the ratio of the fastest
runs, ``ratio_best``, the steadiest figure under bursts of load), and the plain step's achieved
GFLOP/s
(matrix products, ``torch.utils.flop_counter``). ``--gamma-vs-enum`` adds a second table:
GammaPowerELBO at a small explicit γ, GammaPowerELBO("auto") and ``TraceEnum_ELBO`` on the same
model, batch 256.

    python -m benchmarks.overhead                  # the full grid (about 10 minutes)
    python -m benchmarks.overhead --quick          # a smoke run (seconds)
    python -m benchmarks.overhead --defaults       # = python -m benchmarks.epoch_overhead
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import pandas as pd
import pyro

from benchmarks.steps import DIMS, build, plain_step, pyro_step, random_batch, step_flops
from benchmarks.timing import interleaved, keep_freed_memory, machine, parse_threads

RESULTS = Path(__file__).parent / "results"


def overhead_cell(dims, num_classes, labelled, batch_size, *, rounds, repeats, stock=True,
                  hidden=(256,), latent_dim=32):
    """Timings of one cell: a dict of medians (ms), ratios and GFLOP/s."""
    pyro.clear_param_store()  # a previous cell's model registered the same names
    m2 = build(dims, num_classes, hidden=hidden, latent_dim=latent_dim)
    batch = random_batch(dims, batch_size, num_classes, labelled=labelled)
    steps = {
        "plain": plain_step(m2),
        "pyro": pyro_step(m2),
        "pyro_noval": pyro_step(m2, validation=False),
    }
    if stock:
        steps["pyro_stock"] = pyro_step(m2, optimizer="clipped_adam")
    timings = interleaved({k: (lambda f=f: f(batch)) for k, f in steps.items()},
                          rounds=rounds, repeats=repeats)
    flops = step_flops(m2, batch)
    row = {f"{k}_ms": 1e3 * timings.median(k) for k in steps}
    for k in steps:
        if k == "plain":
            continue
        ratio, low, high = timings.ratio(k, "plain")
        suffix = k.removeprefix("pyro")
        row[f"ratio{suffix}"] = ratio
        row[f"ratio{suffix}_min"] = low
        row[f"ratio{suffix}_max"] = high
    # the fastest run of each: under bursts of load from other processes (positive, additive
    # noise) the minimum is the steadiest estimate of a step's own cost
    for k in steps:
        row[f"{k}_best_ms"] = 1e3 * min(timings.runs[k])
    row["ratio_best"] = row["pyro_best_ms"] / row["plain_best_ms"]
    row["ratio_noval_best"] = row["pyro_noval_best_ms"] / row["plain_best_ms"]
    row["plain_gflops"] = flops / timings.median("plain") / 1e9
    row["gflop_per_step"] = flops / 1e9
    return row


def gamma_vs_enum_cell(dims, num_classes, labelled, batch_size, *, gamma, rounds, repeats,
                       hidden=(256,), latent_dim=32):
    pyro.clear_param_store()
    m2 = build(dims, num_classes, hidden=hidden, latent_dim=latent_dim)
    batch = random_batch(dims, batch_size, num_classes, labelled=labelled)
    steps = {
        "trace_enum": pyro_step(m2, objective="trace_enum", validation=False),
        "gamma_small": pyro_step(m2, gamma=gamma, validation=False),
        "gamma_auto": pyro_step(m2, validation=False),
    }
    timings = interleaved({k: (lambda f=f: f(batch)) for k, f in steps.items()},
                          rounds=rounds, repeats=repeats)
    row = {f"{k}_ms": 1e3 * timings.median(k) for k in steps}
    for k in ("gamma_small", "gamma_auto"):
        ratio, low, high = timings.ratio(k, "trace_enum")
        row[f"{k}_over_enum"], row[f"{k}_min"], row[f"{k}_max"] = ratio, low, high
    return row


def plot(table: pd.DataFrame, path: Path) -> None:
    """Ratio (Pyro over plain, validation on and off) against batch size, one panel per data
    shape, one line per (K, labelled); the bars are the per-round min-max."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys(table["dims"]))
    fig = Figure(figsize=(5.2 * len(names), 3.8), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=True):
        part = table[table["dims"] == name]
        for (k, labelled), cell in part.groupby(["K", "labelled"]):
            cell = cell.sort_values("batch")
            label = f"K={k}, {'labelled' if labelled else 'unlabelled'}"
            line = ax.errorbar(cell["batch"], cell["ratio"],
                               yerr=[(cell["ratio"] - cell["ratio_min"]).clip(lower=0),
                                     (cell["ratio_max"] - cell["ratio"]).clip(lower=0)],
                               fmt="-o", capsize=3, markersize=4, label=label)
            ax.plot(cell["batch"], cell["ratio_noval"], ":", color=line[0].get_color())
        ax.axhline(1.15, color="k", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("Pyro step / plain step")
        ax.set_title(f"{name} (dotted: validation off)", fontsize=9)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--defaults" in argv:  # whole epochs of train at the estimator's defaults
        from benchmarks import epoch_overhead

        argv.remove("--defaults")
        return epoch_overhead.main(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DIMS), choices=list(DIMS))
    p.add_argument("--classes", type=int, nargs="+", default=[2, 10])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--hidden", type=int, default=256, help="hidden units (default 256)")
    p.add_argument("--latent-dim", type=int, default=32, help="d (default 32)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-stock", action="store_true", help="skip the ClippedAdam variant")
    p.add_argument("--gamma-vs-enum", action="store_true",
                   help="also compare GammaPowerELBO at small gamma with TraceEnum_ELBO")
    p.add_argument("--gamma", type=float, default=-1e-3, help="the small gamma (default -1e-3)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="tune glibc malloc first (benchmarks.timing.keep_freed_memory)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: one cell of tiny networks (hidden 16, d = 4, batch 16)")
    p.add_argument("--defaults", action="store_true",
                   help="instead: whole epochs of train at the estimator's defaults "
                        "(benchmarks/epoch_overhead.py, which takes the other options)")
    p.add_argument("--out", type=Path, default=RESULTS / "overhead.csv")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.classes, args.batch_sizes = ["halves"], [2], [16]
        args.rounds, args.repeats, args.hidden, args.latent_dim = 2, 1, 16, 4
    threads = parse_threads(args.threads)
    malloc = "kept" if args.keep_freed_memory and keep_freed_memory() else "glibc default"
    info = machine()
    print(f"machine: {info}; malloc: {malloc}")

    rows = []
    for name, k, labelled, b in itertools.product(args.datasets, args.classes, (True, False),
                                                  args.batch_sizes):
        row = {"dims": name, "K": k, "labelled": labelled, "batch": b, "hidden": args.hidden,
               "latent_dim": args.latent_dim, "threads": threads, "malloc": malloc}
        row.update(overhead_cell(DIMS[name], k, labelled, b, rounds=args.rounds,
                                 repeats=args.repeats, stock=not args.no_stock,
                                 hidden=(args.hidden,), latent_dim=args.latent_dim))
        row["loadavg_1min"] = machine()["loadavg_1min"]
        rows.append(row)
        print(f"  {name} K={k} {'labelled' if labelled else 'unlabelled'} B={b}: "
              f"plain {row['plain_ms']:.1f} ms, pyro {row['pyro_ms']:.1f} ms, "
              f"ratio {row['ratio']:.3f} [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}]",
              flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    cols = ["dims", "K", "labelled", "batch", "plain_ms", "pyro_ms", "ratio", "ratio_min",
            "ratio_max", "ratio_noval"] + (["ratio_stock"] if not args.no_stock else []) + [
            "plain_gflops"]
    print(table[cols].to_markdown(index=False, floatfmt=".3g"))
    if len(args.batch_sizes) > 1:
        plot(table, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")

    if args.gamma_vs_enum:
        rows = []
        for name, labelled in itertools.product(args.datasets, (True, False)):
            k = max(args.classes)
            b = 256 if not args.quick else args.batch_sizes[0]
            row = {"dims": name, "K": k, "labelled": labelled, "batch": b, "gamma": args.gamma,
                   "threads": threads}
            row.update(gamma_vs_enum_cell(DIMS[name], k, labelled, b, gamma=args.gamma,
                                          rounds=args.rounds, repeats=args.repeats,
                                          hidden=(args.hidden,), latent_dim=args.latent_dim))
            rows.append(row)
        table = pd.DataFrame(rows)
        out = args.out.with_name(args.out.stem + "_gamma_vs_enum.csv")
        table.to_csv(out, index=False, float_format="%.4g")
        print(table.to_markdown(index=False, floatfmt=".3g"))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
