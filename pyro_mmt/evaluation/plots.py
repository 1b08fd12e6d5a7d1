"""Training and evaluation plots (matplotlib; each function returns the Figure and, when given
``path``, saves it as PNG).

Figures are made with ``matplotlib.figure.Figure`` rather than ``pyplot``: no backend is chosen
for the user (a notebook keeps its own and displays the returned Figure), no display is needed
on a server, and nothing stays open in pyplot's registry after a figure is saved.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import confusion_matrix, recall_score

__all__ = ["plot_training_curves", "plot_recall_vs_frequency", "plot_confusion_matrix"]


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def plot_training_curves(history: pd.DataFrame, path: str | Path | None = None):
    """Loss per datum (labelled and unlabelled) and, when present, validation balanced accuracy
    against the epoch."""
    has_val = "val_balanced_accuracy" in history
    fig = Figure(figsize=(10 if has_val else 5.5, 3.8))
    axes = np.atleast_1d(fig.subplots(1, 2 if has_val else 1))
    for column, label in (("loss_labelled", "labelled"), ("loss_unlabelled", "unlabelled"),
                          ("loss", "all")):
        if column in history and history[column].notna().any():
            axes[0].plot(history["epoch"], history[column], label=label)
    axes[0].set(xlabel="epoch", ylabel="loss per datum", title="training loss")
    columns = [c for c in ("loss_labelled", "loss_unlabelled") if c in history]
    values = history[columns].to_numpy(dtype=float)
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() / values.min() > 20:
        axes[0].set_yscale("log")
    if axes[0].lines:
        axes[0].legend()
    if has_val:
        axes[1].plot(history["epoch"], history["val_balanced_accuracy"], color="C3")
        axes[1].set(xlabel="epoch", ylabel="balanced accuracy", title="validation")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    fig.tight_layout()
    return _save(fig, path)


def plot_recall_vs_frequency(
    y_true: np.ndarray,
    predictions: dict[str, np.ndarray],
    train_class_counts: Sequence[int],
    class_names: Sequence[str] | None = None,
    path: str | Path | None = None,
):
    """Per-class recall of each method (bars) with classes ordered from head to tail, beside the
    training class counts (grey, log scale): the picture of the imbalance problem."""
    counts = np.asarray(train_class_counts)
    order = np.argsort(-counts, kind="stable")
    k = len(counts)
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    fig = Figure(figsize=(max(6, 0.8 * k + 2), 4.4), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(len(predictions), 1)
    for i, (label, pred) in enumerate(predictions.items()):
        recall = recall_score(y_true, pred, labels=np.arange(k), average=None, zero_division=0)
        ax.bar(np.arange(k) + (i - (len(predictions) - 1) / 2) * width, recall[order], width,
               label=label)
    ax.set(ylim=(0, 1.05), ylabel="test recall", xlabel="class (head → tail)")
    ax.set_xticks(np.arange(k), [names[j] for j in order], rotation=45 if k > 6 else 0,
                  ha="right" if k > 6 else "center", rotation_mode="anchor")
    twin = ax.twinx()
    twin.plot(np.arange(k), counts[order], "o--", color="0.4", label="training rows")
    twin.set_yscale("log")
    twin.set_ylabel("training rows per class (log)")
    handles = ax.get_legend_handles_labels()
    extra = twin.get_legend_handles_labels()
    # outside the axes, below the (rotated) class names: inside, it would hide the bars it
    # explains, and just below the axes it would cover the class names
    fig.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8,
               loc="outside lower center", ncols=min(len(predictions) + 1, 6), frameon=False)
    ax.set_title("per-class recall against class frequency")
    return _save(fig, path)


def plot_confusion_matrix(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    path: str | Path | None = None,
    title: str = "confusion matrix (rows: true, normalised)",
):
    """Row-normalised confusion matrix (each row is a true class's recall profile)."""
    cm = confusion_matrix(y_true, y_pred, labels=np.arange(num_classes), normalize="true")
    names = [str(c) for c in (class_names if class_names is not None else range(num_classes))]
    fig = Figure(figsize=(0.55 * num_classes + 2.5, 0.55 * num_classes + 2))
    ax = fig.subplots()
    image = ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
    ax.set_xticks(np.arange(num_classes), names, rotation=45 if num_classes > 6 else 0)
    ax.set_yticks(np.arange(num_classes), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    for i in range(num_classes):
        for j in range(num_classes):
            if cm[i, j] >= 0.005:
                ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class's rows")
    fig.tight_layout()
    return _save(fig, path)
