"""Fashion-MNIST, the largest benchmark: 70 000 images as two modalities (top and bottom
14-row halves, 392 pixels each), 10 classes, imbalance ratio ρ = 100, 5% of the training rows
labelled (β = 0.05), as in the benchmark (docs/benchmark.md).

For each seed it draws the long-tailed split, trains each method of
``pyro_mmt.experiments.benchmark.METHODS`` (the t/γ model, the Gaussian/KL model at β = 1 and β = w0, the
classical baselines), and scores it on the class-balanced test set (1000 images per class).
Writes ``results.csv`` (one row per run), ``table.md`` (mean ± std over seeds) and
``recall_vs_frequency.png`` (the first seed) to ``--out``. Needs the Debian package
``dataset-fashion-mnist`` (or ``--path`` to a folder with the four ``*-ubyte.gz`` files).

    python examples/fashion_mnist.py --out runs/fmnist                     # seeds 0 1 2 (hours)
    python examples/fashion_mnist.py --seeds 0 --methods t_gamma gauss_kl_w0 lr
    python examples/fashion_mnist.py --subset 400 --rho 2 --epochs 1 --methods lr t_gamma \\
        --seeds 0 --out runs/fmnist-smoke                                    # a smoke run

``--subset N`` keeps N images (N/10 per class, at random) before splitting; at ρ = 100 the
tail class needs 5 training images, so N ≥ 7000 there (use a smaller ``--rho`` below that).
"""

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pyro_mmt.data import load_fmnist, long_tailed_split
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.evaluation.plots import plot_recall_vs_frequency
from pyro_mmt.experiments.benchmark import METHODS, results_table


def main(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; expected some of {sorted(METHODS)}")
    data = load_fmnist(args.path)
    if args.subset:
        data = stratified_subset(data, args.subset, seed=0)
    print(data)

    rows = []
    for i, seed in enumerate(args.seeds):
        split = long_tailed_split(data, args.rho, args.beta, seed)
        print(f"seed {seed}: {len(split.train)} training images "
              f"({int(split.labelled_class_counts.sum())} labelled), {len(split.test)} test; "
              f"training class counts {split.train_class_counts.tolist()}")
        y_test = split.test.y.numpy()
        predictions = {}
        for name in args.methods:
            tic = time.perf_counter()
            pred = METHODS[name].fit_predict(split, seed, "fmnist", args.epochs)
            seconds = time.perf_counter() - tic
            if pred is None:  # the method cannot run on this split (e.g. SMOTE, 1 label)
                print(f"  {name:<14} skipped")
                continue
            metrics = classification_metrics(y_test, pred, split.train_class_counts)
            rows.append({"dataset": "fmnist", "rho": args.rho, "beta": args.beta, "seed": seed,
                         "method": name, **metrics, "seconds": seconds})
            predictions[name] = pred
            print(f"  {name:<14} balanced accuracy {metrics['balanced_accuracy']:.3f}, "
                  f"minority recall {metrics['minority_recall']:.3f} ({seconds:.0f} s)")
        if i == 0 and predictions:
            plot_recall_vs_frequency(y_test, predictions, split.train_class_counts,
                                     split.test.class_names, out / "recall_vs_frequency.png")

    results = pd.DataFrame(rows)
    results.to_csv(out / "results.csv", index=False)
    table = results_table(results)
    (out / "table.md").write_text(table.to_markdown(index=False) + "\n")
    print(table.to_string(index=False))
    print(f"wrote {out / 'results.csv'}, {out / 'table.md'}, {out / 'recall_vs_frequency.png'}")
    return table


def stratified_subset(data, n, seed):
    """n // K random rows of each class (in the original order)."""
    rng = np.random.default_rng(seed)
    y = data.y.numpy()
    per_class = n // data.num_classes
    rows = [rng.choice(np.flatnonzero(y == k), per_class, replace=False)
            for k in range(data.num_classes)]
    return data[np.sort(np.concatenate(rows))]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+",
                        default=["t_gamma", "gauss_kl", "gauss_kl_w0", "lr", "labelspread",
                                 "selftrain", "smote_lr"],
                        help=f"some of {', '.join(METHODS)}")
    parser.add_argument("--rho", type=float, default=100.0, help="imbalance ratio (default 100)")
    parser.add_argument("--beta", type=float, default=0.05, help="labelled fraction")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the deep models' epochs (default 8 for fmnist)")
    parser.add_argument("--subset", type=int, default=None,
                        help="keep N images (N/10 per class) before splitting (smoke runs)")
    parser.add_argument("--path", default=None, help="folder with the Fashion-MNIST files")
    parser.add_argument("--out", default="runs/fmnist")
    main(parser.parse_args())
