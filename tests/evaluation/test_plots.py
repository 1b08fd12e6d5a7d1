"""The plots: each returns a Figure, writes a PNG when given a path, and leaves nothing open."""

import numpy as np
import pandas as pd
import pytest
from matplotlib._pylab_helpers import Gcf
from matplotlib.figure import Figure

from pyro_mmt.evaluation.plots import (
    plot_confusion_matrix,
    plot_recall_vs_frequency,
    plot_training_curves,
)

PNG = b"\x89PNG\r\n\x1a\n"


def is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG


@pytest.fixture
def predictions():
    """50 test rows of 5 classes; a method that confuses every third row with class 0."""
    y = np.repeat(np.arange(5), 10)
    pred = y.copy()
    pred[::3] = 0
    return y, {"t_gamma": pred, "lr": np.zeros_like(y)}


@pytest.mark.parametrize("validation", [True, False])
def test_training_curves(tmp_path, validation):
    history = pd.DataFrame({"epoch": [1, 2, 3], "loss_labelled": [5.0, 4.0, 3.0],
                            "loss_unlabelled": [500.0, 400.0, 300.0], "loss": [9.0, 8.0, 7.0]})
    if validation:
        history["val_balanced_accuracy"] = [0.3, 0.5, 0.6]
    fig = plot_training_curves(history, tmp_path / "curves" / "training.png")
    assert isinstance(fig, Figure) and len(fig.axes) == (2 if validation else 1)
    assert fig.axes[0].get_yscale() == "log"  # losses two orders of magnitude apart
    assert is_png(tmp_path / "curves" / "training.png")


def test_training_curves_without_labelled_batches_or_epochs():
    history = pd.DataFrame({"epoch": [1, 2], "loss_labelled": [np.nan, np.nan],
                            "loss_unlabelled": [3.0, 2.0], "loss": [3.0, 2.0]})
    assert len(plot_training_curves(history).axes[0].lines) == 2
    empty = pd.DataFrame(columns=["epoch", "loss_labelled", "loss_unlabelled", "loss"])
    assert isinstance(plot_training_curves(empty), Figure)


def test_recall_vs_frequency(tmp_path, predictions):
    y, preds = predictions
    counts = [5, 100, 50, 20, 10]
    fig = plot_recall_vs_frequency(y, preds, counts, list("abcde"), tmp_path / "recall.png")
    ax = fig.axes[0]
    # classes head to tail: b (100 rows) first, a (5 rows) last
    assert [t.get_text() for t in ax.get_xticklabels()] == list("bcdea")
    heights = [bar.get_height() for bar in ax.patches[:5]]  # the first method's bars
    np.testing.assert_allclose(heights, [0.7, 0.7, 0.6, 0.7, 1.0])
    assert is_png(tmp_path / "recall.png")


def test_confusion_matrix(tmp_path, predictions):
    y, preds = predictions
    fig = plot_confusion_matrix(y, preds["t_gamma"], 5, None, tmp_path / "cm.png")
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(shown.sum(axis=1), 1.0)  # rows normalised
    assert shown[1, 0] == pytest.approx(0.3)
    assert is_png(tmp_path / "cm.png")


def test_no_figure_stays_open(predictions):
    y, preds = predictions
    for _ in range(21):  # more than pyplot's 20-figure warning
        plot_confusion_matrix(y, preds["lr"], 5)
    assert Gcf.get_num_fig_managers() == 0


def test_confusion_matrix_colour_bar_is_labelled(predictions):
    y, preds = predictions
    fig = plot_confusion_matrix(y, preds["t_gamma"], 5)
    colour_bar = fig.axes[-1]
    assert "true class" in colour_bar.get_ylabel()


def test_recall_legend_does_not_cover_the_class_names(predictions):
    """Ten long, rotated class names (Fashion-MNIST's): the legend lies below them."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 20)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
             "Sneaker", "Bag", "Ankle boot"]
    preds = {m: rng.integers(0, 10, y.size) for m in ("t_gamma_ens3", "t_gamma", "gauss_kl",
                                                       "selftrain", "lr")}
    fig = plot_recall_vs_frequency(y, preds, np.geomspace(5000, 50, 10).astype(int), names)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    legend = fig.legends[0].get_window_extent(renderer)
    labels = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
    assert legend.y1 <= min(b.y0 for b in labels)
    assert all(not legend.overlaps(b) for b in labels)
