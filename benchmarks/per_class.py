"""Which tail classes the pseudo-labels miss: class-by-class recall of saved fits on the
development seeds, on the test rows and on the unlabelled training rows.

Minority recall is a mean over the tail classes of a split (the ``max(1, K // 3)`` classes with
the fewest training rows). This script opens it up: for every split, mixture of saved members
(``benchmarks/mixed_ensemble.py``'s files and specs) and class it writes one row with

- the class's rank by training rows (0 = the largest class), whether it is a minority class,
  and its labelled and training rows;
- its test recall at the default decision rule (δ = ``ModelConfig.decision_shift`` along the
  mixture's mean prediction r on the unlabelled rows) and as trained (δ = 0);
- its recall on the split's unlabelled training rows, as trained and at the same rule (the
  pseudo-labels; their true labels are read for analysis only, as no method sees them), the
  share of the unlabelled rows predicted as the class as trained (argmax q(y | x)) against its
  true share, r_y, and the mean q(y = class | x) over the class's unlabelled rows.

::

    python -m benchmarks.mixed_ensemble --members t_gamma_single=3 gauss_kl_single=2 \\
        --mixtures t_gamma_single=3 gauss_kl_single=2 --jobs 2 --out runs/mix
    python -m benchmarks.per_class runs/mix --mixtures t_gamma_single=3 gauss_kl_single=2 \\
        --out runs/per-class

writes ``classes.csv`` (the rows), ``summary.md`` (means over the minority classes by data set
and mixture; the correlation of unlabelled and test recall; the tail classes lost, test recall
below 0.25, by labelled rows and how many both mixtures lose) and ``recall_by_rank.png``
(test recall by class rank, head to tail, per data set with more than two classes). Seeds 0–4
are refused unless ``--reported``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.mixed_ensemble import load_mixture, parse_counts
from benchmarks.select_on_dev_seeds import add_split_arguments, check_splits
from pyro_mmt.config import ModelConfig
from pyro_mmt.decision import reference_log_shares
from pyro_mmt.evaluation.metrics import minority_classes, per_class_recall
from pyro_mmt.experiments.benchmark import grid_splits
from pyro_mmt.run_folder import write_atomic, write_text_atomic

LOST = 0.25  # a tail class whose test recall is below this is "lost" on its split


def class_rows(arrays: dict, delta: float = ModelConfig.decision_shift) -> pd.DataFrame:
    """One row per class of one split's ``arrays`` (:func:`benchmarks.mixed_ensemble.load_mixture`'s
    keys): the columns of the module's docstring, without the split's own columns."""
    test_q, unl_q = arrays["test_proba"], arrays["unlabelled_proba"]
    test_y, unl_y = arrays["test_y"], arrays["unlabelled_y"]
    train, labelled = arrays["train_counts"], arrays["labelled_counts"]
    k = test_q.shape[1]
    log_test = np.log(np.clip(test_q, 1e-300, None))
    log_unl = np.log(np.clip(unl_q, 1e-300, None))
    log_r = reference_log_shares(log_unl).numpy()
    test_pred, test_pred0 = (log_test - delta * log_r).argmax(1), test_q.argmax(1)
    unl_pred, unl_pred0 = (log_unl - delta * log_r).argmax(1), unl_q.argmax(1)
    # rank 0 the largest class; ties ordered as minority_classes orders them (the lower
    # class index counts as the smaller class), so the last max(1, K // 3) ranks are the
    # minority classes
    rank = np.empty(k, dtype=np.int64)
    rank[np.lexsort((np.arange(k), train))] = np.arange(k)[::-1]
    minority = np.isin(np.arange(k), minority_classes(train))
    n_unl = max(len(unl_y), 1)
    recall = {name: per_class_recall(labels, pred, k).to_numpy() for name, labels, pred in (
        ("test_recall", test_y, test_pred), ("test_recall_as_trained", test_y, test_pred0),
        ("unlabelled_recall", unl_y, unl_pred),
        ("unlabelled_recall_as_trained", unl_y, unl_pred0))}
    return pd.DataFrame([{
        "class": c, "rank": int(rank[c]), "num_classes": k, "minority": bool(minority[c]),
        "labelled": int(labelled[c]), "train": int(train[c]),
        **{name: float(values[c]) for name, values in recall.items()},
        "unlabelled_predicted_share": float((unl_pred0 == c).sum() / n_unl),
        "unlabelled_true_share": float((unl_y == c).sum() / n_unl),
        "reference_share": float(np.exp(log_r[c])),
        "mean_q_own_class": float(unl_q[unl_y == c, c].mean()) if (unl_y == c).any() else np.nan,
    } for c in range(k)])


def summarise(rows: pd.DataFrame) -> str:
    """The Markdown summary of ``classes.csv``'s rows (the module's docstring says what)."""
    tail = rows[rows["minority"]].copy()
    tail["lost"] = tail["test_recall"] < LOST
    columns = ["labelled", "test_recall", "test_recall_as_trained", "unlabelled_recall",
               "unlabelled_recall_as_trained", "unlabelled_predicted_share",
               "unlabelled_true_share", "mean_q_own_class"]
    groups = rows.assign(classes=np.where(rows["minority"], "tail", "other")).groupby(
        ["method", "classes"])
    pooled = groups[["test_recall", "test_recall_as_trained", "unlabelled_recall",
                     "unlabelled_recall_as_trained"]].mean().round(3)
    pooled.insert(0, "pairs", groups.size())
    by_data = tail.groupby(["dataset", "method"])[columns].mean().round(3)
    by_data.insert(0, "tail classes", tail.groupby(["dataset", "method"]).size())
    corr = tail.groupby("method")[["unlabelled_recall", "test_recall"]].apply(
        lambda g: g["unlabelled_recall"].corr(g["test_recall"])).round(2).rename(
        "correlation of unlabelled and test recall (tail classes)")
    lost = tail.groupby(["method", "labelled"])["lost"].agg(["sum", "count"]).rename(
        columns={"sum": "lost", "count": "tail classes"})
    lost_by_data = tail.groupby(["method", "dataset"])["lost"].sum().rename("lost")
    key = ["dataset", "rho", "beta", "seed", "class"]
    lost_sets = {m: set(map(tuple, g.loc[g["lost"], key].to_numpy()))
                 for m, g in tail.groupby("method")}
    methods = sorted(lost_sets)
    shared = [f"- {a} and {b}: {len(lost_sets[a] & lost_sets[b])} lost by both, "
              f"{len(lost_sets[a] - lost_sets[b])} by {a} only, "
              f"{len(lost_sets[b] - lost_sets[a])} by {b} only"
              for i, a in enumerate(methods) for b in methods[i + 1:]]
    return "\n\n".join([
        "## The tail classes, by data set (means over split × tail class)",
        by_data.reset_index().to_markdown(index=False),
        "## Does the pseudo-labels' recall on a tail class predict its test recall?",
        corr.reset_index().to_markdown(index=False),
        f"## Tail classes lost (test recall < {LOST}), by labelled rows",
        lost.reset_index().to_markdown(index=False),
        "\n".join(shared) if shared else "(one mixture: nothing to compare)",
        "By data set:",
        lost_by_data.reset_index().to_markdown(index=False),
        "## Every data set together (means over split × class: the tail and the other classes)",
        pooled.reset_index().to_markdown(index=False),
    ]) + "\n"


def plot_recall_by_rank(rows: pd.DataFrame, path: Path) -> None:
    """Mean test recall at the default rule by class rank (head to tail), one panel per data
    set with more than two classes, one line per mixture; written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    many = rows[rows["num_classes"] > 2]
    datasets = sorted(many["dataset"].unique())
    if not datasets:
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.6 * len(datasets), 3.2),
                             squeeze=False)
    for ax, name in zip(axes[0], datasets, strict=True):
        for method, g in many[many["dataset"] == name].groupby("method"):
            curve = g.groupby("rank")["test_recall"].mean()
            ax.plot(curve.index, curve.to_numpy(), marker="o", label=method)
        tail = many.loc[(many["dataset"] == name) & many["minority"], "rank"]
        ax.axvspan(tail.min() - 0.5, tail.max() + 0.5, color="0.9", zorder=0)
        ax.set_title(name)
        ax.set_xlabel("class rank by training rows (0 = largest)")
        ax.set_ylim(0, 1.02)
    axes[0][0].set_ylabel("test recall (default rule)")
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle("Test recall by class rank (shaded: the minority classes)", fontsize=9)
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, format="png", dpi=110)

    write_atomic(path, save)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("members", type=Path,
                        help="a benchmarks.mixed_ensemble --out folder (its arrays/)")
    parser.add_argument("--mixtures", nargs="+", required=True, metavar="A=K+B=M",
                        help="mixtures of saved members, as benchmarks.mixed_ensemble's")
    add_split_arguments(parser)
    parser.add_argument("--out", type=Path, required=True,
                        help="a folder for classes.csv, summary.md and recall_by_rank.png")
    args = parser.parse_args(argv)
    check_splits(parser, args)
    if not (args.members / "arrays").is_dir():
        parser.error(f"members: {args.members} has no arrays/ folder (expected a "
                     "benchmarks.mixed_ensemble --out folder)")
    for spec in args.mixtures:
        try:
            parse_counts(spec)
        except ValueError as err:
            parser.error(f"--mixtures: {err}")
    frames, missing = [], []
    for split in grid_splits(args.datasets, seeds=args.seeds, progress=print):
        for mixture in args.mixtures:
            arrays = load_mixture(args.members, *split, mixture)
            if arrays is None:
                missing.append((*split, mixture))
                continue
            frame = class_rows(arrays)
            frames.append(frame.assign(dataset=split[0], rho=split[1], beta=split[2],
                                       seed=split[3], method=mixture))
    if missing:  # said, not dropped silently
        print(f"{len(missing)} (split, mixture) pairs lack a member's fit and are left out, "
              f"e.g. {missing[0]}")
    if not frames:
        raise SystemExit(f"no mixture could be read from {args.members / 'arrays'}")
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[["dataset", "rho", "beta", "seed", "method",
                 *[c for c in rows.columns if c not in ("dataset", "rho", "beta", "seed",
                                                        "method")]]]
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "classes.csv", lambda tmp: rows.to_csv(tmp, index=False))
    text = summarise(rows)
    write_text_atomic(args.out / "summary.md", text)
    plot_recall_by_rank(rows, args.out / "recall_by_rank.png")
    print(text)


if __name__ == "__main__":
    main()
