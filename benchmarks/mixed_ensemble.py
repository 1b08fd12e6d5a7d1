"""Ensembles whose members differ in objective: some fits of the defaults (the γ-power
divergence) and some of a KL model, their q(y | x) averaged before the decision shift, measured
on the development seeds 5–9.

The estimator's ensemble averages ``n_init`` fits of one model that differ only in their seed
(member i uses ``seed + 1000 i``). Fits of the same model under different objectives
may err differently: on the reported grid the KL models lead on minority recall on mfeat and
Fashion-MNIST, where the γ-objective leads on others. This script fits every member once, on
its own, and saves its arrays, so that any mixture is scored without refitting::

    python -m benchmarks.mixed_ensemble --members t_gamma_single=5 gauss_kl_single=2 \\
        --mixtures t_gamma_single=5 t_gamma_single=3+gauss_kl_single=2 --jobs 2 --out runs/mix
    python -m benchmarks.select_on_dev_seeds runs/mix/results.csv \\
        --reference t_gamma_single=5

A mixture ``A=k+B=m`` averages members 0..k−1 of method A and 0..m−1 of method B (member i of
a method is its single-initialisation fit at ``seed + 1000 i``, so ``t_gamma_single=5`` is the
estimator's default ensemble) with equal weight per member, then predicts with the default
decision rule (δ = ``ModelConfig.decision_shift`` along the mixture's own mean prediction on
the unlabelled rows, :func:`pyro_mmt.decision.reference_log_shares`). Rows are named by their
mixture. Seeds 0–4 are refused unless ``--reported``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.decision_shift import _key, fit_arrays, save_arrays, score
from benchmarks.select_on_dev_seeds import add_split_arguments, check_splits
from pyro_mmt.config import ModelConfig
from pyro_mmt.data import load_dataset, long_tailed_split
from pyro_mmt.experiments.benchmark import grid_splits
from pyro_mmt.run_folder import write_atomic


def parse_counts(text: str) -> dict[str, int]:
    """``"t_gamma_single=3+gauss_kl_single=2"`` → ``{"t_gamma_single": 3, "gauss_kl_single":
    2}``; every method a single-initialisation deep method of the benchmark, every count a
    positive integer."""
    from pyro_mmt.experiments.benchmark import METHODS

    counts = {}
    for part in text.split("+"):
        name, sep, k = part.partition("=")
        if not sep or not (k.isascii() and k.isdigit()) or int(k) < 1:
            raise ValueError(f"mixture {text!r}: {part!r} is not METHOD=K with K a positive "
                             "integer")
        method = METHODS.get(name)
        if method is None or method.options is None or method.options.get("n_init") != 1:
            raise ValueError(f"mixture {text!r}: {name!r} is not a single-initialisation deep "
                             "method of the benchmark (e.g. t_gamma_single, gauss_kl_single)")
        if name in counts:
            raise ValueError(f"mixture {text!r}: {name!r} appears twice")
        counts[name] = int(k)
    return counts


def _path(out: Path, dataset, rho, beta, seed, method, member) -> Path:
    return out / "arrays" / f"{_key(dataset, rho, beta, seed, method)}_m{member}.npz"


def _options(method: str) -> str:
    """The options ``method`` fits with, as the text a member's file records."""
    from pyro_mmt.experiments.benchmark import METHODS

    return json.dumps({**METHODS[method].options, "decision_shift": 0.0}, sort_keys=True,
                      default=str)


def fit_member(dataset, rho, beta, seed, method, member, out: Path) -> Path:
    """Fit member ``member`` of ``method`` (its fit at ``seed + 1000 member``, predicting as
    trained) and save its test and unlabelled q(y | x) with the labels and the options it was
    fitted with. An existing file is kept when it records the method's options (or none, a
    file from before they were recorded) and refused with a ``ValueError`` when it records
    others (the method's definition changed since)."""
    import torch

    from pyro_mmt.experiments.benchmark import METHODS

    torch.set_num_threads(1)
    path = _path(out, dataset, rho, beta, seed, method, member)
    if path.exists():
        with np.load(path, allow_pickle=False) as saved:
            found = str(saved["options"]) if "options" in saved.files else None
        if found is not None and found != _options(method):
            raise ValueError(f"{path}: fitted with options {found}, but {method} now has "
                             f"{_options(method)}; remove it or use another --out")
        return path
    split = long_tailed_split(load_dataset(dataset), rho, beta, seed)
    options = {**METHODS[method].options, "decision_shift": 0.0}
    arrays = fit_arrays(split, options, seed + 1000 * member, dataset)
    save_arrays(path, {**arrays, "options": np.array(_options(method))})
    return path


def load_mixture(out: Path, dataset, rho, beta, seed, mixture: str) -> dict | None:
    """The arrays of ``mixture`` on one split: its members' q(y | x) on the test and unlabelled
    rows averaged with equal weight per member, with the split's labels and class counts (the
    keys of :func:`benchmarks.decision_shift.fit_arrays`), or None when a member's file is
    missing.

    :raises ValueError: members whose labels or class counts differ (files of other splits)."""
    counts = parse_counts(mixture)
    paths = [_path(out, dataset, rho, beta, seed, m, i)
             for m, k in counts.items() for i in range(k)]
    if not all(p.exists() for p in paths):
        return None
    loaded = []
    for path in paths:
        with np.load(path, allow_pickle=False) as a:
            loaded.append({k: a[k] for k in a.files})
    first = loaded[0]
    for path, a in zip(paths[1:], loaded[1:], strict=True):
        for key in ("test_y", "unlabelled_y", "labelled_counts", "train_counts"):
            if not np.array_equal(a[key], first[key]):
                raise ValueError(f"{path}: its {key} differs from {paths[0]}'s; the members of "
                                 "a mixture must be fits of the same split")
    return {**{key: first[key] for key in ("test_y", "unlabelled_y", "labelled_counts",
                                           "train_counts")},
            **{key: np.mean([a[key] for a in loaded], axis=0)
               for key in ("test_proba", "unlabelled_proba")}}


def score_mixture(out: Path, dataset, rho, beta, seed, mixture: str) -> dict | None:
    """The benchmark's metrics of ``mixture`` on one split at the default decision rule, or
    None when a member's file is missing.

    :raises ValueError: members whose labels or class counts differ (files of other splits)."""
    mean = load_mixture(out, dataset, rho, beta, seed, mixture)
    if mean is None:
        return None
    # the default rule only (δ along the mixture's own r), scored as every saved fit is
    [row] = score(mean, dataset, rho, beta, seed, mixture, shifts=(), shares=(),
                  predicted_shifts=(ModelConfig.decision_shift,))
    row["method"] = mixture
    return {k: v for k, v in row.items() if k not in ("base_method", "shift", "shares")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_arguments(parser)
    parser.add_argument("--members", nargs="+", default=["t_gamma_single=5",
                                                         "gauss_kl_single=2"],
                        metavar="METHOD=K", help="fit members 0..K−1 of each METHOD")
    parser.add_argument("--mixtures", nargs="+", metavar="A=K+B=M",
                        default=["t_gamma_single=5", "t_gamma_single=3+gauss_kl_single=2"],
                        help="score members 0..K−1 of A with 0..M−1 of B, averaged")
    parser.add_argument("--jobs", type=int, default=2, help="processes fitting members")
    parser.add_argument("--rescore", action="store_true", help="score the saved arrays only")
    parser.add_argument("--out", type=Path, required=True,
                        help="a folder for arrays/ (one file per member) and results.csv")
    args = parser.parse_args(argv)
    check_splits(parser, args)
    if args.jobs < 1:
        parser.error(f"--jobs: expected an integer >= 1, found {args.jobs}")

    def parsed(flag, spec):
        try:
            return parse_counts(spec)
        except ValueError as err:
            parser.error(f"{flag}: {err}")

    members = {}
    for spec in args.members:
        counts = parsed("--members", spec)
        if set(counts) & set(members):
            parser.error(f"--members: {sorted(set(counts) & set(members))} given twice")
        members |= counts
    mixtures = {spec: parsed("--mixtures", spec) for spec in args.mixtures}
    if not args.rescore:  # every mixture's members are fitted here
        short = [f"{spec} needs {k} of {m}, --members fits {members.get(m, 0)}"
                 for spec, counts in mixtures.items() for m, k in counts.items()
                 if k > members.get(m, 0)]
        if short:
            parser.error(f"--mixtures: {'; '.join(short)}")
    splits = grid_splits(args.datasets, seeds=args.seeds, progress=print)
    (args.out / "arrays").mkdir(parents=True, exist_ok=True)
    if not args.rescore:
        from joblib import Parallel, delayed
        from tqdm.auto import tqdm

        # member by member over every split, so that the first members of every method are
        # saved before any later one
        todo = [(*s, m, i) for i in range(max(members.values())) for m, k in members.items()
                if i < k for s in splits]
        parallel = Parallel(n_jobs=args.jobs, backend="loky", return_as="generator")
        with tqdm(total=len(todo), desc="members") as bar:
            for _ in parallel(delayed(fit_member)(*t, args.out) for t in todo):
                bar.update()
    rows, missing = [], []
    for s in splits:
        for mix in args.mixtures:
            row = score_mixture(args.out, *s, mix)
            if row is None:
                missing.append((*s, mix))
            else:
                rows.append(row)
    if missing:  # only with --rescore on a partial run: said, not dropped silently
        print(f"{len(missing)} (split, mixture) pairs lack a member's fit and are not scored, "
              f"e.g. {missing[0]}")
    if not rows:
        raise SystemExit(f"no mixture could be scored from {args.out / 'arrays'}")
    results = pd.DataFrame(rows)
    write_atomic(args.out / "results.csv", lambda tmp: results.to_csv(tmp, index=False))
    print(results.groupby("method")[["balanced_accuracy", "minority_recall"]].agg(
        ["mean", "count"]).round(3).to_string())


if __name__ == "__main__":
    main()
