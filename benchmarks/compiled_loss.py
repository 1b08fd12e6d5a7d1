"""A compiled training loss: ``torch.compile`` of the whole GammaPowerELBO loss, and of the
networks only, against eager PyTorch (issue 14: keep a compiled path only if it is faster).

At the estimator's default sizes (``benchmarks/epoch_overhead.py``: mfeat, K = 10, hidden 128,
d = 16, batch 128), one labelled and one unlabelled batch, validation off, one torch thread:

- ``eager``: ``GammaPowerELBO.differentiable_loss`` + backward, as the training loop runs it;
- ``plain``: :func:`benchmarks.plain_step.plain_loss` + backward (hand-written PyTorch);
- ``compiled_loss``: ``torch.compile`` of the eager loss function (Dynamo traces through
  Pyro's handlers; ``--backend`` ``aot_eager`` (no code generation) or ``inductor`` (C++
  kernels, needs a C compiler));
- ``compiled_networks``: the plain loss with every decoder, encoder and classifier expert
  compiled (``module.compile()``, inductor), the most a compiled tensor part could give.

Each variant runs in its own fresh process (compilation caches are per process); the table
gives the first call's seconds (compilation) and the median step of ``--steps`` steps after
three warm-up steps. The steps are not interleaved across processes: read the ratios to ±0.2
on a loaded machine.

    python -m benchmarks.compiled_loss                       # aot_eager; ~2 minutes
    python -m benchmarks.compiled_loss --backend inductor    # ~5 minutes (2 compilations)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).parent / "results"


def one_variant(variant: str, backend: str, steps: int) -> dict:
    """Run in a child process: compile (if asked), time ``steps`` labelled and unlabelled
    steps; returns the first-call seconds and the median step times (ms)."""
    import pyro
    import torch
    from pyro import poutine

    from benchmarks.epoch_overhead import build_default, default_data
    from benchmarks.plain_step import plain_loss
    from pyro_mmt.data import InterleavedLoader
    from pyro_mmt.infer import GammaPowerELBO

    torch.set_num_threads(1)
    pyro.enable_validation(False)
    data = default_data()
    m2 = build_default(data)
    loader = iter(InterleavedLoader(data, 128))
    batches = {"labelled": next(loader), "unlabelled": next(loader)}
    elbo = GammaPowerELBO("auto", max_plate_nesting=1)

    def eager(x, mask, y, scale):
        with poutine.scale(scale=scale):
            return elbo.differentiable_loss(m2.model, m2.guide, x, mask, y)

    def plain(x, mask, y, scale):
        return plain_loss(m2, x, mask, y, scale)

    if variant == "eager":
        loss = eager
    elif variant == "plain":
        loss = plain
    elif variant == "compiled_loss":
        loss = torch.compile(eager, backend=backend)
    elif variant == "compiled_networks":
        nets = (list(m2.decoders.values()) + [e.net for e in m2.encoders.values()]
                + list(m2.classifier.experts.values()))
        for net in nets:
            net.compile(backend=backend)
        loss = plain
    else:
        raise ValueError(variant)

    def step(batch, num_data):
        value = loss(batch.x, batch.mask, batch.y, num_data / batch.size)
        value.backward()
        for p in m2.parameters():
            p.grad = None

    tic = time.perf_counter()
    for batch, num_data in batches.values():
        step(batch, num_data)
    row = {"variant": variant, "backend": backend if "compiled" in variant else "",
           "first_calls_s": time.perf_counter() - tic}
    for name, (batch, num_data) in batches.items():
        for _ in range(3):
            step(batch, num_data)
        times = []
        for _ in range(steps):
            tic = time.perf_counter()
            step(batch, num_data)
            times.append(time.perf_counter() - tic)
        row[f"{name}_ms"] = 1e3 * statistics.median(times)
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="aot_eager", choices=["aot_eager", "inductor"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--variants", nargs="+",
                   default=["plain", "eager", "compiled_loss", "compiled_networks"])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(one_variant(args.child, args.backend, args.steps)))
        return
    rows = []
    for variant in args.variants:
        done = subprocess.run([sys.executable, "-m", "benchmarks.compiled_loss", "--child",
                               variant, "--backend", args.backend, "--steps", str(args.steps)],
                              capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    eager = table.set_index("variant").loc["eager"] if "eager" in set(table["variant"]) else None
    if eager is not None:
        for name in ("labelled", "unlabelled"):
            table[f"{name}_over_eager"] = table[f"{name}_ms"] / eager[f"{name}_ms"]
    out = args.out or RESULTS / f"compiled_loss_{args.backend}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.4g")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
