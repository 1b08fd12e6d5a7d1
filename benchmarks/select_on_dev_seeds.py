"""Choose the library's defaults on development seeds 5–9, by both metrics.

The candidates are benchmark methods (``pyro_mmt.experiments.benchmark.METHODS``) run on the
development seeds of the public grid, each split scored on its own class-balanced test set::

    pyro-mmt benchmark --datasets digits breast mfeat pdspeech pbc --seeds 5 6 7 8 9 \\
        --methods t_gamma_joint t_gamma t_kl gauss_kl t_gamma_label_auto --out runs/dev
    python -m benchmarks.select_on_dev_seeds runs/dev/results.csv --reference t_gamma_joint \\
        --out runs/dev-selection

Seeds 0–4 are the reported benchmark and are refused here: nothing is chosen on them.

The ranking criterion is the mean of balanced accuracy and minority recall per split, so a
candidate that buys one metric with the other does not rise. Methods are ranked by their
criterion gain, the mean over the splits they share with the reference of their criterion
minus the reference's, so that a method stopped after part of the grid is compared on its
own splits and not on an easier or harder subset (its ``criterion`` column is the mean over
its own splits). For each candidate the script
writes its mean of both metrics and of the criterion, its paired wins / ties / losses against
the reference on each (with the two-sided Wilcoxon p-value), the settings (data set, ρ, β) in
which its mean is at least the reference's on each metric, and what it does to the
pseudo-labels (the ``pseudo_*`` columns of the benchmark: class-share total variation, entropy
of q(y | x), predicted/true share of the minority classes, minority recall on the unlabelled
rows).

The ``verdict`` column applies the rule that changes a default: a candidate **replaces** the
reference (the current default) when the paired two-sided Wilcoxon signed-rank test of the
criterion over the shared splits gives p < :data:`REPLACEMENT_LEVEL` (0.05) and both its mean
gain and the test's ranks (``criterion rank balance``, (W+ − W−) / (W+ + W−)) are on the
candidate's side; it is **below** when both are on the reference's side at that level, and
**level** otherwise. A level candidate does not replace the default, however it ranks: a gain
the development seeds cannot tell from their noise is not evidence that it generalises. The
level holds per candidate; a round with many candidates makes a false "replaces" likelier,
which the data sets kept out of the repository are there to catch.

``--same NAME AS`` counts the rows of method NAME as rows of AS: the same method under another
name in another round (a mixture ``t_gamma_single=5`` of ``benchmarks/mixed_ensemble.py`` is
the default ``t_gamma``); a split with rows of both is refused, not merged.

With ``--out`` it writes ``ranking.csv``, ``ranking.md``, ``by_dataset.csv``, ``by_dataset.md``
(each method's mean balanced accuracy / minority recall per data set, methods in the ranking's
order), ``mechanism.csv``, ``mechanism.md`` and, where the results hold per-class shares,
``pseudo_label_shares.png`` (predicted against true class share of the unlabelled rows, per
method).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from pyro_mmt.evaluation.paired import TIE_TOLERANCE, paired_comparison
from pyro_mmt.run_folder import write_atomic, write_text_atomic

#: The seeds that choose the defaults; the reported benchmark uses 0–4.
DEVELOPMENT_SEEDS = (5, 6, 7, 8, 9)
DEVELOPMENT_DATASETS = ("digits", "breast", "mfeat", "pdspeech", "pbc")


def add_split_arguments(parser: argparse.ArgumentParser) -> None:
    """``--datasets``, ``--seeds`` (the development seeds by default) and ``--reported``, the
    splits a development-seed script works on; :func:`check_splits` enforces them."""
    parser.add_argument("--datasets", nargs="+", default=list(DEVELOPMENT_DATASETS),
                        help="bundled data sets (pyro_mmt.data.DATASETS)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(DEVELOPMENT_SEEDS),
                        help="split seeds (the development seeds 5–9 by default)")
    parser.add_argument("--reported", action="store_true",
                        help="allow the reported seeds 0–4 (to report a choice made on the "
                        "development seeds, never to make one)")


def check_splits(parser: argparse.ArgumentParser, args) -> None:
    """Refuse (``parser.error``, naming the flag) a data set that is not bundled, a data set or
    seed given twice (its rows would be counted twice), and seeds other than the development
    seeds unless ``--reported``."""
    from pyro_mmt.data import DATASETS

    unknown = [name for name in args.datasets if name not in DATASETS]
    if unknown:
        parser.error(f"--datasets: {unknown} are not bundled data sets; expected some of "
                     f"{sorted(DATASETS)}")
    for flag, values in (("--datasets", args.datasets), ("--seeds", args.seeds)):
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            parser.error(f"{flag}: {twice} given twice; expected each once")
    bad = sorted(set(args.seeds) - set(DEVELOPMENT_SEEDS))
    if bad and not args.reported:
        parser.error(f"--seeds: {bad} are not development seeds {list(DEVELOPMENT_SEEDS)}; "
                     "pass --reported to report a choice already made")

METRICS = ("balanced_accuracy", "minority_recall", "criterion")

#: The p-value below which a candidate's criterion gain over the default changes the default.
REPLACEMENT_LEVEL = 0.05

MECHANISM = ("pseudo_tv", "pseudo_entropy", "pseudo_minority_share", "pseudo_minority_recall",
             "minority_recall")


def load_results(paths) -> pd.DataFrame:
    """The rows of the ``results.csv`` files, development seeds only, with the criterion."""
    frames = [pd.read_csv(p) for p in paths]
    results = pd.concat(frames, ignore_index=True)
    reported = sorted(set(results["seed"]) - set(DEVELOPMENT_SEEDS))
    if reported:
        raise ValueError(f"results: seeds {reported} are not development seeds "
                         f"{list(DEVELOPMENT_SEEDS)}; the defaults are never chosen on the "
                         "reported seeds")
    results = results.drop_duplicates(["dataset", "rho", "beta", "seed", "method"], keep="last")
    results["criterion"] = (results["balanced_accuracy"] + results["minority_recall"]) / 2
    return results


def ranking(results: pd.DataFrame, reference: str) -> pd.DataFrame:
    """One row per method, largest criterion gain over the reference first (see the module
    docstring; the reference's gain is 0, a method sharing no split with it has none)."""
    settings = ["dataset", "rho", "beta"]
    means = results.groupby(["method", *settings])[list(METRICS)].mean()
    by_split = results.pivot_table(index=[*settings, "seed"], columns="method",
                                   values="criterion")
    rows = []
    for method, group in results.groupby("method"):
        row = {"method": method, "splits": int(len(group))}
        for metric in METRICS:
            row[metric] = float(group[metric].mean())
        if method in by_split and reference in by_split:  # all-NaN methods are not columns
            gain = (by_split[method] - by_split[reference]).dropna()
        else:
            gain = pd.Series(dtype=float)
        row["criterion gain"] = float(gain.mean()) if len(gain) else float("nan")
        row["criterion rank balance"] = rank_balance(gain.to_numpy())
        if method != reference:
            for metric in METRICS:
                pooled = paired_comparison(results, method, reference, metric, by=()).iloc[-1]
                row[f"{metric} w/t/l"] = (f"{int(pooled['wins'])} / {int(pooled['ties'])} / "
                                          f"{int(pooled['losses'])}")
                row[f"{metric} p"] = float(pooled["p_value"])
            ours, ref = means.loc[method], means.loc[reference]
            shared = ours.index.intersection(ref.index)
            for metric in ("balanced_accuracy", "minority_recall"):
                ahead = (ours.loc[shared, metric]
                         >= ref.loc[shared, metric] - TIE_TOLERANCE).sum()
                row[f"settings >= {reference} ({metric})"] = f"{int(ahead)} of {len(shared)}"
            row["verdict"] = verdict(row["criterion gain"], row["criterion p"],
                                     row["criterion rank balance"])
        else:
            row["verdict"] = "reference"
        rows.append(row)
    table = pd.DataFrame(rows).sort_values("criterion gain", ascending=False, na_position="last",
                                           kind="mergesort")
    return table.reset_index(drop=True)


def by_dataset(results: pd.DataFrame, order=None) -> pd.DataFrame:
    """Mean balanced accuracy / minority recall per method (rows, in ``order`` if given) and
    data set (columns), as "0.807 / 0.778 (15)" with the number of splits averaged (splits
    where either metric is NaN, a method that could not run, left out)."""
    metrics = ["balanced_accuracy", "minority_recall"]
    groups = results.dropna(subset=metrics).groupby(["method", "dataset"])
    means = groups[metrics].mean()
    counts = groups.size()
    cells = pd.Series([f"{b:.3f} / {m:.3f} ({n})" for b, m, n in
                       zip(means["balanced_accuracy"], means["minority_recall"],
                           counts.loc[means.index], strict=True)], index=means.index)
    table = cells.unstack("dataset").fillna("")
    table.index.name, table.columns.name = "method", None
    return table.reindex([m for m in order if m in table.index]) if order is not None else table


def rank_balance(differences) -> float:
    """(W+ − W−) / (W+ + W−) of the Wilcoxon signed-rank test of these paired differences:
    +1 when every non-tied split is a gain, −1 when every one is a loss, the side the test's
    ranks lean to in between (differences within ``TIE_TOLERANCE`` are ties and count on
    neither side, as under ``zero_method="zsplit"``; NaN for no differences)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    d = np.where(np.abs(d) < TIE_TOLERANCE, 0.0, d)
    if d.size == 0:
        return float("nan")
    ranks = rankdata(np.abs(d))
    return float((np.sign(d) * ranks).sum() / ranks.sum())


def verdict(gain: float, p_value: float, balance: float) -> str:
    """``"replaces"``, ``"below"`` or ``"level"``: the rule of the module docstring for a
    candidate with this mean criterion gain over the reference, this Wilcoxon p-value (NaN
    when too few splits differ) and this :func:`rank_balance`. The mean and the ranks must
    lean the same way: a few large losses can make the mean negative while the test, on
    ranks, finds the candidate significantly ahead, and the other way round; such a
    candidate is level."""
    if not (np.isfinite(gain) and np.isfinite(p_value) and np.isfinite(balance)):
        return "level"
    if p_value < REPLACEMENT_LEVEL and gain > 0 and balance > 0:
        return "replaces"
    if p_value < REPLACEMENT_LEVEL and gain < 0 and balance < 0:
        return "below"
    return "level"


def mechanism(results: pd.DataFrame) -> pd.DataFrame:
    """Mean pseudo-label statistics per method (methods without q(y | x) left out)."""
    present = [c for c in MECHANISM if c in results.columns]
    table = results.groupby("method")[present].mean()
    return table.dropna(how="all", subset=[c for c in present if c.startswith("pseudo")])


def plot_shares(results: pd.DataFrame, path: Path) -> bool:
    """Predicted against true class share of the unlabelled rows, one panel per method."""
    if "pseudo_class_shares" not in results.columns:
        return False
    rows = results.dropna(subset=["pseudo_class_shares", "true_class_shares"])
    if rows.empty:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted(rows["method"].unique())
    fig, axes = plt.subplots(1, len(methods), figsize=(3.2 * len(methods), 3.4), sharey=True,
                             squeeze=False)
    for ax, method in zip(axes[0], methods, strict=True):
        group = rows[rows["method"] == method]
        true = np.concatenate([np.array(s.split(";"), float) for s in group["true_class_shares"]])
        pred = np.concatenate([np.array(s.split(";"), float)
                               for s in group["pseudo_class_shares"]])
        floor = min(1e-2, 0.5 * true[true > 0].min())  # a class never predicted: on the floor
        ax.scatter(true, np.maximum(pred, floor), s=8, alpha=0.5)
        ax.plot([floor, 1], [floor, 1], color="grey", lw=1)
        ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor * 0.8, 1),
               title=method, xlabel="true share")
        tv = group["pseudo_tv"].mean()
        ax.text(0.04, 0.92, f"TV {tv:.3f}", transform=ax.transAxes)
    axes[0][0].set_ylabel("share of argmax q(y | x)")
    fig.suptitle("Pseudo-labels of the unlabelled training rows (development seeds)", y=1.02)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)
    return True


def _write(frame: pd.DataFrame, folder: Path, name: str, index: bool = False) -> None:
    for suffix, text in ((".csv", frame.to_csv(index=index)),
                         (".md", frame.to_markdown(index=index, floatfmt=".3f") + "\n")):
        write_text_atomic(folder / f"{name}{suffix}", text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", help="benchmark results.csv files (seeds 5-9)")
    parser.add_argument("--reference", default="t_gamma",
                        help="the method every candidate is paired against")
    parser.add_argument("--methods", nargs="+", metavar="METHOD",
                        help="rank only these candidates (with the reference), e.g. a round's "
                        "own methods against the default's rows of an earlier round")
    parser.add_argument("--same", nargs=2, action="append", default=[], metavar=("NAME", "AS"),
                        help="count the rows of method NAME as rows of AS: the same method "
                        "under another name in another round (e.g. --same t_gamma_single=5 "
                        "t_gamma); repeatable")
    parser.add_argument("--out", help="a folder for ranking, mechanism and the figure")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    for name, alias in args.same:
        if name == alias:
            parser.error(f"--same: {name!r} given as its own other name; expected two names")
        rows = results["method"] == name
        if not rows.any():
            parser.error(f"--same: {name!r} is not among the methods "
                         f"{sorted(set(results['method']))}")
        split = ["dataset", "rho", "beta", "seed"]
        both = results.loc[rows, split].merge(results.loc[results["method"] == alias, split])
        if len(both):
            parser.error(f"--same: {name!r} and {alias!r} both have rows of "
                         f"{len(both)} split(s), e.g. {tuple(both.iloc[0])}; expected rows of "
                         "other splits (nothing is merged)")
        results.loc[rows, "method"] = alias
    found = set(results["method"])
    if args.reference not in found:
        parser.error(f"--reference: {args.reference!r} is not among the methods "
                     f"{sorted(found)}")
    if args.methods:
        unknown = sorted(set(args.methods) - found)
        if unknown:
            parser.error(f"--methods: {unknown} are not among the methods {sorted(found)}")
        results = results[results["method"].isin({args.reference, *args.methods})]
    table = ranking(results, args.reference)
    mech = mechanism(results)  # empty where the rows carry no pseudo-label statistics
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        if not mech.empty:
            print()
            print(mech.to_string(float_format=lambda v: f"{v:.3f}"))
    winners = table.loc[table["verdict"] == "replaces", "method"].tolist()
    print(f"\nreplaces {args.reference} (p < {REPLACEMENT_LEVEL}, mean and ranks ahead): "
          + (", ".join(winners) + f" (first by gain: {winners[0]})" if winners else "none"))
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        _write(table, folder, "ranking")
        _write(by_dataset(results, table["method"]), folder, "by_dataset", index=True)
        written = ["ranking.csv", "ranking.md", "by_dataset.csv", "by_dataset.md"]
        if not mech.empty:
            _write(mech, folder, "mechanism", index=True)
            written += ["mechanism.csv", "mechanism.md"]
        if plot_shares(results, folder / "pseudo_label_shares.png"):
            written.append("pseudo_label_shares.png")
        print(f"wrote {', '.join(written)} in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
