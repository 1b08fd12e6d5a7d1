"""``make demo``: the proposed model beside the Gaussian model and the classical baselines on
the bundled UCI Multiple Features data (six views), ρ = 10, β = 0.05, one seed."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from pyro_mmt.data import load_dataset, long_tailed_split
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.experiments.benchmark import METHODS

__all__ = ["DEMO_METHODS", "run_demo"]

#: What the demo compares (see ``pyro_mmt.experiments.benchmark.METHODS``).
DEMO_METHODS = ["t_gamma", "gauss_kl", "t_kl", "selftrain", "lr"]


def run_demo(out: Path | str = "runs/demo", *, epochs: int | None = None, seed: int = 0,
             dataset: str = "mfeat", rho: float = 10, beta: float = 0.05,
             methods: list[str] | None = None) -> pd.DataFrame:
    """Train and score each demo method on one split; print and return the metrics table and
    write the plots (per-class recall against class frequency, confusion matrix of the first
    method) to ``out``. The deep methods train as the benchmark trains them (the estimator's
    default epochs) unless ``epochs`` is given."""
    from pyro_mmt.evaluation.plots import plot_confusion_matrix, plot_recall_vs_frequency

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(methods or DEMO_METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; expected some of {sorted(METHODS)}")
    data = load_dataset(dataset)
    split = long_tailed_split(data, rho, beta, seed)
    print(f"{dataset}: {len(split.train)} training rows "
          f"({int(split.labelled_class_counts.sum())} labelled), {len(split.test)} test rows; "
          f"training class counts {split.train_class_counts.tolist()}")
    rows, predictions = [], {}
    y_test = split.test.y.numpy()
    for name in methods:
        method = METHODS[name]
        tic = time.perf_counter()
        pred = method.fit_predict(split, seed, dataset, epochs)
        seconds = time.perf_counter() - tic
        metrics = classification_metrics(y_test, pred, split.train_class_counts)
        rows.append({"method": name, **metrics.to_dict(), "seconds": seconds,
                     "description": method.description})
        predictions[name] = pred
        print(f"  {name:<12} balanced accuracy {metrics['balanced_accuracy']:.3f}, "
              f"minority recall {metrics['minority_recall']:.3f} ({seconds:.0f} s)")
    table = pd.DataFrame(rows)
    table.to_csv(out / "demo_metrics.csv", index=False)
    plot_recall_vs_frequency(y_test, predictions, split.train_class_counts,
                             split.test.class_names, out / "recall_vs_frequency.png")
    plot_confusion_matrix(y_test, predictions[methods[0]], split.test.num_classes,
                          split.test.class_names, out / "confusion_matrix.png",
                          title=f"{methods[0]}: confusion matrix (rows: true)")
    shown = table[["method", "balanced_accuracy", "macro_f1", "g_mean", "minority_recall",
                   "seconds"]]
    print()
    print(f"{dataset}, rho = {rho}, beta = {beta}, seed {seed} (test set class-balanced):")
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nplots and demo_metrics.csv in {out}/")
    return table
