"""Where to put the boundary between head and tail classes at prediction: the decision shift
δ of the fitted q(y | x), measured on the development seeds 5–9.

The classifier is trained class-balanced (logit adjustment τ = 1); how far its argmax leans
to the tail is then a property of the fit (the KL models lean further than the γ-objective's
sharper fits). This script fits each method once per split and scores its test predictions
at every shift of a grid along two references,

    argmax_y  log q(y | x) − δ log π̂_y        (π̂ the labelled class frequencies: <name>@<δ>)
    argmax_y  log q(y | x) − δ log r_y        (r the fit's mean prediction on its unlabelled
                                               rows, one pseudo-count per class: <name>@pred<δ>),

so the whole curve costs one fit. It also scores the data-adaptive choice of δ that
``decision_shift="auto"`` makes along π̂ (:func:`pyro_mmt.decision.choose_decision_shift`) on
the fit's own unlabelled training rows, at several λ = ``decision_shares`` (the methods
``<name>@auto<λ>``); it uses no label the estimator would not have::

    python -m benchmarks.decision_shift --datasets digits breast mfeat pdspeech pbc \\
        --seeds 5 6 7 8 9 --methods t_gamma gauss_kl t_kl --jobs 2 --out runs/shift
    python -m benchmarks.select_on_dev_seeds runs/shift/results.csv --reference t_gamma

Each (split, method) keeps its arrays in ``<out>/arrays/`` (test and unlabelled q(y | x), the
true labels, the class counts), so a new rule is scored again without refitting
(``--rescore``); ``--matched`` adds the comparison at a matched tail lean
(:func:`matched_lean`). Rows of ``results.csv`` are the benchmark's, the method named by its
rule; an ensemble whose first members are saved (``t_gamma`` after ``t_gamma_ens3``) fits
only the members it lacks (:func:`fit_one`; each file records its number of members, and a
file that disagrees with its method is refused); seeds 0–4 are refused unless ``--reported``
(to report a rule already chosen on the development seeds, never to choose one). The fits
predict with δ = 0 (the decision shift changes no training) and the shifts are applied here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.select_on_dev_seeds import add_split_arguments, check_splits
from pyro_mmt.config import ModelConfig, TrainingConfig
from pyro_mmt.data import load_dataset, long_tailed_split
from pyro_mmt.decision import choose_decision_shift, reference_log_shares
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.experiments.benchmark import grid_splits, pseudo_label_summary
from pyro_mmt.run_folder import write_atomic

#: The fixed shifts scored for every fit along the labelled class frequencies π̂
#: (``<method>@<δ>``, ``decision_reference="labelled"``).
SHIFTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)

#: The fixed shifts scored for every fit along its predicted reference shares r
#: (``<method>@pred<δ>``, ``decision_reference="predicted"``, the default).
PREDICTED_SHIFTS = (0.5, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5)

#: The λ of ``decision_shares`` scored for the data-adaptive shift.
SHARES = (0.25, 0.4, 0.5, 0.6, 0.75)


#: The settings of the decision rule: methods that differ only in them share one fit.
RULE_SETTINGS = ("decision_shift", "decision_reference")


def _key(dataset, rho, beta, seed, method) -> str:
    return f"{dataset}_rho{rho:g}_beta{beta:g}_seed{seed}_{method}"


def _n_init(method) -> int:
    return method.options.get("n_init", TrainingConfig.n_init)


def _fit(method, ignore=RULE_SETTINGS):
    """What a method fits: its view and options, the number of initialisations made explicit,
    less the settings of ``ignore``."""
    options = {**method.options, "n_init": _n_init(method)}
    return method.view, {k: v for k, v in options.items() if k not in ignore}


def fewer_members(method: str) -> tuple[list[str], int] | None:
    """The registered methods whose fit is ``method``'s with fewer initialisations (the most
    of them; methods differing only in the decision rule share a fit), and their number:
    ``(["t_gamma_ens3"], 3)`` for ``t_gamma``; None if there are none."""
    from pyro_mmt.experiments.benchmark import METHODS

    def fit(m):
        return _fit(m, ignore=(*RULE_SETTINGS, "n_init"))

    target = METHODS[method]
    if target.options is None:
        return None
    found = {name: _n_init(m) for name, m in METHODS.items()
             if m.options is not None and fit(m) == fit(target) and _n_init(m) < _n_init(target)}
    if not found:
        return None
    n = max(found.values())
    return sorted(name for name, k in found.items() if k == n), n


def fit_one(dataset, rho, beta, seed, method, out: Path) -> Path:
    """Fit ``method`` on the split and save its arrays (once: an existing file is kept). An
    ensemble whose first members are saved as another method's fit (:func:`fewer_members`:
    ``t_gamma_ens3``'s three for ``t_gamma``) fits only the members it lacks. The file records
    its number of members (``n_init``); a saved file with another number than its method's is
    refused (files from before that record have none and are trusted)."""
    import torch

    from pyro_mmt.experiments.benchmark import METHODS

    torch.set_num_threads(1)
    path = out / "arrays" / f"{_key(dataset, rho, beta, seed, method)}.npz"
    total = _n_init(METHODS[method])
    if path.exists():
        _check_members(path, total)
        return path
    split = long_tailed_split(load_dataset(dataset), rho, beta, seed)
    options = {**METHODS[method].options, "decision_shift": 0.0}
    names, kept = fewer_members(method) or ([], 0)
    saved = [p for p in (out / "arrays" / f"{_key(dataset, rho, beta, seed, name)}.npz"
                         for name in names) if p.exists()]
    if saved:
        _check_members(saved[0], kept)
        # member i of an ensemble is the fit with seed + 1000 i and nothing else depends on the
        # seed, so the members a saved ensemble already has are not fitted again
        options["n_init"] = total - kept
    else:
        kept = 0
    arrays = fit_arrays(split, options, seed + 1000 * kept, dataset)
    if kept:  # q̄ is the members' mean: weigh the saved mean by its members
        with np.load(saved[0], allow_pickle=False) as first:
            for key in ("test_proba", "unlabelled_proba"):
                arrays[key] = (kept * first[key] + (total - kept) * arrays[key]) / total
    save_arrays(path, {**arrays, "n_init": np.int64(total)})
    return path


def fit_arrays(split, options: dict, fit_seed: int, dataset: str) -> dict:
    """Fit the estimator with ``options`` on ``split`` at ``fit_seed`` and return what scoring
    needs: q(y | x) as trained (the options' ``decision_shift`` should be 0; the shifts are
    applied when scoring) on the test rows and on the unlabelled training rows, the true
    labels of both and the labelled and training class counts."""
    from pyro_mmt.experiments.benchmark import estimator_fit_predict

    pred = estimator_fit_predict(options)(split, fit_seed, dataset)
    unlabelled = ~split.train.is_labelled.numpy()
    return {"test_proba": pred.estimates["test_proba"], "test_y": split.test.y.numpy(),
            "unlabelled_proba": pred.estimates.get("unlabelled_proba",
                                                   np.zeros((0, split.train.num_classes))),
            "unlabelled_y": split.train_labels[unlabelled],
            "labelled_counts": split.labelled_class_counts,
            "train_counts": split.train_class_counts}


def save_arrays(path: Path, arrays: dict) -> None:
    """Write ``arrays`` to ``path`` (``.npz``) atomically."""
    def save(tmp: Path) -> None:
        with tmp.open("wb") as f:  # a file object: np.savez adds no ".npz" to the name
            np.savez(f, **arrays)

    write_atomic(path, save)


def _check_members(path: Path, n_init: int) -> None:
    """Refuse a saved fit whose recorded number of members is not ``n_init``."""
    with np.load(path, allow_pickle=False) as saved:
        found = int(saved["n_init"]) if "n_init" in saved.files else None
    if found is not None and found != n_init:
        raise ValueError(f"{path}: a fit of {found} members, expected {n_init}; remove it or "
                         "use another --out")


def score(path, dataset, rho, beta, seed, method, shifts=SHIFTS,
          shares=SHARES, predicted_shifts=PREDICTED_SHIFTS,
          pseudo_counts=()) -> list[dict]:
    """The benchmark's metrics at every fixed shift along π̂ (``<method>@<δ>``) and along the
    fit's mean prediction on its unlabelled rows (``<method>@pred<δ>``, the rule of
    ``decision_reference="predicted"``: :func:`pyro_mmt.decision.reference_log_shares`), and at the
    shift ``decision_shift="auto"`` chooses along π̂ at each λ of ``shares``
    (``<method>@auto<λ>``). Each c of ``pseudo_counts`` adds the default δ along r computed
    with c pseudo-counts per class in place of the library's one (``<method>@pred<δ>c<c>``).
    Every row also has the ``pseudo_*`` columns of
    :func:`~pyro_mmt.experiments.benchmark.pseudo_label_summary`: the fit's q(y | x) as trained
    on its unlabelled rows (the same for every rule of a fit). ``path`` is a saved fit's
    ``.npz``, or its arrays (:func:`fit_arrays`' keys) themselves."""
    a = path if isinstance(path, dict) else np.load(path, allow_pickle=False)
    log_freq = np.log(a["labelled_counts"] / a["labelled_counts"].sum())
    log_q = np.log(np.clip(a["test_proba"], 1e-300, None))
    log_u = np.log(np.clip(a["unlabelled_proba"], 1e-300, None))
    log_ref = reference_log_shares(log_u).numpy()
    rules = [(f"{method}@{d:g}", d, np.nan, log_freq) for d in shifts]
    rules += [(f"{method}@pred{d:g}", d, np.nan, log_ref) for d in predicted_shifts]
    delta = ModelConfig.decision_shift
    rules += [(f"{method}@pred{delta:g}c{c:g}", delta, np.nan,
               reference_log_shares(log_u, pseudo_count=c).numpy()) for c in pseudo_counts]
    rules += [(f"{method}@auto{lam:g}", choose_decision_shift(log_u, log_freq, shares=lam), lam,
               log_freq) for lam in shares]
    pseudo = pseudo_label_summary(a["unlabelled_proba"], a["unlabelled_y"], a["train_counts"])
    rows = []
    for name, delta, lam, direction in rules:
        pred = (log_q - delta * direction).argmax(1)
        row = {"dataset": dataset, "rho": rho, "beta": beta, "seed": seed,
               "unlabelled": "same", "method": name, "base_method": method,
               "shift": delta, "shares": lam, "n_labelled": int(a["labelled_counts"].sum()),
               "num_classes": int(log_q.shape[1])}
        row.update(classification_metrics(a["test_y"], pred, a["train_counts"]))
        row.update(pseudo)
        rows.append(row)
    return rows


def rule_name(base: str, options) -> str:
    """The name of ``score``'s rows for a method with ``options`` scored on the fits of
    ``base``: ``<base>@<δ>`` along π̂ (and for δ = 0), ``<base>@pred<δ>`` along the predicted
    shares, ``<base>@auto<λ>`` for ``decision_shift="auto"`` along π̂ (the data-adaptive shift
    along the predicted shares is not scored here: ``<base>@auto-pred``, a name no row has)."""
    delta = options.get("decision_shift", ModelConfig.decision_shift)
    reference = options.get("decision_reference", ModelConfig.decision_reference)
    if delta == "auto":
        shares = options.get("decision_shares", ModelConfig.decision_shares)
        return f"{base}@auto{shares:g}" if reference == "labelled" else f"{base}@auto-pred"
    return (f"{base}@{delta:g}" if reference == "labelled" or delta == 0
            else f"{base}@pred{delta:g}")


def benchmark_rows(results: pd.DataFrame) -> pd.DataFrame:
    """Every benchmark method whose fit is one of ``results``' (its options differ from the
    fitted method's only in the decision rule, :data:`RULE_SETTINGS`): the rows of its rule,
    renamed as the benchmark names the method (``t_gamma`` at the default rule,
    ``t_gamma_shift0`` at δ = 0, ``t_gamma_labelled`` along π̂, ...), so that ``pyro-mmt
    report`` reads them with the baselines' rows."""
    from pyro_mmt.experiments.benchmark import METHODS

    names = {}
    for base in results["base_method"].unique():
        names |= {rule_name(base, method.options): name for name, method in METHODS.items()
                  if method.options is not None and _fit(method) == _fit(METHODS[base])}
    rows = results[results["method"].isin(names)].copy()
    rows["method"] = rows["method"].map(names)
    return rows.drop(columns=["base_method", "shift", "shares"])


def other_rows(paths, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the ``results.csv`` files at ``paths`` for methods that ``rows`` lacks, on the
    splits (data set, ρ, β, seed) of ``rows``: the baselines beside the rescored deep rows."""
    split = ["dataset", "rho", "beta", "seed"]
    others = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    others = others[~others["method"].isin(set(rows["method"]))]
    return others.merge(rows[split].drop_duplicates(), on=split)


#: The shifts searched when matching the tail lean (``--matched``).
MATCH_GRID = tuple(round(-2.0 + 0.05 * i, 2) for i in range(121))


def matched_lean(out: Path, todo, reference: str = "t_gamma",
                 delta: float = 0.5) -> pd.DataFrame:
    """An analysis, not a choice: every other model's fit shifted along π̂ to the δ at which it
    predicts the minority classes (the rarest third by labelled count) for the unlabelled
    training rows as often as ``reference`` does at ``delta`` along π̂ (by default the
    ensemble's previous default, δ = 0.5; no label used), and scored on the test set.
    One row per (split, model): the δ and the benchmark's metrics."""
    from pyro_mmt.evaluation.metrics import minority_classes

    def arrays(task, method):
        path = out / "arrays" / f"{_key(*task[:4], method)}.npz"
        return np.load(path, allow_pickle=False) if path.exists() else None

    rows = []
    for task in {t[:4] for t in todo}:
        ref = arrays(task, reference)
        if ref is None:
            continue
        counts = ref["labelled_counts"]
        log_freq = np.log(counts / counts.sum())
        minority = minority_classes(counts)

        def tail_share(a, d, log_freq=log_freq, minority=minority):
            log_u = np.log(np.clip(a["unlabelled_proba"], 1e-300, None))
            return np.isin((log_u - d * log_freq).argmax(1), minority).mean()

        target = tail_share(ref, delta)
        for method in sorted({t[4] for t in todo}):
            a = arrays(task, method)
            if a is None:
                continue
            d = delta if method == reference else MATCH_GRID[int(np.argmin(
                [abs(tail_share(a, g) - target) for g in MATCH_GRID]))]
            log_q = np.log(np.clip(a["test_proba"], 1e-300, None))
            row = dict(zip(("dataset", "rho", "beta", "seed"), task, strict=True))
            row.update(method=method, shift=d, **classification_metrics(
                a["test_y"], (log_q - d * log_freq).argmax(1), a["train_counts"]))
            rows.append(row)
    return pd.DataFrame(rows)


def tasks(datasets, seeds, methods, rhos=None, betas=None):
    """(data set, ρ, β, seed, method) for every split of the grid and method."""
    splits = grid_splits(datasets, rhos=rhos, betas=betas, seeds=seeds, progress=print)
    return [(*split, m) for split in splits
            for m in methods]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_split_arguments(parser)
    parser.add_argument("--methods", nargs="+", default=["t_gamma", "gauss_kl", "t_kl"])
    parser.add_argument("--rhos", nargs="+", type=float)
    parser.add_argument("--betas", nargs="+", type=float)
    parser.add_argument("--pseudo-counts", nargs="+", type=float, default=[], metavar="C",
                        help="also score the default δ along r with C pseudo-counts per class "
                        "(<method>@pred<δ>c<C>; the library uses one)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rescore", action="store_true", help="score the saved arrays only")
    parser.add_argument("--matched", action="store_true",
                        help="also write matched.csv: the other models shifted to the tail lean "
                        "of t_gamma at the default δ on the unlabelled rows (an analysis)")
    parser.add_argument("--benchmark-rows", action="store_true",
                        help="also write benchmark_rows.csv: the rows at the method's δ and at "
                        "δ = 0 under the benchmark's method names (<model>, <model>_shift0), "
                        "for pyro-mmt report")
    parser.add_argument("--with-rows", nargs="+", type=Path, default=[], metavar="CSV",
                        help="with --benchmark-rows: add the rows of these results.csv (e.g. the "
                        "baselines of a pyro-mmt benchmark run on the same splits) for methods "
                        "not scored here, on the splits scored here")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    check_splits(parser, args)
    from pyro_mmt.experiments.benchmark import METHODS

    not_deep = [m for m in args.methods if m not in METHODS or METHODS[m].options is None]
    if not_deep:
        parser.error(f"--methods: {not_deep} are not deep methods of the benchmark; expected "
                     f"some of {sorted(m for m, v in METHODS.items() if v.options is not None)}")
    (args.out / "arrays").mkdir(parents=True, exist_ok=True)
    todo = tasks(args.datasets, args.seeds, args.methods, args.rhos, args.betas)
    if not args.rescore:
        from joblib import Parallel, delayed
        from tqdm.auto import tqdm

        # in waves by number of members, so that an ensemble finds its first members saved
        parallel = Parallel(n_jobs=args.jobs, backend="loky", return_as="generator")
        with tqdm(total=len(todo), desc="fits") as bar:
            for n in sorted({_n_init(METHODS[t[4]]) for t in todo}):
                wave = [t for t in todo if _n_init(METHODS[t[4]]) == n]
                for _ in parallel(delayed(fit_one)(*t, args.out) for t in wave):
                    bar.update()
    rows = []
    for t in todo:
        path = args.out / "arrays" / f"{_key(*t)}.npz"
        if path.exists():
            rows += score(path, *t, pseudo_counts=args.pseudo_counts)
    results = pd.DataFrame(rows)
    write_atomic(args.out / "results.csv", lambda tmp: results.to_csv(tmp, index=False))
    summary = results.groupby(["base_method", "method"])[
        ["balanced_accuracy", "minority_recall"]].mean()
    summary["criterion"] = summary.mean(axis=1)
    print(summary.round(3).to_string())
    if args.benchmark_rows:
        rows = benchmark_rows(results)
        if args.with_rows:
            rows = pd.concat([rows, other_rows(args.with_rows, rows)], ignore_index=True)
        write_atomic(args.out / "benchmark_rows.csv", lambda tmp: rows.to_csv(tmp, index=False))
    if args.matched:
        matched = matched_lean(args.out, todo)
        write_atomic(args.out / "matched.csv", lambda tmp: matched.to_csv(tmp, index=False))
        print(matched.groupby("method")[["balanced_accuracy", "minority_recall", "shift"]]
              .mean().round(3).to_string())


if __name__ == "__main__":
    main()
