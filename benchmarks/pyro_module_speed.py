"""A model written as a ``PyroModule`` against the library's own registration, one epoch each.

The estimator's default model on mfeat (``benchmarks/epoch_overhead.py``: its data, sizes and
default settings), trained by :func:`~pyro_mmt.training.train` in two forms, side by side in
one process, one torch thread, interleaved (``benchmarks/timing.py``):

- ``module``: as the library writes it, ``register_module("m2", m2)`` (``pyro.module``) at
  the top of the model and the guide: :func:`~pyro_mmt.infer.register_module`'s fast path;
- ``pyro_module``: a copy of the same model converted in place to a ``PyroModule``
  (``pyro.nn.module.to_pyro_module_``), registering nothing itself: its model and guide run
  inside the module's Pyro context, as its ``forward`` would, so each parameter is registered
  by ``pyro.param`` when it is read (the ``PyroModule`` way). Same networks, same initial
  weights, same loss.

The table gives the median epoch time of each and the median over rounds of the round's ratio
``pyro_module / module``, with the ``pyro.param`` calls per epoch of each.

    python -m benchmarks.pyro_module_speed                  # ~2 minutes on a loaded 2-core machine
    python -m benchmarks.pyro_module_speed --quick          # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
from pathlib import Path

import pandas as pd
import pyro
import pyro.primitives
import torch
from pyro.nn.module import to_pyro_module_

import pyro_mmt.guides.poe_t as guide_module
import pyro_mmt.models.multimodal_m2 as model_module
from benchmarks.epoch_overhead import DEFAULTS, build_default, default_data
from benchmarks.timing import interleaved, machine, parse_threads
from pyro_mmt.infer import GammaPowerELBO
from pyro_mmt.training.svi import default_optimizer, train

RESULTS = Path(__file__).parent / "results"


@contextlib.contextmanager
def _no_registration():
    """The model's and guide's ``register_module`` calls do nothing (a PyroModule registers
    its parameters as it reads them)."""
    saved = model_module.register_module, guide_module.register_module
    model_module.register_module = guide_module.register_module = lambda name, module: module
    try:
        yield
    finally:
        model_module.register_module, guide_module.register_module = saved


def _counting(counter):
    original = pyro.primitives.param

    def param(*args, **kwargs):
        counter[0] += 1
        return original(*args, **kwargs)

    return param


def epoch(m2, data, *, pyro_module: bool, batch_size=DEFAULTS["batch_size"], seed=0,
          counter=None):
    """A function running one epoch of ``train`` on ``m2`` (one optimiser and objective kept
    across calls; the param store emptied first: the parameters live in the module)."""
    optim = default_optimizer(DEFAULTS["lr"])
    objective = GammaPowerELBO("auto", max_plate_nesting=1)
    if pyro_module:
        def model(*args, **kwargs):
            with m2._pyro_context:
                return m2.model(*args, **kwargs)

        def guide(*args, **kwargs):
            with m2._pyro_context:
                return m2.guide(*args, **kwargs)
    else:
        model, guide = m2.model, m2.guide

    def run():
        pyro.clear_param_store()  # the two forms name their parameters differently
        with contextlib.ExitStack() as stack:
            if pyro_module:
                stack.enter_context(_no_registration())
            if counter is not None:
                stack.enter_context(_patched_param(counter))
            return train(model, guide, data, objective=objective, optimizer=optim, epochs=1,
                         batch_size=batch_size, seed=seed, progress=False)

    return run


@contextlib.contextmanager
def _patched_param(counter):
    original = pyro.param
    pyro.param = pyro.primitives.param = _counting(counter)
    try:
        yield
    finally:
        pyro.param = pyro.primitives.param = original


def measure(data, *, rounds: int, repeats: int, **sizes) -> dict:
    m2 = build_default(data, **sizes)
    as_pyro = copy.deepcopy(m2)
    to_pyro_module_(as_pyro)
    with pyro.get_param_store().scope():
        counts = {}
        for name, module, flag in (("module", m2, False), ("pyro_module", as_pyro, True)):
            counter = [0]
            epoch(copy.deepcopy(module), data, pyro_module=flag, counter=counter)()
            counts[name] = counter[0]
        timings = interleaved({"module": epoch(m2, data, pyro_module=False),
                               "pyro_module": epoch(as_pyro, data, pyro_module=True)},
                              rounds=rounds, repeats=repeats)
    median, q1, q3 = timings.round_ratio_quartiles("pyro_module", "module")
    return {"rows": len(data), "module_ms": 1e3 * timings.median("module"),
            "pyro_module_ms": 1e3 * timings.median("pyro_module"), "ratio": median,
            "ratio_q1": q1, "ratio_q3": q3, "module_param_calls": counts["module"],
            "pyro_module_param_calls": counts["pyro_module"]}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="smoke run: 200 rows, tiny networks")
    p.add_argument("--out", type=Path, default=RESULTS / "pyro_module_speed.csv")
    args = p.parse_args(argv)
    threads = parse_threads(args.threads)
    data, sizes = default_data(), {}
    if args.quick:
        data, sizes = default_data(rows=200), {"hidden": (16,), "latent_dim": 4}
        args.rounds = 2
    print(f"machine: {machine()}")
    torch.set_num_threads(threads)
    row = {"threads": threads, **measure(data, rounds=args.rounds, repeats=args.repeats,
                                         **sizes), "loadavg_1min": machine()["loadavg_1min"]}
    table = pd.DataFrame([row])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    print(table.T.to_markdown(floatfmt=".3f"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
