"""Paired comparisons of two benchmark methods, split by split.

Two methods run on the same split (same data set, ρ, β and seed) see the same training and
test rows, so the split-to-split variation they share cancels in their difference
d = metric(ours) − metric(other). :func:`paired_comparison` counts, per setting and pooled,
the wins (d > 0), ties (|d| < :data:`TIE_TOLERANCE`) and losses (d < 0) of ours, the mean
difference and the two-sided Wilcoxon signed-rank p-value of the differences;
:func:`win_table` condenses the pooled counts against several methods into one row each.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

__all__ = ["SPLIT_KEYS", "TIE_TOLERANCE", "paired_comparison", "win_table"]

#: The columns that identify a split: runs with equal values are paired.
SPLIT_KEYS = ("dataset", "rho", "beta", "seed")

#: |d| below this counts as a tie (and as a zero difference in the signed-rank test).
TIE_TOLERANCE = 1e-12

_COLUMNS = ["n_pairs", "n_dropped", "wins", "ties", "losses", "mean_diff", "p_value"]


def _check_frame(results) -> None:
    if not isinstance(results, pd.DataFrame):
        raise ValueError(f"results: expected a pandas DataFrame; found {type(results).__name__}")
    if "method" not in results.columns:
        raise ValueError(
            f"results: missing column 'method'; found columns {list(results.columns)}")


def _check_method(results: pd.DataFrame, name, argument: str) -> None:
    methods = sorted(results["method"].dropna().unique().tolist())
    if not isinstance(name, str) or name not in methods:
        raise ValueError(f"{argument}: unknown method {name!r}; expected one of {methods}")


def _check_metric(results: pd.DataFrame, metric, argument: str = "metric") -> None:
    if not isinstance(metric, str) or metric not in results.columns:
        raise ValueError(
            f"{argument}: {metric!r} is not a column of results; expected one of "
            f"{[c for c in results.columns if c not in (*SPLIT_KEYS, 'method')]}")


def _summary(diff: np.ndarray, n_dropped: int) -> dict:
    """Counts, mean and signed-rank p-value of the paired differences (NaN-free)."""
    diff = np.where(np.abs(diff) < TIE_TOLERANCE, 0.0, diff)
    nonzero = int(np.count_nonzero(diff))
    if nonzero >= 2:
        p_value = float(wilcoxon(diff, zero_method="zsplit", alternative="two-sided").pvalue)
    else:
        p_value = np.nan
    return {
        "n_pairs": int(diff.size),
        "n_dropped": int(n_dropped),
        "wins": int((diff > 0).sum()),
        "ties": int((diff == 0).sum()),
        "losses": int((diff < 0).sum()),
        "mean_diff": float(diff.mean()) if diff.size else np.nan,
        "p_value": p_value,
    }


def paired_comparison(results: pd.DataFrame, ours: str, other: str,
                      metric: str = "balanced_accuracy",
                      by: Iterable[str] = ("dataset", "rho", "beta")) -> pd.DataFrame:
    """Pair the runs of ``ours`` and ``other`` split by split and compare them per setting.

    A pair is the two methods' runs on one split, i.e. with equal
    :data:`SPLIT_KEYS` = (dataset, rho, beta, seed) (and equal ``by`` columns); a run without a
    counterpart of the other method is ignored. With d = metric(ours) − metric(other) per pair:

    - ``wins``, ``ties``, ``losses``: pairs with d > 0, |d| < 1e-12, d < 0;
    - ``mean_diff``: the mean of d;
    - ``p_value``: two-sided Wilcoxon signed-rank test of the d's
      (``scipy.stats.wilcoxon(d, zero_method="zsplit")``, ties set to exactly 0 first, so that
      they count as half a positive and half a negative rank); NaN when fewer than two pairs
      are not ties;
    - ``n_pairs``: pairs used; ``n_dropped``: pairs left out because either value is NaN (a
      method that could not run on the split).

    :param pandas.DataFrame results: one row per (dataset, rho, beta, seed, method) with metric
        columns, as :func:`pyro_mmt.experiments.benchmark.run_benchmark` returns.
    :param str ours: a method of ``results``.
    :param str other: another method of ``results``.
    :param str metric: the metric column compared (higher is better).
    :param by: the columns that define a setting (one output row each); empty for the pooled
        row only.
    :returns: pandas.DataFrame with the ``by`` columns (sorted settings), then n_pairs,
        n_dropped, wins, ties, losses, mean_diff, p_value; its last row pools every pair, with
        "all" in the ``by`` columns.
    :raises ValueError: naming the argument, for a results frame without the needed columns
        or with two runs of one method on one split, an unknown method, ``ours`` equal to
        ``other``, or a metric that is not a column.
    """
    _check_frame(results)
    by = [by] if isinstance(by, str) else list(by)
    _check_method(results, ours, "ours")
    _check_method(results, other, "other")
    if ours == other:
        raise ValueError(f"other: expected a method other than ours={ours!r}; found the same")
    _check_metric(results, metric)
    keys = list(SPLIT_KEYS) + [c for c in by if c not in SPLIT_KEYS]
    missing = [c for c in keys if c not in results.columns]
    if missing:
        raise ValueError(
            f"results: missing columns {missing}; expected the split keys {list(SPLIT_KEYS)} "
            f"and by={by} among {list(results.columns)}")
    frames = []
    for name, suffix in ((ours, "ours"), (other, "other")):
        runs = results.loc[results["method"] == name, keys + [metric]]
        duplicated = runs.duplicated(keys)
        if duplicated.any():
            first = runs.loc[duplicated, keys].iloc[0].to_dict()
            raise ValueError(
                f"results: method {name!r} has {int(duplicated.sum())} repeated runs of a split "
                f"(e.g. {first}); expected one run per split and method")
        frames.append(runs.rename(columns={metric: suffix}))
    pairs = frames[0].merge(frames[1], on=keys, how="inner")
    valid = pairs["ours"].notna() & pairs["other"].notna()
    pairs["diff"] = pairs["ours"] - pairs["other"]

    rows = []
    if by:
        for key, group in pairs.groupby(by, sort=True):
            ok = valid.loc[group.index]
            summary = _summary(group.loc[ok, "diff"].to_numpy(dtype=float), int((~ok).sum()))
            rows.append({**dict(zip(by, key, strict=True)), **summary})
    pooled = _summary(pairs.loc[valid, "diff"].to_numpy(dtype=float), int((~valid).sum()))
    rows.append({**{c: "all" for c in by}, **pooled})
    return pd.DataFrame(rows, columns=[*by, *_COLUMNS])


def win_table(results: pd.DataFrame, ours: str, others: Iterable[str],
              metrics: Iterable[str] = ("balanced_accuracy", "minority_recall")) -> pd.DataFrame:
    """Pooled paired comparison of ``ours`` against each of ``others``: one row per method.

    For each metric m the row has ``"m wins"``, ``"m ties"``, ``"m losses"`` (pairs of splits,
    NaN pairs left out) and ``"m p"`` (two-sided Wilcoxon signed-rank p-value), the pooled
    ("all") row of :func:`paired_comparison`; ``n_pairs`` is the number of splits the two
    methods share (NaN values included).

    :param pandas.DataFrame results: as for :func:`paired_comparison`.
    :param str ours: our method.
    :param others: the methods compared with ours (a single name is accepted).
    :param metrics: metric columns (a single name is accepted).
    :returns: pandas.DataFrame with columns method, n_pairs and four per metric.
    :raises ValueError: naming the argument, as :func:`paired_comparison`, and for an empty
        ``others`` or ``metrics``.
    """
    _check_frame(results)
    others = [others] if isinstance(others, str) else list(others)
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not others:
        raise ValueError("others: expected at least one method name; found none")
    if not metrics:
        raise ValueError("metrics: expected at least one metric column; found none")
    for metric in metrics:
        _check_metric(results, metric, "metrics")
    for name in others:
        _check_method(results, name, "others")
    rows = []
    for name in others:
        row = {"method": name}
        for metric in metrics:
            pooled = paired_comparison(results, ours, name, metric, by=()).iloc[-1]
            row.setdefault("n_pairs", int(pooled["n_pairs"] + pooled["n_dropped"]))
            for column in ("wins", "ties", "losses"):
                row[f"{metric} {column}"] = int(pooled[column])
            row[f"{metric} p"] = float(pooled["p_value"])
        rows.append(row)
    return pd.DataFrame(rows)
