"""How much one fit swings with its own seed on a FIXED split (networks' initialisation and the
order of the mini-batches), for the estimator's defaults and the previous release's setting.

The split (its labelled, unlabelled and test rows) is drawn once with ``--split-seed``; each
configuration is then fitted with the estimator seeds ``--fit-seeds`` and scored on the test
rows. Nothing is chosen here: the spread is the measurement (docs/benchmark.md reports it).

    python -m benchmarks.fit_stability --out benchmarks/results/fit_stability.csv
    python -m benchmarks.fit_stability --configs default --fit-seeds 0 1 --epochs 2 \\
        --out /tmp/stability.csv                                                    # smoke
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from pyro_mmt.data import load_dataset, long_tailed_split
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.experiments.benchmark import METHODS
from pyro_mmt.run_folder import write_atomic

#: The configurations compared: name -> the benchmark method that fits it (the method's
#: ``fit_predict(split, seed, ...)`` takes the fit seed apart from the split). The saved
#: ``benchmarks/results/fit_stability*.csv`` were measured when the default was one
#: initialisation with the joint objective, predicting as trained (δ = 0): their "default"
#: corresponds to today's "single", "default_ens3" to today's "default_ens3", "default_ens5"
#: to today's "default" (five initialisations), "default_warmup" to "single_warmup" and
#: "default_warmup_ens3" to "default_warmup" (same number of initialisations and warm-up; the
#: objective and δ were that release's).
CONFIGS = {"single": "t_gamma_single", "default": "t_gamma", "default_ens3": "t_gamma_ens3",
           "single_warmup": "t_gamma_warmup", "v1": "t_gamma_v1",
           "default_warmup": "t_gamma_warmup_ens3"}


def fit_once(dataset: str, rho: float, beta: float, split_seed: int, config: str, seed: int,
             epochs: int | None) -> dict:
    import torch

    torch.set_num_threads(1)
    split = long_tailed_split(load_dataset(dataset), rho, beta, split_seed)
    tic = time.perf_counter()
    pred = METHODS[CONFIGS[config]].fit_predict(split, seed, dataset, epochs)
    metrics = classification_metrics(split.test.y.numpy(), pred, split.train_class_counts)
    return {"dataset": dataset, "rho": rho, "beta": beta, "split_seed": split_seed,
            "config": config, "fit_seed": seed, **metrics.to_dict(),
            "seconds": time.perf_counter() - tic}


def main(args) -> pd.DataFrame:
    unknown = sorted(set(args.configs) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"error: --configs: unknown {unknown}; known: {sorted(CONFIGS)}")
    from joblib import Parallel, delayed

    tasks = [(args.dataset, args.rho, args.beta, args.split_seed, c, s, args.epochs)
             for c in args.configs for s in args.fit_seeds]
    rows = Parallel(n_jobs=args.jobs)(delayed(fit_once)(*t) for t in tasks)
    results = pd.DataFrame(rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: results.to_csv(tmp, index=False))
    summary = results.groupby("config", sort=False)[["balanced_accuracy", "minority_recall"]]
    table = summary.agg(["mean", "std", "min", "max"]).round(3)  # std: ddof = 1
    print(f"{args.dataset} rho={args.rho} beta={args.beta} split seed {args.split_seed}, "
          f"fit seeds {args.fit_seeds}:")
    print(table.to_string())
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="mfeat")
    parser.add_argument("--rho", type=float, default=10.0)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--fit-seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    parser.add_argument("--epochs", type=int, help="override the epochs (smoke runs)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/fit_stability.csv")
    main(parser.parse_args())
