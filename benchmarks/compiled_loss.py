"""A compiled training loss: ``torch.compile`` of the whole GammaPowerELBO loss, and of the
networks only, against eager PyTorch (issue 14: keep a compiled path only if it is faster).

At the estimator's default sizes (``benchmarks/epoch_overhead.py``: mfeat, K = 10, hidden 128,
d = 16, batch 128), one labelled and one unlabelled batch, validation off, one torch thread,
forward and backward of:

- ``eager``: ``GammaPowerELBO.differentiable_loss``, as the training loop runs it;
- ``plain``: :func:`benchmarks.plain_step.plain_loss` (hand-written PyTorch);
- ``compiled_loss``: ``torch.compile`` of the eager loss function (Dynamo traces through
  Pyro's handlers; ``--backend`` ``aot_eager`` (no code generation) or ``inductor`` (C++
  kernels, needs a C compiler));
- ``compiled_networks``: the plain loss on a copy of the model whose decoders, encoders and
  classifier experts are compiled (``module.compile()``): the most a compiled tensor part
  could give.

All variants live in one process and their steps are interleaved (``benchmarks/timing.py``)
after the compilations; the table gives each one's compilation time (its first labelled and
unlabelled calls), the median step and the median of the per-round ratios to ``eager``.

    python -m benchmarks.compiled_loss                       # aot_eager; ~3 minutes here
    python -m benchmarks.compiled_loss --backend inductor    # ~5 minutes
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from benchmarks.timing import machine

RESULTS = Path(__file__).parent / "results"


def measure(variants, backend: str, rounds: int) -> list[dict]:
    """Compile what ``variants`` need, then time them interleaved; one row per variant."""
    import copy

    import pyro
    import torch
    from pyro import poutine

    from benchmarks.epoch_overhead import build_default, default_data
    from benchmarks.plain_step import plain_loss
    from benchmarks.timing import interleaved
    from pyro_mmt.data import InterleavedLoader
    from pyro_mmt.infer import GammaPowerELBO

    torch.set_num_threads(1)
    pyro.enable_validation(False)
    # one guard per module instance, parameter name and batch shape: far above Dynamo's default
    # limit of 8 recompilations per function, beyond which it silently runs the function eagerly
    torch._dynamo.config.recompile_limit = 1024
    torch._dynamo.config.accumulated_recompile_limit = 1 << 16
    data = default_data()
    m2 = build_default(data, settings="per_datum")  # the settings it was measured at
    compiled_m2 = copy.deepcopy(m2)
    for net in (list(compiled_m2.decoders.values())
                + [e.net for e in compiled_m2.encoders.values()]
                + list(compiled_m2.classifier.experts.values())):
        net.compile(backend=backend)
    loader = iter(InterleavedLoader(data, 128))
    batches = {"labelled": next(loader), "unlabelled": next(loader)}
    elbo = GammaPowerELBO("auto", max_plate_nesting=1)

    def eager(x, mask, y, scale):
        with poutine.scale(scale=scale):
            return elbo.differentiable_loss(m2.model, m2.guide, x, mask, y)

    losses = {
        "plain": (m2, lambda x, mask, y, scale: plain_loss(m2, x, mask, y, scale)),
        "eager": (m2, eager),
        "compiled_loss": (m2, torch.compile(eager, backend=backend)),
        "compiled_networks": (compiled_m2, lambda x, mask, y, scale: plain_loss(
            compiled_m2, x, mask, y, scale)),
    }

    def step(name, batch, num_data):
        module, loss = losses[name]
        value = loss(batch.x, batch.mask, batch.y, num_data / batch.size)
        value.backward()
        for p in module.parameters():
            p.grad = None

    rows = {}
    for name in variants:
        tic = time.perf_counter()
        for batch, num_data in batches.values():
            step(name, batch, num_data)
        rows[name] = {"variant": name, "backend": backend if "compiled" in name else "",
                      "first_calls_s": time.perf_counter() - tic}
    for kind, (batch, num_data) in batches.items():
        timings = interleaved({name: (lambda n=name, b=batch, k=num_data: step(n, b, k))
                               for name in variants}, rounds=rounds, repeats=3)
        for name in variants:
            rows[name][f"{kind}_ms"] = 1e3 * timings.median(name)
            if "eager" in variants:
                rows[name][f"{kind}_over_eager"] = timings.round_ratio_quartiles(
                    name, "eager")[0]
    return list(rows.values())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="aot_eager", choices=["aot_eager", "inductor"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--variants", nargs="+",
                   default=["plain", "eager", "compiled_loss", "compiled_networks"])
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    print(f"machine: {machine()}", flush=True)
    table = pd.DataFrame(measure(args.variants, args.backend, args.rounds))
    out = args.out or RESULTS / f"compiled_loss_{args.backend}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False, float_format="%.4g")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
