"""Posterior diagnostics of a fitted model with ArviZ (docs/diagnostics.md).

Trains the Student-t model on a long-tailed split of a benchmark data set (default: mfeat,
ρ = 10, β = 0.05: 5% of the training rows labelled), then draws from the guide for the
held-out test data with their labels hidden, and writes to ``--out``:

- ``inference_data.nc``: the ArviZ InferenceData (class shares, per-datum z and y, posterior
  predictive x per modality and observed data in the data's units, importance weights and
  log-densities, constant data, hyperparameters);
- ``summary.csv``: mean Pareto k̂, share of data with k̂ > 0.7, ESS, IWAE log p(x), ECE, ...;
- ``per_datum.csv``, ``reliability.csv``, ``entropy_by_class.csv``;
- ``ppc.png``, ``khat.png``, ``latent_pca.png``, ``reconstructions.png``, ``calibration.png``.

    python examples/diagnostics.py --out runs/diagnostics
    python examples/diagnostics.py --nu inf --out runs/diagnostics-gaussian   # the Gaussian model
    python examples/diagnostics.py --epochs 1 --num-samples 30 --max-rows 50  # a smoke test

Compare ``iwae_log_px_mean`` between runs (same data, split and seed) to compare models, or
the runs' InferenceData with ``az.compare`` and ``diagnostics.elpd`` (docs/diagnostics.md).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pyro_mmt.data import load_dataset, long_tailed_split
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier
from pyro_mmt.evaluation.diagnose import diagnose

#: modalities of the bundled data sets that are images (rows, columns), row-major
IMAGE_SHAPES = {"mfeat": {"pix": (16, 15)}, "digits": {"top": (4, 8), "bottom": (4, 8)}}


def main(args):
    dataset = load_dataset(args.dataset)
    split = long_tailed_split(dataset, args.rho, args.beta, seed=args.seed)
    estimator = MultimodalSemiSupervisedClassifier(
        objective=args.objective, nu=args.nu, latent_dim=args.latent_dim,
        hidden=tuple(args.hidden), epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, progress=args.progress,
    ).fit(split.train)

    data = split.test if args.data == "test" else split.train
    if args.max_rows and len(data) > args.max_rows:
        rows = np.random.default_rng(args.seed).choice(len(data), args.max_rows, replace=False)
        data = data[np.sort(rows)]

    run = {
        "dataset": args.dataset, "rho": args.rho, "beta": args.beta, "split": args.data,
        "epochs": args.epochs, "hidden": json.dumps(list(args.hidden)),
        "objective": args.objective, "lr": args.lr,
    }
    report = diagnose(
        estimator, dataset=data, out_dir=args.out,  # standardised as predict does
        num_samples=args.num_samples, seed=args.seed, num_predictive=args.num_predictive,
        # held-out labels are hidden from the model: log weights estimate log p(x)
        condition_on_labels=args.data == "train",
        attrs=run, image_shapes=IMAGE_SHAPES.get(args.dataset),
    )
    print(report.summary.to_string(float_format=lambda v: f"{v:.4g}"))
    print("\nwrote:")
    for name, path in report.paths.items():
        print(f"  {name:16s} {path}")
    return report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mfeat")
    parser.add_argument("--rho", type=float, default=10.0, help="imbalance ratio ρ")
    parser.add_argument("--beta", type=float, default=0.05, help="labelled fraction β")
    parser.add_argument("--data", choices=["test", "train"], default="test",
                        help="data to diagnose: held-out test rows (labels hidden) or the "
                             "training rows (labelled rows conditioned on)")
    parser.add_argument("--objective", choices=["gamma_power", "kl"], default="gamma_power")
    parser.add_argument("--nu", type=float, default=5.0, help="ν; 'inf' = the Gaussian model")
    parser.add_argument("--latent-dim", type=int, default=8)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-samples", type=int, default=100, help="draws per datum")
    parser.add_argument("--num-predictive", type=int, default=20,
                        help="posterior predictive draws stored")
    parser.add_argument("--max-rows", type=int, default=0,
                        help="diagnose a random subset of this many rows (0 = all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show a progress bar")
    parser.add_argument("--out", type=Path, default=Path("runs/diagnostics"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
