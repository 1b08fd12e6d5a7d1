"""The ``pyro-mmt`` command line: train, evaluate, predict, benchmark, diagnose, demo.

Run ``pyro-mmt COMMAND --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["main", "build_parser"]

RUN_FILES = {
    "config": "config.json",
    "estimator": "estimator.pt",
    "history": "history.csv",
    "metrics": "metrics.csv",
    "train": "train.npz",
    "test": "test.npz",
}


# --------------------------------------------------------------------------------- helpers
def _load_data(source: str):
    """A data set name (``pyro_mmt.data.DATASETS``) or the path of an ``.npz`` file."""
    from pyro_mmt.data import DATASETS, MultimodalDataset, load_dataset

    if source in DATASETS:
        return load_dataset(source), True
    path = Path(source)
    if path.suffix == ".npz":
        if not path.is_file():
            raise SystemExit(f"error: DATA: no file at {path}")
        return MultimodalDataset.from_npz(path), False
    raise SystemExit(
        f"error: DATA: expected a data set name ({', '.join(DATASETS)}) or an .npz path, "
        f"found {source!r}"
    )


def _n_threads(args) -> int | None:
    """The estimator's ``n_threads`` from the global ``--threads`` (0: torch's own choice)."""
    threads = getattr(args, "threads", 1)
    return int(threads) if threads else None


def _estimator_options(args) -> dict:
    from pyro_mmt.estimator import IMBALANCE_OPTIONS

    options = {
        "objective": args.objective,
        "gamma": args.gamma if args.gamma == "auto" else float(args.gamma),
        "nu": float(args.nu),
        "learn_nu": args.learn_nu,
        "class_prior": args.class_prior,
        "latent_dim": args.latent_dim,
        "hidden": tuple(args.hidden),
        "sigma": args.sigma,
        "alpha": args.alpha,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "num_particles": args.num_particles,
        "seed": args.seed,
        "device": args.device,
        "optimizer": args.optimizer,
        "distributed": args.distributed,
        "progress": not args.quiet,
        "n_threads": _n_threads(args),
    }
    if args.imbalance:
        options.update(IMBALANCE_OPTIONS)
    return options


def _write_plots(out: Path, estimator, test, train_class_counts, label: str) -> None:
    from pyro_mmt.evaluation.plots import (
        plot_confusion_matrix,
        plot_recall_vs_frequency,
        plot_training_curves,
    )

    plot_training_curves(estimator.history_, out / "training_curves.png")
    if test is not None:
        y_true = test.y.numpy()
        pred = estimator.predict(test)
        plot_recall_vs_frequency(y_true, {label: pred}, train_class_counts, test.class_names,
                                 out / "recall_vs_frequency.png")
        plot_confusion_matrix(y_true, pred, test.num_classes, test.class_names,
                              out / "confusion_matrix.png")


# -------------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from pyro_mmt.data import long_tailed_split
    from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier, save_estimator
    from pyro_mmt.evaluation.metrics import classification_metrics

    data, named = _load_data(args.data)
    # under torchrun --distributed every process trains; only rank 0 writes the run folder
    writer = not args.distributed or int(os.environ.get("RANK", "0")) == 0
    out = Path(args.out)
    test = None
    if named:
        split = long_tailed_split(data, args.rho, args.beta, args.seed)
        train, test = split.train, split.test
        train_counts = split.train_class_counts
    else:
        train = data
        train_counts = train.class_counts()
    options = _estimator_options(args)
    if writer:
        out.mkdir(parents=True, exist_ok=True)
        if test is not None:
            test.to_npz(out / RUN_FILES["test"])
        train.to_npz(out / RUN_FILES["train"])
        config = {"data": args.data, "rho": args.rho, "beta": args.beta, "seed": args.seed,
                  "train_class_counts": [int(c) for c in train_counts],
                  "estimator": {k: (list(v) if isinstance(v, tuple) else v)
                                for k, v in options.items()}}
        (out / RUN_FILES["config"]).write_text(json.dumps(config, indent=2, default=str))
    tic = time.perf_counter()
    est = MultimodalSemiSupervisedClassifier(**options).fit(train)
    seconds = time.perf_counter() - tic
    if not writer:
        return 0
    save_estimator(est, out / RUN_FILES["estimator"])
    est.history_.to_csv(out / RUN_FILES["history"], index=False)
    if test is not None:
        metrics = classification_metrics(test.y.numpy(), est.predict(test), train_counts)
        metrics.to_frame("value").to_csv(out / RUN_FILES["metrics"])
        print(metrics.round(4).to_string())
    _write_plots(out, est, test, train_counts, args.objective)
    print(f"trained in {seconds:.1f} s; run folder: {out}")
    return 0


def _load_run(args):
    """The run folder ``args.run_dir``, its config and its estimator (which predicts with this
    command's ``--threads``, not the training run's)."""
    from pyro_mmt.estimator import load_estimator

    run = Path(args.run_dir)
    if not (run / RUN_FILES["estimator"]).is_file():
        raise SystemExit(f"error: RUN_DIR: {run} holds no {RUN_FILES['estimator']} "
                         "(make one with `pyro-mmt train`)")
    config = json.loads((run / RUN_FILES["config"]).read_text())
    est = load_estimator(run / RUN_FILES["estimator"])
    est.set_params(n_threads=_n_threads(args))
    return run, config, est


def cmd_evaluate(args) -> int:
    from pyro_mmt.data import MultimodalDataset
    from pyro_mmt.evaluation.metrics import classification_metrics

    run, config, est = _load_run(args)
    path = Path(args.test) if args.test else run / RUN_FILES["test"]
    if not path.is_file():
        raise SystemExit(f"error: TEST: no file at {path}")
    test = MultimodalDataset.from_npz(path)
    labelled = test.labelled()
    if len(labelled) == 0:
        raise SystemExit(f"error: TEST: {path} has no labelled rows to evaluate on")
    metrics = classification_metrics(labelled.y.numpy(), est.predict(labelled),
                                     np.asarray(config["train_class_counts"]))
    print(metrics.round(4).to_string())
    if args.out:
        metrics.to_frame("value").to_csv(args.out)
    return 0


def cmd_predict(args) -> int:
    from pyro_mmt.data import MultimodalDataset

    _, _, est = _load_run(args)
    path = Path(args.data)
    if not path.is_file():
        raise SystemExit(f"error: DATA: no file at {path}")
    data = MultimodalDataset.from_npz(path)
    proba = est.predict_proba(data)
    frame = pd.DataFrame(proba, columns=[f"p_{c}" for c in range(proba.shape[1])])
    frame.insert(0, "predicted", proba.argmax(1))
    frame.to_csv(args.out, index_label="row")
    print(f"wrote {len(frame)} rows of class probabilities to {args.out}")
    return 0


def cmd_benchmark(args) -> int:
    from pyro_mmt.experiments.benchmark import results_table, run_benchmark

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    results = run_benchmark(args.datasets, args.methods, rhos=args.rho, betas=args.beta,
                            seeds=args.seeds, epochs=args.epochs)
    results.to_csv(out / "results.csv", index=False)
    table = results_table(results)
    table.to_csv(out / "table.csv", index=False)
    markdown = table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False)
    (out / "table.md").write_text(markdown + "\n")
    print(markdown)
    print(f"{len(results)} runs in {time.perf_counter() - tic:.0f} s; wrote {out}/results.csv, "
          "table.csv, table.md")
    return 0


def cmd_report(args) -> int:
    from pyro_mmt.experiments.benchmark import headline_table

    frames = []
    for path in args.results:
        if not Path(path).is_file():
            raise SystemExit(f"error: RESULTS: no file at {path}")
        frames.append(pd.read_csv(path))
    table = headline_table(pd.concat(frames, ignore_index=True), ours=args.ours,
                           others=args.others)
    print(table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False))
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


#: Modalities that are images, drawn as such by the diagnostics' reconstruction plot.
IMAGE_SHAPES = {
    "digits": {"top": (4, 8), "bottom": (4, 8)},
    "mfeat": {"pix": (16, 15)},
    "fmnist": {"top": (14, 28), "bottom": (14, 28)},
}


def cmd_diagnose(args) -> int:
    from pyro_mmt.data import MultimodalDataset
    from pyro_mmt.evaluation.diagnose import diagnose

    run, config, est = _load_run(args)
    part = args.split or ("test" if (run / RUN_FILES["test"]).is_file() else "train")
    path = run / RUN_FILES[part]
    if not path.is_file():
        raise SystemExit(f"error: --split: {path} does not exist")
    data = MultimodalDataset.from_npz(path)
    if est.standardiser_ is not None:
        data = est.standardiser_.transform(data)
    out = Path(args.out) if args.out else run / "diagnostics"
    # the fitted MultimodalM2 holds its guide; held-out rows: hide the labels, so the weights
    # estimate log p(x) (labels kept for the calibration check)
    paths, summary = diagnose(
        est.model_, None, data, out, num_samples=args.num_samples, seed=args.seed,
        num_predictive=args.num_predictive, condition_on_labels=(part == "train"),
        image_shapes=IMAGE_SHAPES.get(config.get("data")),
        attrs={"run_dir": str(run), "split": part},
    )
    print(summary.to_string())
    print(f"wrote {len(paths)} files to {out}: " + ", ".join(sorted(p.name for p in paths.values())))
    return 0


def cmd_demo(args) -> int:
    from pyro_mmt.experiments.demo import run_demo

    run_demo(out=Path(args.out), epochs=args.epochs, seed=args.seed, dataset=args.dataset,
             rho=args.rho, beta=args.beta, methods=args.methods)
    return 0


# ---------------------------------------------------------------------------------- parser
def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and training")
    g.add_argument("--objective", choices=["gamma_power", "kl"], default="gamma_power",
                   help="γ-power divergence (default) or the M2 ELBO (KL)")
    g.add_argument("--gamma", default="auto", help="γ of the γ-power objective (default auto)")
    g.add_argument("--nu", type=float, default=5.0,
                   help="degrees of freedom ν > 2; inf = Gaussian (the start with --learn-nu)")
    g.add_argument("--learn-nu", action="store_true",
                   help="learn ν with the other parameters (from the --nu value)")
    g.add_argument("--class-prior", choices=["uniform", "learned"], default="uniform",
                   help="π of p(y): uniform (default) or estimated from the unlabelled rows")
    g.add_argument("--latent-dim", type=int, default=16)
    g.add_argument("--hidden", type=int, nargs="+", default=[128], help="hidden layer sizes")
    g.add_argument("--sigma", type=float, default=1.0, help="decoder scale σ (standardised data)")
    g.add_argument("--alpha", type=float, default=1000.0,
                   help="weight of the classification term per labelled datum")
    g.add_argument("--imbalance", action=argparse.BooleanOptionalAction, default=True,
                   help="class-balanced, logit-adjusted classification term and prior shift "
                        "in the enumeration (default on)")
    g.add_argument("--epochs", type=int, default=40)
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--num-particles", type=int, default=1)
    g.add_argument("--device", default="cpu")
    g.add_argument("--optimizer", choices=["clipped_adam", "fused_adam"], default="clipped_adam",
                   help="Pyro's ClippedAdam (default) or one fused Adam over all parameters "
                        "(faster; docs/performance.md)")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel over torchrun's processes (gloo on CPU, nccl on GPUs); "
                        "--batch-size is the global batch. Launch with: torchrun "
                        "--nproc_per_node=P -m pyro_mmt.cli train ... --distributed")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-mmt``."""
    parser = argparse.ArgumentParser(
        prog="pyro-mmt",
        description="Semi-supervised classification of class-imbalanced multimodal data with a "
                    "Student-t deep generative model and the γ-power divergence (Pyro).",
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: the default networks are small, and on a "
             "2-core machine one thread is faster than two, far faster when the other core is "
             "busy; 0 keeps torch's own choice)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train on a data set name or an .npz file; writes a run folder",
                       description="Train the model. With a data set name the benchmark's "
                       "long-tailed split (docs/benchmark.md; --rho, --beta, --seed) is made and "
                       "the test part is scored; with an "
                       ".npz (arrays x_<modality> and y, -1 = unlabelled) every row is used.")
    p.add_argument("data", help="digits | breast | mfeat | pdspeech | fmnist | PATH.npz")
    p.add_argument("--rho", type=float, default=10.0, help="imbalance ratio of the split")
    p.add_argument("--beta", type=float, default=0.05, help="labelled fraction per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/latest", help="run folder (default runs/latest)")
    _add_model_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a run on a labelled .npz (default: its test split)")
    p.add_argument("run_dir")
    p.add_argument("test", nargs="?", help="labelled .npz (default RUN_DIR/test.npz)")
    p.add_argument("--out", help="write the metrics to this CSV")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities for an .npz, written as CSV")
    p.add_argument("run_dir")
    p.add_argument("data", help=".npz with arrays x_<modality> (NaN rows = missing)")
    p.add_argument("--out", default="predictions.csv")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("benchmark", help="the benchmark's grid (docs/benchmark.md): results "
                       "table with mean ± std")
    p.add_argument("--datasets", nargs="+", default=["digits", "breast", "mfeat", "pdspeech"])
    p.add_argument("--methods", nargs="+",
                   default=["t_gamma", "gauss_kl", "lr", "labelspread", "selftrain", "smote_lr"])
    p.add_argument("--rho", type=float, nargs="+", help="override the grid's ρ values")
    p.add_argument("--beta", type=float, nargs="+", help="override the grid's β values")
    p.add_argument("--seeds", type=int, nargs="+", help="override the grid's seeds")
    p.add_argument("--epochs", type=int, help="override the deep models' epochs (smoke runs)")
    p.add_argument("--out", default="runs/benchmark")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("report", help="headline table from benchmark results.csv files: ours "
                       "against the best classical baseline (balanced accuracy / minority recall)")
    p.add_argument("results", nargs="+", help="results.csv files written by `benchmark`")
    p.add_argument("--ours", default="t_gamma")
    p.add_argument("--others", nargs="*", default=["gauss_kl"],
                   help="other deep methods to show beside ours")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("diagnose", help="ArviZ diagnostics of a run: netCDF, summary, plots")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["test", "train"],
                   help="which part of the run to diagnose (default: test when the run has one)")
    p.add_argument("--num-samples", type=int, default=100, help="draws per datum")
    p.add_argument("--num-predictive", type=int, help="posterior predictive draws kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default RUN_DIR/diagnostics)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("demo", help="the README's demo: mfeat, ρ = 10, β = 0.05",
                       description="Train the t/γ model, the Gaussian model and classical "
                       "baselines on one long-tailed split, print the metrics table and write "
                       "the plots (recall against class frequency, confusion matrix).")
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="mfeat", help="data set name (default mfeat)")
    p.add_argument("--rho", type=float, default=10.0, help="imbalance ratio (default 10)")
    p.add_argument("--beta", type=float, default=0.05, help="labelled fraction (default 0.05)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods of pyro_mmt.experiments.benchmark.METHODS (default: t_gamma gauss_kl_w0 "
                        "selftrain lr)")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyro-mmt`` console script."""
    args = build_parser().parse_args(argv)
    if args.threads < 0:
        raise SystemExit(f"error: --threads: expected >= 0, found {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if getattr(args, "nu", None) is not None and not (math.isinf(args.nu) or args.nu > 2):
        raise SystemExit(f"error: --nu: expected nu > 2 or inf, found {args.nu}")
    if getattr(args, "learn_nu", False) and math.isinf(args.nu):
        raise SystemExit("error: --learn-nu: the Gaussian model (--nu inf) has no ν to learn; "
                         "pass a finite starting --nu > 2")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
