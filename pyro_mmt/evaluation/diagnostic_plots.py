"""Plots of the diagnostics in :mod:`pyro_mmt.evaluation.diagnostics` (matplotlib, no pyplot state).

Each function takes the InferenceData of :func:`~pyro_mmt.evaluation.diagnostics.to_inference_data`,
returns a :class:`matplotlib.figure.Figure` and, given ``path``, saves it as a PNG. Figures are
made with ``Figure()`` directly (the Agg canvas), so they neither need a display nor change
the user's pyplot backend; in a notebook, display the returned figure.

- :func:`plot_ppc`: posterior predictive check per modality.
- :func:`plot_khat`: Pareto k̂ per datum and the effective sample size.
- :func:`plot_latent_pca`: a 2-D PCA of the posterior means of z, coloured by class.
- :func:`plot_reconstructions`: observed data against posterior predictive draws.
- :func:`plot_calibration`: reliability diagram and entropy of q(y | x) by predicted class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from sklearn.decomposition import PCA

from pyro_mmt.evaluation.diagnostics import (
    KHAT_MIN_DRAWS,
    KHAT_THRESHOLD,
    LATENT_GROUP,
    ClassifierChecks,
    classifier_checks,
    get_group,
    importance_diagnostics,
)

__all__ = [
    "plot_calibration",
    "plot_khat",
    "plot_latent_pca",
    "plot_ppc",
    "plot_reconstructions",
]


def _finish(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    return fig


def _class_colours(num_classes: int):
    from matplotlib import colormaps

    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(num_classes)]


def _modalities(data) -> list[str]:
    return [str(m) for m in get_group(data, "constant_data")["modality"].values]


def _display_class(data) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per datum: the known label, else the predicted class; whether it was known; names."""
    const = get_group(data, "constant_data")
    post = get_group(data, LATENT_GROUP)
    label = const["label"].values.astype(np.int64)
    predicted = post["class_prob"].isel(chain=0, draw=0).values.argmax(axis=1)
    known = label >= 0
    return np.where(known, label, predicted), known, [str(c) for c in post["class"].values]


def _class_handles(cls, known, names, colours) -> list[Line2D]:
    handles = [Line2D([], [], marker="o", ls="", color=colours[k], label=names[k])
               for k in np.unique(cls)]
    if not known.all():
        handles.append(Line2D([], [], marker="o", ls="", mfc="none", color="0.3",
                              label="hollow: predicted"))
    return handles


def plot_ppc(data, *, num_draws: int = 20, bins: int = 60, path: str | Path | None = None
             ) -> Figure:
    """Posterior predictive check per modality (the pooled-values view of ``az.plot_ppc``).

    One panel per modality: the density of all observed values of its features (pooled over
    features and the data that observe it; black) against the same density for each posterior
    predictive draw (thin blue lines) and their mean (dashed orange), on a log scale so that
    the tails show. The range is the observed values' 0.1–99.9% quantiles, widened by a fifth.
    Replicated draws that miss the observed shape (too narrow, too light-tailed, missing a mode)
    show a misfit of p(x_m | y, z).
    """
    obs, pp = get_group(data, "observed_data"), get_group(data, "posterior_predictive")
    mask = get_group(data, "constant_data")["modality_mask"].values.astype(bool)
    modalities = _modalities(data)
    ncols = min(3, len(modalities))
    nrows = -(-len(modalities) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(modalities):]:
        ax.set_visible(False)
    for j, (ax, m) in enumerate(zip(axes, modalities, strict=False)):
        present = mask[:, j]
        observed = obs[f"x_{m}"].values[present].ravel()
        rep = pp[f"x_{m}"].stack(sample=("chain", "draw")).transpose("sample", ...).values
        rep = rep[: num_draws][:, present].reshape(min(num_draws, rep.shape[0]), -1)
        if observed.size == 0:
            ax.set_title(f"{m}: no datum observes it")
            continue
        lo, hi = np.quantile(observed, [0.001, 0.999])
        pad = (hi - lo) / 5 if hi > lo else 1.0
        edges = np.linspace(lo - pad, hi + pad, bins + 1)
        centres = (edges[:-1] + edges[1:]) / 2
        dens = np.stack([np.histogram(r, edges, density=True)[0] for r in rep])
        for d in dens:
            ax.plot(centres, d, color="C0", alpha=0.25, lw=0.8)
        ax.plot(centres, dens.mean(0), color="C1", ls="--", lw=1.5)
        ax.plot(centres, np.histogram(observed, edges, density=True)[0], color="k", lw=1.8)
        ax.set_yscale("log")
        ax.set_title(f"{m} ({obs[f'x_{m}'].shape[1]} features, {int(present.sum())} data)")
        ax.set_xlabel("value")
    axes[0].set_ylabel("density (log scale)")
    axes[0].legend(
        [Line2D([], [], color="k", lw=1.8), Line2D([], [], color="C0", alpha=0.5),
         Line2D([], [], color="C1", ls="--")],
        ["observed", f"posterior predictive ({rep.shape[0]} draws)", "predictive mean"],
        fontsize=8, loc="lower center",
    )
    fig.suptitle("Posterior predictive check, pooled feature values per modality")
    return _finish(fig, path)


def plot_khat(data, *, table: pd.DataFrame | None = None, threshold: float = KHAT_THRESHOLD,
              path: str | Path | None = None) -> Figure:
    """Pareto k̂ per datum (left, coloured by class, with the 0.5 and ``threshold`` lines) and
    the importance-sampling ESS fraction against k̂ (right). Points above the red line are the
    data where q(y, z | x) is not a reliable proposal for the posterior
    (:func:`~pyro_mmt.evaluation.diagnostics.importance_diagnostics`). k̂ = −inf (constant weights) is drawn
    at the bottom edge. When no k̂ could be estimated (fewer than
    :data:`~pyro_mmt.evaluation.diagnostics.KHAT_MIN_DRAWS` = 30 draws per datum) the figure says
    so and shows the ESS fraction per datum alone."""
    table = importance_diagnostics(data) if table is None else table
    cls, known, names = _display_class(data)
    colours = np.array(_class_colours(len(names)))
    khat = table["khat"].to_numpy()
    stats = get_group(data, "sample_stats")
    draws = int(stats.sizes["chain"] * stats.sizes["draw"])
    if np.isnan(khat).all():
        return _finish(_plot_without_khat(table, cls, known, names, colours, draws), path)
    finite = np.isfinite(khat)
    floor = min(np.nanmin(khat[finite]) if finite.any() else 0.0, 0.0) - 0.1
    shown = np.where(np.isneginf(khat), floor, khat)
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    x = np.arange(len(khat))
    ax.scatter(x[known], shown[known], c=colours[cls[known]], s=14)
    ax.scatter(x[~known], shown[~known], facecolors="none", edgecolors=colours[cls[~known]], s=14)
    for level, style in ((0.5, dict(color="0.5", ls=":")), (threshold, dict(color="r", ls="--"))):
        ax.axhline(level, **style)
        ax2.axvline(level, **style)
    estimated = ~np.isnan(khat)
    share = float(np.mean(khat[estimated] > threshold))
    missing = "" if estimated.all() else f"; {int((~estimated).sum())} data without k̂"
    ax.set_title(f"Pareto k̂ per datum: {share:.1%} above {threshold} (S = {draws} draws"
                 f"{missing})")
    ax.set_xlabel("datum")
    ax.set_ylabel("k̂")
    fig.legend(handles=_class_handles(cls, known, names, colours), fontsize=8,
               loc="outside lower center", ncols=min(len(names) + 1, 12), title="class")
    ax2.scatter(shown, table["ess_fraction"], s=10, c=colours[cls])
    ax2.set_yscale("log")
    ax2.set_xlabel("k̂")
    ax2.set_ylabel("ESS / S")
    ax2.set_title("importance-sampling ESS")
    return _finish(fig, path)


def _plot_without_khat(table, cls, known, names, colours, draws) -> Figure:
    """plot_khat's figure when no k̂ was estimated: the reason, and ESS / S per datum."""
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, width_ratios=[2, 1])
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"Pareto k̂ not estimated: PSIS needs at least {KHAT_MIN_DRAWS} draws per "
            f"datum,\nfound S = {draws}. Draw more (num_samples, or --num-samples).",
            ha="center", va="center", fontsize=11, transform=ax.transAxes)
    ax.set_title(f"Pareto k̂ per datum: not estimated (S = {draws} < {KHAT_MIN_DRAWS} draws)")
    x = np.arange(len(table))
    fraction = table["ess_fraction"].to_numpy()
    ax2.scatter(x[known], fraction[known], c=colours[cls[known]], s=10)
    ax2.scatter(x[~known], fraction[~known], facecolors="none",
                edgecolors=colours[cls[~known]], s=10)
    ax2.set_yscale("log")
    ax2.set_xlabel("datum")
    ax2.set_ylabel("ESS / S")
    ax2.set_title("importance-sampling ESS")
    fig.legend(handles=_class_handles(cls, known, names, colours), fontsize=8,
               loc="outside lower center", ncols=min(len(names) + 1, 12), title="class")
    return fig


def plot_latent_pca(data, *, path: str | Path | None = None) -> Figure:
    """The posterior means E_q[z | x] (averaged over the draws, so over q(y | x) too) projected
    on their first two principal components, coloured by class: filled points by the known
    label, hollow ones by the predicted class. Classes that overlap here are hard for a
    classifier built on z."""
    z = get_group(data, LATENT_GROUP)["z"].mean(("chain", "draw")).values
    cls, known, names = _display_class(data)
    colours = np.array(_class_colours(len(names)))
    k = min(2, z.shape[1], z.shape[0])
    pca = PCA(n_components=k).fit(z)
    pcs = pca.transform(z)
    if k < 2:
        pcs = np.column_stack([pcs, np.zeros(len(pcs))])
    fig = Figure(figsize=(7.2, 5.5), layout="constrained")
    ax = fig.subplots()
    ax.scatter(pcs[known, 0], pcs[known, 1], c=colours[cls[known]], s=14)
    ax.scatter(pcs[~known, 0], pcs[~known, 1], facecolors="none",
               edgecolors=colours[cls[~known]], s=14, lw=0.8)
    var = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC 1 ({var[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({var[1]:.0%} of variance)" if k > 1 else "")
    ax.set_title(f"Posterior means of z (d = {z.shape[1]}), first two principal components")
    fig.legend(handles=_class_handles(cls, known, names, colours), fontsize=8,
               loc="outside right upper", title="class")
    return _finish(fig, path)


def _default_rows(data, num_data: int) -> list[int]:
    """Up to ``num_data`` data of different classes (known label first), in datum order."""
    cls, known, _ = _display_class(data)
    order = np.concatenate([np.flatnonzero(known), np.flatnonzero(~known)])
    rows, seen = [], set()
    for i in order:
        if cls[i] not in seen:
            rows.append(int(i))
            seen.add(cls[i])
        if len(rows) == num_data:
            break
    for i in order:  # fewer classes than rows: fill up
        if len(rows) == num_data:
            break
        if int(i) not in rows:
            rows.append(int(i))
    return sorted(rows)


def plot_reconstructions(data, *, rows: Sequence[int] | None = None, num_data: int = 4,
                         image_shapes: Mapping[str, tuple[int, int]] | None = None,
                         path: str | Path | None = None) -> Figure:
    """Observed data against their posterior predictive draws, one row per datum and one column
    per modality.

    A tabular modality shows, per feature (integer positions on the x axis; the features are
    separate variables, so they are drawn as markers, not joined by lines), the observed value
    (black ×), the mean of the posterior predictive draws (blue dot) and their 5–95% interval
    (blue bar); one in ``image_shapes`` is drawn as three images: observed, predictive mean,
    one predictive draw. A missing modality shows the
    prediction alone (an imputation from the other modalities).

    :param rows: the data to show (default: ``num_data`` data of different classes).
    :param image_shapes: modality -> (rows, columns) of its features as an image, row-major.
    """
    obs, pp = get_group(data, "observed_data"), get_group(data, "posterior_predictive")
    mask = get_group(data, "constant_data")["modality_mask"].values.astype(bool)
    cls, known, names = _display_class(data)
    modalities = _modalities(data)
    image_shapes = dict(image_shapes or {})
    rows = _default_rows(data, num_data) if rows is None else [int(r) for r in rows]
    fig = Figure(figsize=(3.2 * len(modalities), 2.2 * len(rows) + 0.6), layout="constrained")
    axes = fig.subplots(len(rows), len(modalities), squeeze=False)
    for r, i in enumerate(rows):
        for j, m in enumerate(modalities):
            ax = axes[r, j]
            rep = pp[f"x_{m}"].isel(datum=i).stack(sample=("chain", "draw"))
            rep = rep.transpose("sample", ...).values
            mean = rep.mean(0)
            present = mask[i, j]
            x = obs[f"x_{m}"].values[i]
            if m in image_shapes:
                shape = tuple(image_shapes[m])
                panels = ([x] if present else []) + [mean, rep[0]]
                gap = np.full((shape[0], 1), np.nan)
                image = np.concatenate(
                    [np.concatenate([p.reshape(shape), gap], axis=1) for p in panels], axis=1
                )[:, :-1]
                # contrast from the observed image and the mean, robust to the few extreme
                # standardised pixels; a noisy draw saturates
                vmin, vmax = np.quantile(np.concatenate(panels[:-1]), [0.02, 0.98])
                ax.imshow(image, cmap="gray_r", vmin=vmin, vmax=max(vmax, vmin + 1e-9))
                ax.set_xticks([])
                ax.set_yticks([])
                if r == len(rows) - 1:
                    ax.set_xlabel("observed | mean | one draw" if present else "mean | one draw")
            else:
                f = np.arange(mean.size)
                lo, hi = np.quantile(rep, [0.05, 0.95], axis=0)
                size = 4 if mean.size <= 40 else 2
                ax.vlines(f, lo, hi, color="C0", alpha=0.35, lw=size / 2)
                ax.plot(f, mean, ls="", marker="o", ms=size, color="C0")
                if present:
                    ax.plot(f, x, ls="", marker="x", ms=size + 1, color="k", mew=0.8)
                ax.set_xlim(-0.5, mean.size - 0.5)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                if r == len(rows) - 1:
                    ax.set_xlabel("feature")
            title = m if present else f"{m} (missing: imputed)"
            ax.set_title(title, fontsize=9)
        axes[r, 0].set_ylabel(
            f"datum {i}\n{'class' if known[i] else 'predicted'} {names[cls[i]]}", fontsize=9
        )
    title = "Reconstructions"
    if any(m not in image_shapes for m in modalities):
        title += "\nper feature: observed (black ×), predictive mean (blue ●), 5–95% interval"
    fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def plot_calibration(data, *, checks: ClassifierChecks | None = None,
                     path: str | Path | None = None) -> Figure:
    """Left: the reliability diagram of q(y | x) on data with a known label (accuracy against
    mean confidence per confidence bin, the bin's count written above; the hatched part is the
    gap to the bin's mean confidence; the diagonal is perfect calibration, bars below it mean
    over-confidence). Right: the entropy of q(y | x)
    on the data whose label was not conditioned on, by predicted class (boxes), with the number
    of data predicted in each class: a rarely predicted, high-entropy class is one the
    classifier does not commit to."""
    checks = classifier_checks(data) if checks is None else checks
    rel = checks.reliability
    fig = Figure(figsize=(11, 4.3), layout="constrained")
    ax, ax2 = fig.subplots(1, 2)
    width = rel["upper"] - rel["lower"]
    filled = rel["count"] > 0
    ax.bar(rel["lower"][filled], rel["accuracy"][filled], width=width[filled], align="edge",
           color="C0", edgecolor="k", lw=0.5, label="accuracy")
    # the gap between accuracy and mean confidence, hatched (it may lie inside the bar)
    ax.bar(rel["lower"][filled], (rel["confidence"] - rel["accuracy"])[filled],
           bottom=rel["accuracy"][filled], width=width[filled], align="edge", fill=False,
           hatch="///", edgecolor="C3", lw=0.8, label="gap to mean confidence")
    for _, row in rel[filled].iterrows():
        ax.text((row["lower"] + row["upper"]) / 2, 1.01, str(int(row["count"])), ha="center",
                va="bottom", fontsize=6)
    ax.plot([0, 1], [0, 1], color="0.3", ls="--", lw=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("confidence max q(y | x)")
    ax.set_ylabel("accuracy")
    n_known = int(rel["count"].sum())
    ax.set_title(f"Reliability ({n_known} labelled data): ECE = {checks.ece:.3f}")
    ax.legend(loc="upper left", bbox_to_anchor=(0, 0.94), fontsize=8)

    per = checks.per_datum
    free = ~per["labelled"].to_numpy().astype(bool)
    table = checks.entropy_by_class
    classes = [k for k in table.index if table.loc[k, "count"] > 0]
    values = [per["entropy"][free & (per["predicted"] == k)].to_numpy() for k in classes]
    if classes:
        ax2.boxplot(values, positions=np.arange(len(classes)), widths=0.6, showfliers=True,
                    flierprops=dict(markersize=3))
        ax2.set_xticks(np.arange(len(classes)),
                       [f"{table.loc[k, 'class']}\nn={table.loc[k, 'count']}" for k in classes],
                       fontsize=7)
    k = len(table)
    ax2.axhline(np.log(k), color="0.5", ls=":", lw=1)
    ax2.text(0.99, np.log(k), "log K (uniform)", ha="right", va="bottom", fontsize=7,
             transform=ax2.get_yaxis_transform())
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("predicted class")
    ax2.set_ylabel("entropy of q(y | x) (nats)")
    ax2.set_title(f"Entropy by predicted class ({int(free.sum())} unlabelled/held-out data)")
    return _finish(fig, path)
