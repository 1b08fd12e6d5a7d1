"""Every diagnostic of a fitted model written to one folder: :func:`diagnose`.

It joins the computations of :mod:`pyro_mmt.evaluation.diagnostics` and the figures of
:mod:`pyro_mmt.evaluation.diagnostic_plots` (which itself reads the diagnostics), so neither of
those two modules imports the other's consumer.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from pyro_mmt.evaluation import diagnostic_plots as plots
from pyro_mmt.evaluation.diagnostics import (
    classifier_checks,
    diagnostics_summary,
    importance_diagnostics,
    resolve_inputs,
    save_netcdf,
    to_inference_data,
)

__all__ = ["DiagnosticsReport", "diagnose"]


class DiagnosticsReport(NamedTuple):
    """What :func:`diagnose` returns: ``paths`` (name -> file written) and ``summary`` (the
    table of :func:`diagnostics_summary`)."""

    paths: dict[str, Path]
    summary: pd.DataFrame


def diagnose(
    model,
    guide=None,
    dataset=None,
    out_dir: str | Path | None = None,
    num_samples: int = 100,
    seed: int = 0,
    *,
    y=None,
    num_predictive: int | None = None,
    condition_on_labels: bool = True,
    batch_size: int = 256,
    attrs: Mapping[str, Any] | None = None,
    image_shapes: Mapping[str, tuple[int, int]] | None = None,
) -> DiagnosticsReport:
    """Every diagnostic of this module for ``model``/``guide`` on ``dataset``, written to
    ``out_dir``.

    Files: ``inference_data.nc`` (:func:`to_inference_data`), ``summary.csv``
    (:func:`diagnostics_summary`), ``per_datum.csv`` (:func:`importance_diagnostics` joined with
    the classifier's prediction, confidence and entropy), ``reliability.csv`` and
    ``entropy_by_class.csv`` (:func:`classifier_checks`), and the plots of
    :mod:`pyro_mmt.evaluation.diagnostic_plots`: ``ppc.png``, ``khat.png``, ``latent_pca.png``,
    ``reconstructions.png``, ``calibration.png``.

    :param model: the fitted estimator (``diagnose(est, dataset=X, out_dir=out)``: X in any
        form ``fit`` accepts, standardised as ``predict`` does), its ``model_``, a
        :class:`~pyro_mmt.models.MultimodalM2` (see :func:`to_inference_data`), or a model
        callable.
    :param guide: the guide object or callable; default (None) the model's object, which
        holds its guide: ``diagnose(est.model_, dataset=data, out_dir=out)``.
    :param dataset: with an estimator, X in its own units; with a model, a
        :class:`~pyro_mmt.data.MultimodalDataset` in the model's units (e.g.
        ``est.standardiser_.transform(test)``); required.
    :param y: with an estimator, labels for X (−1 = unknown).
    :param out_dir: folder to write to (created); required.
    :param int num_samples: draws per datum.
    :param int seed: seed of the draws.
    :param num_predictive: posterior predictive draws kept (default min(S, 20)).
    :param bool condition_on_labels: see :func:`to_inference_data`; pass False on held-out data
        to estimate log p(x) for every datum.
    :param int batch_size: data per vectorised pass.
    :param attrs: extra attributes of the InferenceData (e.g. run hyperparameters).
    :param image_shapes: modality -> (rows, columns), to draw that modality's reconstructions
        as images (e.g. ``{"pix": (16, 15)}`` for mfeat).
    :return: :class:`DiagnosticsReport` ``(paths, summary)``.
    """
    # the arguments' errors before anything is drawn or written (to_inference_data below
    # gives the units warning, once)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="dataset: the observed values",
                                category=UserWarning)
        resolve_inputs(model, guide, dataset, y)
    if out_dir is None:
        raise ValueError("out_dir: expected the folder to write the diagnostics to, found None")
    data = to_inference_data(
        model, guide, dataset, y=y, num_samples=num_samples, num_predictive=num_predictive,
        condition_on_labels=condition_on_labels, seed=seed, batch_size=batch_size, attrs=attrs,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = importance_diagnostics(data)
    checks = classifier_checks(data)
    summary = diagnostics_summary(data, table, checks)
    per_datum = table.join(checks.per_datum[["predicted", "confidence", "entropy"]])
    paths = {"inference_data": save_netcdf(data, out / "inference_data.nc")}
    for name, frame in (("summary", summary), ("per_datum", per_datum),
                        ("reliability", checks.reliability),
                        ("entropy_by_class", checks.entropy_by_class)):
        paths[name] = out / f"{name}.csv"
        frame.to_csv(paths[name])
    figures = {
        "ppc": lambda p: plots.plot_ppc(data, path=p),
        "khat": lambda p: plots.plot_khat(data, table=table, path=p),
        "latent_pca": lambda p: plots.plot_latent_pca(data, path=p),
        "reconstructions": lambda p: plots.plot_reconstructions(
            data, image_shapes=image_shapes, path=p),
        "calibration": lambda p: plots.plot_calibration(data, checks=checks, path=p),
    }
    for name, draw in figures.items():
        paths[name] = out / f"{name}.png"
        draw(paths[name])
    return DiagnosticsReport(paths, summary)
