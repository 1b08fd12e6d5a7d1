"""Where the time of one Pyro training step goes, beyond the plain-PyTorch step.

Two views, at the overhead benchmark's sizes (hidden 256, d = 32, K = 10, batch 256):

- **ablation** (interleaved medians, ms): the plain step; the step of Pyro's own ``SVI``
  (validation on, Pyro's default, and off); the step of :func:`pyro_mmt.training.train`
  (``train_step``: its SVI, whose later steps claim the registration; validation on); the
  forward pass alone of the plain step and of ``train``'s (``plain_loss`` against
  ``GammaPowerELBO.differentiable_loss`` under ``train``'s trace of parameters, validation
  off); and the parameter
  registration alone, under the handlers of a step (SVI's param trace, the loop's
  ``poutine.scale``, the objective's trace): ``registration`` is one ``pyro.module("m2", m2)``
  (every parameter of the one module sent through the handlers: what the guide does at every
  step of Pyro's own ``SVI``, the model then finding it registered), ``registration_claim``
  what :func:`pyro_mmt.training.train` does after its first step (the module claims the sites
  its first registration recorded, ``pyro_mmt.nn.register_module``);
- **cprofile**: the Python time of the Pyro step, by package (``pyro``, torch's Python code,
  torch's C++ calls, pyro-mmt) and the top functions by own time.

    python -m benchmarks.profile_step                # both views, both data shapes
    python -m benchmarks.profile_step --quick        # smoke run
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from collections import defaultdict
from pathlib import Path

import pandas as pd
import pyro
from pyro import poutine

from benchmarks.plain_step import plain_loss
from benchmarks.steps import DIMS, NUM_DATA, build, plain_step, pyro_step, random_batch
from benchmarks.timing import interleaved, machine, parse_threads
from pyro_mmt.estimator import make_objective
from pyro_mmt.infer.gamma_power_elbo import _SampleTraceMessenger as _SampleTrace
from pyro_mmt.nn import register_module
from pyro_mmt.training.svi import _SVI, _checked_step, _ParamTrace, default_optimizer

RESULTS = Path(__file__).parent / "results"


def registration(m2):
    """One pyro.module call (the guide's; the model then finds it registered) under SVI's,
    the loop's and the objective's handlers."""

    def run():
        with poutine.trace(param_only=True), poutine.scale(scale=2.0), _SampleTrace():
            pyro.module("m2", m2)

    return run


def registration_claim(m2):
    """The registration of guide and model at a later step of ``train``: the module claims the
    sites its first registration recorded."""
    templates = {}
    with _ParamTrace(templates), poutine.scale(scale=2.0), _SampleTrace():
        register_module("m2", m2)

    def run():
        with _ParamTrace(templates), poutine.scale(scale=2.0), _SampleTrace():
            register_module("m2", m2)  # the guide
            register_module("m2", m2)  # the model

    return run


def ablation(name, labelled, *, batch_size, hidden, latent_dim, rounds, repeats):
    pyro.clear_param_store()  # the previous cell's model registered the same names
    dims = DIMS[name]
    m2 = build(dims, 10, hidden=hidden, latent_dim=latent_dim)
    batch = random_batch(dims, batch_size, 10, labelled=labelled)
    scale = NUM_DATA / batch_size
    elbo = make_objective()
    plain, pyro_, pyro_noval = (plain_step(m2), pyro_step(m2), pyro_step(m2, validation=False))
    svi = _SVI(m2.model, m2.guide, default_optimizer(), loss=make_objective())
    templates = {}
    _pyro_forward(elbo, m2, batch, scale, templates)  # learns the module's registration
    steps = {
        "plain_step": lambda: plain(batch),
        "pyro_step": lambda: pyro_(batch),
        "pyro_step_noval": lambda: pyro_noval(batch),
        "train_step": lambda: _checked_step(svi, batch, scale, {"model": m2}, 0, 0, None),
        "plain_forward": lambda: plain_loss(m2, batch.x, batch.mask, batch.y, scale),
        "pyro_forward_noval": lambda: _pyro_forward(elbo, m2, batch, scale, templates),
        "registration": registration(m2),
        "registration_claim": registration_claim(m2),
    }
    timings = interleaved(steps, rounds=rounds, repeats=repeats)
    row = {"dims": name, "labelled": labelled, "batch": batch_size}
    row.update({f"{k}_ms": 1e3 * timings.median(k) for k in steps})
    row["num_param_sites"] = sum(1 for _ in m2.parameters())  # registered once per step
    return row


def _pyro_forward(elbo, m2, batch, scale, templates):
    with pyro.validation_enabled(False), _ParamTrace(templates), poutine.scale(scale=scale):
        return elbo.differentiable_loss(m2.model, m2.guide, batch.x, batch.mask, batch.y)


def python_profile(name, labelled, *, batch_size, hidden, latent_dim, steps) -> tuple[dict, str]:
    """cProfile of ``steps`` Pyro steps: own time by package and the top functions."""
    pyro.clear_param_store()
    dims = DIMS[name]
    m2 = build(dims, 10, hidden=hidden, latent_dim=latent_dim)
    batch = random_batch(dims, batch_size, 10, labelled=labelled)
    step = pyro_step(m2)
    for _ in range(2):
        step(batch)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step(batch)
    prof.disable()
    stats = pstats.Stats(prof)
    by_package: dict[str, float] = defaultdict(float)
    for (path, _, func), (_, _, tottime, _, _) in stats.stats.items():
        by_package[_package(path, func)] += tottime / steps * 1e3
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(25)
    return dict(by_package), text.getvalue()


def _package(path: str, func: str) -> str:
    if path == "~":  # a C function: torch's C++ (tensor ops, autograd) or a Python builtin
        return "torch C++ (ops, autograd)" if "torch" in func or "Tensor" in func else "builtins"
    for key, label in (("site-packages/pyro/", "pyro"), ("site-packages/torch/", "torch (Python)"),
                       ("/pyro_mmt/", "pyro-mmt"), ("/models/", "pyro-mmt"),
                       ("/guides/", "pyro-mmt"), ("/benchmarks/", "benchmarks")):
        if key in path:
            return label
    return "other Python"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DIMS), choices=list(DIMS))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--latent-dim", type=int, default=32)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--profile-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "profile_step.csv")
    args = p.parse_args(argv)
    if args.quick:
        args.datasets, args.batch_size, args.hidden, args.latent_dim = ["halves"], 16, 16, 4
        args.rounds, args.repeats, args.profile_steps = 1, 1, 2
    threads = parse_threads(args.threads)
    print(f"machine: {machine()}")
    size = {"batch_size": args.batch_size, "hidden": (args.hidden,),
            "latent_dim": args.latent_dim}
    rows, report = [], []
    for name in args.datasets:
        for labelled in (True, False):
            row = ablation(name, labelled, rounds=args.rounds, repeats=args.repeats, **size)
            packages, top = python_profile(name, labelled, steps=args.profile_steps, **size)
            row.update({f"py_{k}_ms": v for k, v in packages.items()})
            row["threads"] = threads
            rows.append(row)
            report.append(f"## {name}, {'labelled' if labelled else 'unlabelled'}\n{top}")
            print(f"  {name} {'labelled' if labelled else 'unlabelled'}: " + ", ".join(
                f"{k} {v:.2f}" for k, v in row.items() if k.endswith("_ms")), flush=True)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    args.out.with_suffix(".txt").write_text("\n".join(report))
    print(table.T.to_markdown(floatfmt=".3g"))
    print(f"wrote {args.out} and {args.out.with_suffix('.txt')}")


if __name__ == "__main__":
    main()
