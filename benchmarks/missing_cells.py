"""Missing cells: the model trained on the observed cells against the same model on imputed
data, and its imputation against scikit-learn's imputers.

On one long-tailed split (ρ = 10, β = 0.05, seed 0) of each data set, cells of every training
and test row are removed completely at random (10, 30, 50 %) or not at random ("mnar30": in
each feature, the cells above its 70th percentile), never a whole row. Then

- classification (balanced accuracy and minority recall on the test rows) of the estimator's
  defaults (t_gamma) fitted on the data with missing cells ("model"), on mean-imputed data
  ("mean+model") and on IterativeImputer-imputed data ("iterative+model"), and on the complete
  data ("complete");
- imputation of the training rows' missing cells: RMSE in the data's units, and the RMSE of
  the standardised features (each feature divided by its standard deviation), for the model's
  ``impute``, the feature means, KNNImputer (5 neighbours) and IterativeImputer.

    python -m benchmarks.missing_cells      # about 10 minutes on one core
"""

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.experimental import enable_iterative_imputer  # noqa: F401
from sklearn.impute import IterativeImputer, KNNImputer, SimpleImputer

from pyro_mmt.data import DATASETS, load_dataset, long_tailed_split
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.experiments.benchmark import TRAINING_EPOCHS


def remove_cells(x: np.ndarray, pattern: str, rng) -> np.ndarray:
    """A bool array, True where the cell of ``x`` is removed; no row loses every cell."""
    if pattern.startswith("mcar"):
        hidden = rng.random(x.shape) < int(pattern[4:]) / 100
    else:  # "mnarQQ": the largest QQ % of each feature
        top = np.quantile(x, 1 - int(pattern[4:]) / 100, axis=0, keepdims=True)
        hidden = (x > top) & (x > x.min(axis=0, keepdims=True))
    full = hidden.all(axis=1)
    hidden[full, rng.integers(0, x.shape[1], full.sum())] = False
    return hidden


def split_back(flat: np.ndarray, dims: dict) -> dict:
    out, start = {}, 0
    for m, n in dims.items():
        out[m] = flat[:, start:start + n]
        start += n
    return out


def main(args):
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    rows = []
    for name in args.datasets:
        split = long_tailed_split(load_dataset(name), args.rho, args.beta, args.seed)
        x_train, y_train = split.train.to_numpy()
        x_test, _ = split.test.to_numpy()
        y_test = split.test.y.numpy()
        dims = split.train.dims
        flat_train = np.concatenate(list(x_train.values()), axis=1)
        flat_test = np.concatenate(list(x_test.values()), axis=1)
        scale = flat_train.std(axis=0)
        scale[scale == 0] = 1.0
        families = DATASETS[name].likelihood or {}
        options = dict(seed=args.seed, epochs=args.epochs or TRAINING_EPOCHS.get(name, 40),
                       likelihood={m: families.get(m, "student_t") for m in dims})

        def fit_and_score(train, test, pattern, method, tic, options=options, y_train=y_train,
                          y_test=y_test, split=split, name=name):
            clf = MultimodalSemiSupervisedClassifier(**options).fit(train, y_train)
            metrics = classification_metrics(y_test, clf.predict(test),
                                             split.train_class_counts)
            rows.append({"dataset": name, "pattern": pattern, "task": "classification",
                         "method": method, "balanced_accuracy": metrics["balanced_accuracy"],
                         "minority_recall": metrics["minority_recall"],
                         "seconds": time.perf_counter() - tic})
            print(f"{name} {pattern} {method}: bacc={metrics['balanced_accuracy']:.3f} "
                  f"minority recall={metrics['minority_recall']:.3f}", flush=True)
            return clf

        fit_and_score(x_train, x_test, "none", "complete", time.perf_counter())
        for pattern in args.patterns:
            rng = np.random.default_rng(args.seed)
            hide_train = remove_cells(flat_train, pattern, rng)
            hide_test = remove_cells(flat_test, pattern, rng)
            train = np.where(hide_train, np.nan, flat_train)
            test = np.where(hide_test, np.nan, flat_test)
            tic = time.perf_counter()
            clf = fit_and_score(split_back(train, dims), split_back(test, dims), pattern,
                                "model", tic)
            imputed = {"model": np.concatenate(list(clf.impute(
                split_back(train, dims), num_samples=args.num_samples).values()), axis=1)}
            for method, imputer in (("mean", SimpleImputer(strategy="mean")),
                                    ("iterative", IterativeImputer(max_iter=10,
                                                                   random_state=args.seed))):
                tic = time.perf_counter()
                imputer.fit(train)
                imputed[method] = imputer.transform(train)
                fit_and_score(split_back(imputed[method], dims),
                              split_back(imputer.transform(test), dims), pattern,
                              f"{method}+model", tic)
            imputed["knn"] = KNNImputer(n_neighbors=5).fit_transform(train)
            for method, values in imputed.items():
                error = (values - flat_train)[hide_train]
                standard = ((values - flat_train) / scale)[hide_train]
                rows.append({"dataset": name, "pattern": pattern, "task": "imputation",
                             "method": method, "rmse": float(np.sqrt(np.mean(error**2))),
                             "standardised_rmse": float(np.sqrt(np.mean(standard**2))),
                             "missing_share": float(hide_train.mean())})
                print(f"{name} {pattern} imputation {method}: rmse={rows[-1]['rmse']:.3f} "
                      f"standardised={rows[-1]['standardised_rmse']:.3f}", flush=True)
    table = pd.DataFrame(rows)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "breast"])
    parser.add_argument("--patterns", nargs="+", default=["mcar10", "mcar30", "mcar50", "mnar30"])
    parser.add_argument("--rho", type=float, default=10)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/missing_cells.csv")
    main(parser.parse_args())
