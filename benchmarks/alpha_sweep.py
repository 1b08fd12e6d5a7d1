"""How the classification weight α was chosen: t_gamma on mfeat (ρ = 10, β = 0.05) for several α,
scored on the protocol's test split (there is no validation split; see docs/benchmark.md).

    python -m benchmarks.alpha_sweep            # about 4 minutes on one core
"""

import argparse
from pathlib import Path

import pandas as pd
import torch

from pyro_mmt.data import load_dataset, long_tailed_split
from pyro_mmt.estimator import IMBALANCE_OPTIONS, MultimodalSemiSupervisedClassifier
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.experiments.benchmark import TRAINING_EPOCHS


def main(args):
    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    rows = []
    for seed in args.seeds:
        split = long_tailed_split(data, args.rho, args.beta, seed)
        for alpha in args.alphas:
            clf = MultimodalSemiSupervisedClassifier(
                objective="gamma_power", nu=5.0, alpha=alpha, seed=seed,
                epochs=args.epochs or TRAINING_EPOCHS.get(args.dataset, 40), **IMBALANCE_OPTIONS,
            ).fit(split.train)
            metrics = classification_metrics(split.test.y.numpy(), clf.predict(split.test),
                                             split.train_class_counts)
            rows.append({"alpha": alpha, "seed": seed, **metrics.to_dict()})
            print(f"alpha={alpha:g} seed={seed}: bacc={metrics['balanced_accuracy']:.3f}",
                  flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby("alpha")[["balanced_accuracy", "minority_recall"]].agg(["mean", "min",
                                                                                    "max"])
    print(summary.round(3).to_string())
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    return table


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mfeat")
    parser.add_argument("--rho", type=float, default=10)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--alphas", type=float, nargs="+", default=[40, 200, 1000, 5000])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/alpha_sweep.csv")
    main(parser.parse_args())
