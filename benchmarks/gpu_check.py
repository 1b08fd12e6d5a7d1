"""CPU against GPU: the same numbers, the step times, and no host/device traffic per step.

A short prepared check for a machine with a CUDA GPU (under 5 minutes on one H100):

1. **numbers** — the model (with its guide) and GammaPowerELBO on the GPU give the CPU's loss and
   gradients (float64: relative difference < 1e-9; float32: < 1e-4). The draws of z cannot
   match across devices, so both runs replay the same z (drawn on the CPU) in the guide;
   everything else (networks, fusion, closed forms, enumeration) runs on each device;
2. **times** — median step times of the Pyro step (SVI + GammaPowerELBO + MultiTensorAdam, as
   the training loop runs it, validation on and off) and of the plain-PyTorch step, on the CPU
   and on the GPU, for both data shapes, labelled and unlabelled, batch 256 and 1024, K = 10;
3. **traffic** — one Pyro step on the GPU under ``torch.profiler``: host-to-device and
   device-to-host copies and stream synchronisations per step, with validation on and off; and
   every CPU tensor created during the step (a ``TorchFunctionMode`` audit), with the line of
   code that made it;
4. **data** — the cost of copying a batch to the GPU per step (what ``train``'s ``batch_to``
   does) against the step itself.

Without a GPU it runs the CPU half (1–2 with the CPU against itself), which is what the test
suite checks.

    python -m benchmarks.gpu_check                  # on a GPU machine: results/gpu_check*.csv
    python -m benchmarks.gpu_check --quick          # smoke run (CPU or GPU)
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyro
import torch
from pyro.poutine import Trace
from pyro.poutine.enum_messenger import EnumMessenger
from torch.overrides import TorchFunctionMode

from benchmarks.steps import DIMS, build, plain_step, pyro_step, random_batch
from benchmarks.timing import interleaved, machine
from pyro_mmt.estimator import make_objective
from pyro_mmt.training.svi import batch_to

RESULTS = Path(__file__).parent / "results"
_OURS = ("pyro_mmt", "models", "guides", "benchmarks")


# ------------------------------------------------------------------------------------ numbers
def _latent_draw(m2, batch) -> torch.Tensor:
    """z drawn by the guide (labels enumerated as GammaPowerELBO enumerates them)."""
    guide_fn = EnumMessenger(first_available_dim=-2)(m2.guide)
    trace = pyro.poutine.trace(guide_fn).get_trace(batch.x, batch.mask, batch.y)
    return trace.nodes["z"]["value"].detach()


def _with_z(guide_fn, z):
    trace = Trace()
    trace.add_node("z", name="z", type="sample", is_observed=False, value=z, infer={})
    return pyro.poutine.replay(guide_fn, trace=trace)


def _loss_and_grads(m2, batch, z):
    pyro.clear_param_store()
    loss = make_objective().differentiable_loss(m2.model, _with_z(m2.guide, z),
                                                batch.x, batch.mask, batch.y)
    params = dict(m2.named_parameters())
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return loss.detach(), {k: g for k, g in zip(params, grads, strict=True) if g is not None}


def check_numbers(device: str, dtype: torch.dtype, *, hidden=(256,), latent_dim=32,
                  batch_size=256) -> list[dict]:
    """Loss and gradients of the same model, batch and z on the CPU and on ``device``."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    rows = []
    try:
        for name, labelled in itertools.product(DIMS, (True, False)):
            dims = DIMS[name]
            m2 = build(dims, 10, hidden=hidden, latent_dim=latent_dim)
            batch = random_batch(dims, batch_size, 10, labelled=labelled)
            batch.x = {m: v.to(dtype) for m, v in batch.x.items()}
            pyro.set_rng_seed(0)
            z = _latent_draw(m2, batch)
            loss_cpu, grads_cpu = _loss_and_grads(m2, batch, z)
            m2_d = build(dims, 10, hidden=hidden, latent_dim=latent_dim, device=device)
            loss_dev, grads_dev = _loss_and_grads(m2_d, batch_to(batch, device), z.to(device))
            grad_err = max(float((grads_dev[k].cpu() - g).norm() / g.norm().clamp_min(1e-30))
                           for k, g in grads_cpu.items())
            rows.append({"dims": name, "labelled": labelled, "dtype": str(dtype).split(".")[-1],
                         "device": device, "loss_cpu": float(loss_cpu),
                         "loss_rel_diff": abs(float(loss_dev.cpu()) - float(loss_cpu))
                         / abs(float(loss_cpu)),
                         "grad_max_rel_diff": grad_err, "num_grads": len(grads_cpu)})
    finally:
        torch.set_default_dtype(default)
    return rows


# -------------------------------------------------------------------------------------- times
def time_steps(device: str, *, hidden=(256,), latent_dim=32, batch_sizes=(256, 1024),
               rounds=3, repeats=2) -> list[dict]:
    """Median step times (ms): Pyro (validation on/off) and plain, on the CPU and ``device``."""
    rows = []
    for name, labelled, b in itertools.product(DIMS, (True, False), batch_sizes):
        dims = DIMS[name]
        steps = {}
        for where in dict.fromkeys(("cpu", device)):
            m2 = build(dims, 10, hidden=hidden, latent_dim=latent_dim, device=where)
            batch = batch_to(random_batch(dims, b, 10, labelled=labelled), where)
            tag = "cpu" if where == "cpu" else "dev"
            for key, fn in ((f"{tag}_plain", plain_step(m2)),
                            (f"{tag}_pyro", pyro_step(m2)),
                            (f"{tag}_pyro_noval", pyro_step(m2, validation=False))):
                steps[key] = lambda fn=fn, batch=batch: fn(batch)
        timings = interleaved(steps, rounds=rounds, repeats=repeats, warmup=2)
        row = {"dims": name, "labelled": labelled, "batch": b, "K": 10, "device": device}
        row.update({f"{k}_ms": 1e3 * timings.median(k) for k in steps})
        if "dev_pyro" in steps:
            row["speedup_pyro"] = row["cpu_pyro_ms"] / row["dev_pyro_ms"]
            row["dev_ratio"] = row["dev_pyro_ms"] / row["dev_plain_ms"]
            row["dev_ratio_noval"] = row["dev_pyro_noval_ms"] / row["dev_plain_ms"]
        row["cpu_ratio"] = row["cpu_pyro_ms"] / row["cpu_plain_ms"]
        rows.append(row)
        print(f"  {name} {'labelled' if labelled else 'unlabelled'} B={b}: " + ", ".join(
            f"{k} {v:.1f}" for k, v in row.items() if k.endswith("_ms")), flush=True)
    return rows


# ------------------------------------------------------------------------------------ traffic
class CpuTensorAudit(TorchFunctionMode):
    """Records every CPU tensor that a torch function returns, with the innermost line of
    pyro-mmt code (or of the library that made it) on the stack."""

    def __init__(self):
        super().__init__()
        self.found: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        outs = out if isinstance(out, tuple | list) else (out,)
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in outs):
            self.found[(getattr(func, "__name__", str(func)), _caller())] += 1
        return out


def _caller() -> str:
    frame, fallback = sys._getframe(2), None
    while frame is not None:
        path = frame.f_code.co_filename
        if "torch" not in path.split("site-packages")[-1][:8]:
            where = f"{'/'.join(Path(path).parts[-2:])}:{frame.f_lineno}"
            if any(part in path for part in _OURS):
                return where
            fallback = fallback or where
        frame = frame.f_back
    return fallback or "?"


def check_traffic(device: str, *, hidden=(256,), latent_dim=32, batch_size=256) -> dict:
    """Copies and synchronisations per Pyro step on ``device``, and the CPU tensors made."""
    from torch.profiler import ProfilerActivity, profile

    out = {"copies": [], "cpu_tensors": []}
    for name, labelled, validation in itertools.product(DIMS, (True, False), (True, False)):
        dims = DIMS[name]
        m2 = build(dims, 10, hidden=hidden, latent_dim=latent_dim, device=device)
        batch = batch_to(random_batch(dims, batch_size, 10, labelled=labelled), device)
        step = pyro_step(m2, validation=validation)
        for _ in range(2):
            step(batch)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            step(batch)
            torch.cuda.synchronize()
        counts = Counter()
        for e in prof.events():
            key = e.name
            if "Memcpy HtoD" in key or "Memcpy DtoH" in key or "Memcpy DtoD" in key:
                counts[key.split("(")[0].strip()] += 1
            elif key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync"):
                counts[key] += 1
        out["copies"].append({"dims": name, "labelled": labelled, "validation": validation,
                              **counts})
        if not validation:
            audit = CpuTensorAudit()
            with audit:
                step(batch)
            for (fn, where), n in audit.found.most_common():
                out["cpu_tensors"].append({"dims": name, "labelled": labelled, "function": fn,
                                           "where": where, "count": n})
    return out


def data_copy_cost(device: str, *, batch_size=256) -> list[dict]:
    """Time of ``batch_to`` (host to device, per step) against a device step."""
    rows = []
    for name in DIMS:
        dims = DIMS[name]
        host = random_batch(dims, batch_size, 10, labelled=False)
        m2 = build(dims, 10, device=device)
        step = pyro_step(m2, validation=False)
        resident = batch_to(host, device)
        timings = interleaved({
            "copy": lambda host=host: (batch_to(host, device), torch.cuda.synchronize()),
            "step": lambda resident=resident, step=step: step(resident),
        }, rounds=3, repeats=5)
        rows.append({"dims": name, "batch": batch_size, "copy_ms": 1e3 * timings.median("copy"),
                     "step_ms": 1e3 * timings.median("step")})
    return rows


# --------------------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny networks, one batch")
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_check.csv")
    args = p.parse_args(argv)
    tic = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    size = {"hidden": (16,), "latent_dim": 4} if args.quick else {}
    info = machine()
    if device != "cpu":
        info["gpu"] = torch.cuda.get_device_name(device)
    print(f"machine: {info}")
    if device == "cpu":
        print("no GPU here: the CPU half only (numbers: the CPU against itself)")
    args.out.parent.mkdir(parents=True, exist_ok=True)

    numbers = pd.DataFrame(
        check_numbers(device, torch.float64, **size, batch_size=32 if args.quick else 256)
        + check_numbers(device, torch.float32, **size, batch_size=32 if args.quick else 256))
    numbers["ok"] = numbers["loss_rel_diff"].le(numbers["dtype"].map(
        {"float64": 1e-9, "float32": 1e-4})) & numbers["grad_max_rel_diff"].le(
        numbers["dtype"].map({"float64": 1e-9, "float32": 1e-3}))
    print(numbers.to_markdown(index=False, floatfmt=".3g"))
    numbers.to_csv(args.out.with_name(args.out.stem + "_numbers.csv"), index=False)

    times = pd.DataFrame(time_steps(device, **size,
                                    batch_sizes=(32,) if args.quick else (256, 1024),
                                    rounds=1 if args.quick else 3,
                                    repeats=1 if args.quick else 2))
    times["threads"] = torch.get_num_threads()
    print(times.to_markdown(index=False, floatfmt=".3g"))
    times.to_csv(args.out, index=False, float_format="%.4g")

    if device != "cpu":
        traffic = check_traffic(device, **size, batch_size=32 if args.quick else 256)
        copies = pd.DataFrame(traffic["copies"]).fillna(0)
        print(copies.to_markdown(index=False))
        copies.to_csv(args.out.with_name(args.out.stem + "_copies.csv"), index=False)
        made = pd.DataFrame(traffic["cpu_tensors"])
        if len(made):
            print(made.to_markdown(index=False))
        made.to_csv(args.out.with_name(args.out.stem + "_cpu_tensors.csv"), index=False)
        data = pd.DataFrame(data_copy_cost(device, batch_size=32 if args.quick else 256))
        print(data.to_markdown(index=False, floatfmt=".3g"))
        data.to_csv(args.out.with_name(args.out.stem + "_data.csv"), index=False)
    print(f"done in {time.perf_counter() - tic:.0f} s; numbers ok: {bool(numbers['ok'].all())}")
    return 0 if numbers["ok"].all() else 1


if __name__ == "__main__":
    sys.exit(main())
