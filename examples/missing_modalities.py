"""Missing modalities: train when some rows lack a modality, predict from any subset of them.

The model marginalises a missing modality out exactly (it drops out of the decoder chain and
out of the product of experts), so the same fitted model classifies from whatever modalities a
datum has. This script draws a long-tailed split of the digits (top and bottom 4-row halves of
8x8 images; ρ = 10, β = 0.2), hides one modality, at random, in a share ``--missing`` of the
training rows (a row of NaN), fits the scikit-learn-style estimator, and reports the test
metrics when predicting from each non-empty subset of the modalities (the others absent), and
from test rows that each miss a random modality.

    python examples/missing_modalities.py
    python examples/missing_modalities.py --dataset mfeat --missing 0.5 --out runs/missing
    python examples/missing_modalities.py --epochs 1 --subset 200 --hidden 8 --latent-dim 2
"""

import argparse
import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from pyro_mmt.data import load_dataset, long_tailed_split
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier
from pyro_mmt.evaluation.metrics import classification_metrics


def main(args):
    rng = np.random.default_rng(args.seed)
    split = long_tailed_split(load_dataset(args.dataset), rho=args.rho, beta=args.beta,
                              seed=args.seed)
    train, test = split.train, split.test
    if args.subset:
        train = train.subsample(args.subset, seed=args.seed)
        test = test.subsample(args.subset, seed=args.seed)
    X, y = train.to_numpy()  # modality -> array with NaN rows where missing; y = -1 unlabelled
    X_test, y_test = test.to_numpy()
    modalities = list(X)

    # hide one modality, chosen at random, in a share of the training rows (never two, so
    # every row keeps at least one modality when there are two)
    hide = rng.random(len(y)) < args.missing
    which = rng.integers(len(modalities), size=len(y))
    for j, m in enumerate(modalities):
        X[m][hide & (which == j)] = np.nan
    print(f"{args.dataset}: {len(y)} training rows ({int((y >= 0).sum())} labelled), "
          f"{int(hide.sum())} with one modality missing; {len(y_test)} test rows")

    clf = MultimodalSemiSupervisedClassifier(
        epochs=args.epochs, hidden=tuple(args.hidden), latent_dim=args.latent_dim,
        batch_size=args.batch_size, seed=args.seed, progress=not args.quiet,
    ).fit(X, y)

    rows = []
    for size in range(1, len(modalities) + 1):
        for kept in itertools.combinations(modalities, size):
            pred = clf.predict({m: X_test[m] for m in kept})  # the others absent
            metrics = classification_metrics(y_test, pred, split.train_class_counts)
            rows.append({"modalities": " + ".join(kept), "size": size, **metrics})

    # every test row misses one random modality (NaN rows), as in the training data
    X_holes = {m: v.copy() for m, v in X_test.items()}
    which = rng.integers(len(modalities), size=len(y_test))
    if len(modalities) > 1:
        for j, m in enumerate(modalities):
            X_holes[m][which == j] = np.nan
    metrics = classification_metrics(y_test, clf.predict(X_holes), split.train_class_counts)
    rows.append({"modalities": "one random modality missing per row", "size": np.nan, **metrics})

    table = pd.DataFrame(rows)
    shown = table[["modalities", "accuracy", "balanced_accuracy", "minority_recall"]]
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "metrics_by_modality_subset.csv", index=False)
        print(f"wrote {out / 'metrics_by_modality_subset.csv'}")
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--rho", type=float, default=10.0, help="imbalance ratio")
    parser.add_argument("--beta", type=float, default=0.2, help="labelled fraction")
    parser.add_argument("--missing", type=float, default=0.3,
                        help="share of training rows with one modality missing")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--hidden", type=int, nargs="+", default=[128])
    parser.add_argument("--subset", type=int, default=None,
                        help="use at most N training and N test rows (smoke runs)")
    parser.add_argument("--out", default=None, help="folder for the metrics CSV")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    main(parser.parse_args())
