"""One epoch of :func:`pyro_mmt.training.train` against the same epoch in plain PyTorch, at the
estimator's default sizes.

The issue-14 measurement: UCI mfeat (its six views, standardised), K = 10, 10% of the rows
labelled (stratified), the estimator's sizes (hidden (128,), d = 16, ν = 5, ``gamma="auto"``,
batch 128, learning rate 1e-3, gradients clamped to ±10), one torch thread, at two settings
(``--settings``, one CSV row each):

- ``defaults``: the estimator's default settings (:class:`~pyro_mmt.config.ModelConfig`,
  :class:`~pyro_mmt.config.TrainingConfig`): α = 1.5 per observed dimension of a labelled
  datum, logit adjustment τ = 1, prior shift τ' = 1, and the parameters averaged at the end of
  every epoch of the last half (``averaging=0.5``; measured here at every epoch, the second
  half's cost: :class:`~pyro_mmt.training.averaging.ParameterAverage` in ``train``'s
  ``on_epoch_end``, ``torch.optim.swa_utils.AveragedModel`` in plain PyTorch);
- ``per_datum``: the settings of the issue-14 measurement (α = 1000 per labelled datum, τ = τ'
  = 0, no averaging).
An epoch is what the training loop runs: the labelled and unlabelled batches of
:class:`~pyro_mmt.data.InterleavedLoader` in its order (15 of each here), each scaled by
``num_data / batch_size``.

- ``plain``: the loader's batches through :func:`benchmarks.plain_step.plain_loss` (checked
  equal to ``GammaPowerELBO`` in float64, ``tests/test_benchmarks_smoke.py``), one
  ``torch.optim.Adam(fused=True)`` over the model's parameters, gradients clamped to ±10,
  ``loss.item()`` per step (the loop needs the number): the reference;
- ``train``: ``train(m2.model, m2.guide, data, objective=GammaPowerELBO(...), epochs=1)`` with
  the loop's default optimiser (:func:`pyro_mmt.training.svi.default_optimizer`) and Pyro's
  validation as the loop leaves it (on: Pyro's default); one optimiser and one objective object
  for all epochs, as in a run of many epochs;
- ``train_noval``: the same with ``validate=False``;
- ``train_clipped``: the same with ``pyro.optim.ClippedAdam`` (the default before issue 14).

Every variant runs whole epochs, interleaved (``benchmarks/timing.py``): each round runs every
variant once (``--repeats``), in an order rotated per round. The table gives the median epoch
time of each; ``ratio_<variant>`` is the median over the rounds of the round's ratio to
``plain`` (the two epochs ran seconds apart), with its quartiles (``_q1``, ``_q3``) and
min–max; ``_of_medians`` is the ratio of the median epoch times and ``_best`` the ratio of
the fastest epochs.

    python -m benchmarks.epoch_overhead                     # ~6 minutes on a loaded 2-core machine
    python -m benchmarks.epoch_overhead --profile 4         # + cProfiles of 4 epochs
    python -m benchmarks.epoch_overhead --quick             # smoke run (seconds)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
from pathlib import Path

import numpy as np
import pandas as pd
import pyro
import torch

from benchmarks.plain_step import PlainStep
from benchmarks.timing import interleaved, machine, parse_threads
from pyro_mmt.config import ModelConfig, TrainingConfig
from pyro_mmt.data import InterleavedLoader, MultimodalDataset, Standardiser
from pyro_mmt.estimator import build_model
from pyro_mmt.infer import GammaPowerELBO
from pyro_mmt.training import svi as svi_module
from pyro_mmt.training.averaging import ParameterAverage
from pyro_mmt.training.svi import train

RESULTS = Path(__file__).parent / "results"

#: The estimator's default sizes (``MultimodalSemiSupervisedClassifier``).
DEFAULTS = {"hidden": (128,), "latent_dim": 16, "batch_size": 128, "lr": 1e-3, "nu": 5.0}

#: The settings measured (module docstring): the model's and the averaged fraction of epochs.
SETTINGS = {
    "defaults": ({"alpha": ModelConfig.alpha, "alpha_unit": ModelConfig.alpha_unit,
                  "logit_adjustment": ModelConfig.logit_adjustment,
                  "unlabelled_prior_shift": ModelConfig.unlabelled_prior_shift},
                 TrainingConfig.averaging),
    "per_datum": ({"alpha": 1000.0, "alpha_unit": "datum", "logit_adjustment": 0.0,
                   "unlabelled_prior_shift": 0.0}, 0.0),
}

#: Gradient clamp of ClippedAdam and of the loop's default optimiser.
CLIP = 10.0


def default_data(labelled_fraction: float = 0.1, *, seed: int = 0,
                 rows: int | None = None) -> MultimodalDataset:
    """mfeat, standardised, with ``labelled_fraction`` of each class labelled (the rest y = −1);
    ``rows`` keeps a stratified subset (smoke runs)."""
    from pyro_mmt.data.loaders import load_mfeat

    data = load_mfeat()
    rng = np.random.default_rng(seed)
    y = data.y.numpy().copy()
    keep = np.arange(len(y))
    if rows is not None:
        keep = np.sort(np.concatenate([
            rng.permutation(np.flatnonzero(y == k))[: max(2, rows // data.num_classes)]
            for k in range(data.num_classes)]))
        data, y = data[keep], y[keep]
    labels = np.full_like(y, -1)
    for k in range(data.num_classes):
        rows_k = rng.permutation(np.flatnonzero(y == k))
        n = max(1, int(round(labelled_fraction * rows_k.size)))
        labels[rows_k[:n]] = k
    data = data.with_labels(labels)
    return Standardiser().fit(data).transform(data)


def build_default(data: MultimodalDataset, *, seed: int = 0, hidden=DEFAULTS["hidden"],
                  latent_dim=DEFAULTS["latent_dim"], settings: str = "defaults"):
    """The estimator's default model for ``data`` (all modalities Student-t, ν = 5) at
    ``settings`` (:data:`SETTINGS`: the estimator's defaults or the issue-14 ones); the
    labelled class counts are those of ``data``, as the estimator's."""
    pyro.set_rng_seed(seed)
    y = data.y.numpy()
    counts = tuple(int((y == k).sum()) for k in range(data.num_classes))
    return build_model(dict(data.dims), data.num_classes, hidden=tuple(hidden),
                       latent_dim=latent_dim, nu=DEFAULTS["nu"], label_counts=counts,
                       **SETTINGS[settings][0])


def plain_epoch(m2, data: MultimodalDataset, *, batch_size: int = DEFAULTS["batch_size"],
                lr: float = DEFAULTS["lr"], seed: int = 0, average: bool = False):
    """A function running one epoch in plain PyTorch over the loader's batches (``average``:
    then adding the parameters to a running mean, ``torch.optim.swa_utils.AveragedModel``)."""
    adam = torch.optim.Adam(list(m2.parameters()), lr=lr, fused=True)
    step = PlainStep(m2, adam)
    loader = InterleavedLoader(data, batch_size, seed=seed)
    averaged = torch.optim.swa_utils.AveragedModel(m2, use_buffers=False) if average else None

    def run():
        total = 0.0
        for batch, num_data in loader:
            total += step(batch.x, batch.mask, batch.y, num_data / batch.size, clip_value=CLIP)
        if averaged is not None:
            averaged.update_parameters(m2)
        return total

    return run


def train_epoch(m2, data: MultimodalDataset, *, optimizer: str = "default",
                validate: bool | None = None, batch_size: int = DEFAULTS["batch_size"],
                lr: float = DEFAULTS["lr"], seed: int = 0, average: bool = False):
    """A function running one epoch of :func:`~pyro_mmt.training.train` (``epochs=1``), with
    one optimiser and one objective kept across calls.

    :param str optimizer: ``"default"`` (what ``train`` makes when given none) or
        ``"clipped_adam"`` (``pyro.optim.ClippedAdam``, the default before issue 14).
    :param validate: ``train``'s ``validate``.
    :param bool average: add the parameters to a :class:`ParameterAverage` at the end of the
        epoch (``train``'s ``on_epoch_end``), as the estimator does in the averaged epochs.
    """
    if optimizer == "default":
        make = getattr(svi_module, "default_optimizer", None)
        if make is None:  # the code before issue 14 (to measure it): the same fused optimiser
            from pyro_mmt.training.optim import MultiTensorAdam

            def make(lr):
                return MultiTensorAdam({"lr": lr, "clip_value": CLIP})
        optim = make(lr)
    elif optimizer == "clipped_adam":
        optim = pyro.optim.ClippedAdam({"lr": lr, "clip_norm": CLIP})
    else:
        raise ValueError(f"optimizer: expected 'default' or 'clipped_adam', found {optimizer!r}")
    objective = GammaPowerELBO("auto", max_plate_nesting=1)
    averaged = ParameterAverage(m2, start=0) if average else None
    on_epoch_end = None if averaged is None else (lambda epoch: averaged.update(m2, epoch))

    def run():
        return train(m2.model, m2.guide, data, objective=objective, optimizer=optim, epochs=1,
                     batch_size=batch_size, seed=seed, progress=False, validate=validate,
                     on_epoch_end=on_epoch_end)

    return run


def measure(data, *, rounds: int, repeats: int, clipped: bool = True, hidden=DEFAULTS["hidden"],
            latent_dim=DEFAULTS["latent_dim"], settings: str = "defaults") -> dict:
    """Interleaved epoch times of the variants (module docstring) on one model."""
    m2 = build_default(data, hidden=hidden, latent_dim=latent_dim, settings=settings)
    model_settings, averaging = SETTINGS[settings]
    average = averaging > 0
    with pyro.get_param_store().scope():
        epochs = {
            "plain": plain_epoch(m2, data, average=average),
            "train": train_epoch(m2, data, average=average),
            "train_noval": train_epoch(m2, data, validate=False, average=average),
        }
        if clipped:
            epochs["train_clipped"] = train_epoch(m2, data, optimizer="clipped_adam",
                                                  average=average)
        timings = interleaved(epochs, rounds=rounds, repeats=repeats)
    loader = InterleavedLoader(data, DEFAULTS["batch_size"])
    row = {"settings": settings, **model_settings, "averaging": averaging, "rows": len(data),
           "labelled": loader.num_labelled, "steps": len(loader),
           "hidden": "x".join(map(str, hidden)), "latent_dim": latent_dim}
    row.update({f"{k}_ms": 1e3 * timings.median(k) for k in epochs})
    for k in epochs:
        if k == "plain":
            continue
        ratio, low, high = timings.ratio(k, "plain")
        median, q1, q3 = timings.round_ratio_quartiles(k, "plain")
        row[f"ratio_{k}"], row[f"ratio_{k}_q1"], row[f"ratio_{k}_q3"] = median, q1, q3
        row[f"ratio_{k}_of_medians"] = ratio
        row[f"ratio_{k}_min"], row[f"ratio_{k}_max"] = low, high
        row[f"ratio_{k}_best"] = min(timings.runs[k]) / min(timings.runs["plain"])
    return row


def _profiled(make, m2, data, epochs: int, *, average: bool) -> cProfile.Profile:
    """cProfile of ``epochs`` epochs of ``make(m2, data, average=...)`` after one warm-up
    epoch, in a scope of the param store of its own."""
    with pyro.get_param_store().scope():
        run = make(m2, data, average=average)
        run()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(epochs):
            run()
        prof.disable()
    return prof


def profile(data, epochs: int, *, sort: str = "tottime", lines: int = 30,
            settings: str = "defaults") -> str:
    """cProfile of ``epochs`` epochs of ``train`` (after one warm-up epoch)."""
    prof = _profiled(train_epoch, build_default(data, settings=settings), data, epochs,
                     average=SETTINGS[settings][1] > 0)
    text = io.StringIO()
    pstats.Stats(prof, stream=text).sort_stats(sort).print_stats(lines)
    return text.getvalue()


def _package(filename: str, function: str) -> str:
    if filename == "~":
        return "torch C++: backward" if "run_backward" in function else "torch C++: other calls"
    if "/pyro/" in filename:
        return "pyro (Python)"
    if "/torch/" in filename:
        return "torch (Python)"
    if "site-packages" not in filename and "/lib/python" not in filename:
        return "pyro-mmt and the benchmark (Python)"
    return "other Python"


def profile_by_package(data, epochs: int, *, settings: str = "defaults") -> str:
    """cProfile's own time of ``epochs`` plain and ``train`` epochs (after one warm-up epoch
    each), summed by package: where ``train``'s extra time goes."""
    average = SETTINGS[settings][1] > 0
    totals = {}
    for name, make in (("plain", plain_epoch), ("train", train_epoch)):
        prof = _profiled(make, build_default(data, settings=settings), data, epochs,
                         average=average)
        sums: dict[str, float] = {}
        for (filename, _, function), (_, _, own, _, _) in pstats.Stats(prof).stats.items():
            key = _package(filename, function)
            sums[key] = sums.get(key, 0.0) + own
        totals[name] = sums
    table = pd.DataFrame(totals).fillna(0.0).sort_index()
    table.loc["total"] = table.sum()
    table["train - plain"] = table["train"] - table["plain"]
    return (f"cProfile own time, s, over {epochs} epochs at settings {settings!r}:\n"
            + table.to_markdown(floatfmt=".3f"))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-clipped", action="store_true", help="skip the ClippedAdam variant")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                   help="the settings measured, one row each (default: both)")
    p.add_argument("--profile", type=int, default=0, metavar="EPOCHS",
                   help="also print a cProfile of this many train epochs, and the own time of "
                        "this many plain and train epochs by package")
    p.add_argument("--quick", action="store_true", help="smoke run: 200 rows, tiny networks")
    p.add_argument("--out", type=Path, default=RESULTS / "epoch_overhead.csv")
    args = p.parse_args(argv)
    threads = parse_threads(args.threads)
    sizes = {}
    data = default_data()
    if args.quick:
        data = default_data(rows=200)
        args.rounds, args.repeats = 2, 1
        sizes = {"hidden": (16,), "latent_dim": 4}
    info = machine()
    print(f"machine: {info}")
    rows = []
    for settings in args.settings:
        row = {"threads": threads, **measure(data, rounds=args.rounds, repeats=args.repeats,
                                             clipped=not args.no_clipped, settings=settings,
                                             **sizes)}
        row["loadavg_1min"] = machine()["loadavg_1min"]
        rows.append(row)
    table = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.4g")
    print(table.T.to_markdown(floatfmt=".3f"))
    print(f"wrote {args.out}")
    if args.profile:
        print(profile(data, args.profile, settings=args.settings[0]))
        print(profile_by_package(data, args.profile, settings=args.settings[0]))


if __name__ == "__main__":
    main()
