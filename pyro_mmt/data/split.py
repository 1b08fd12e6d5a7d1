"""The benchmark's long-tailed, partially labelled train/test splits, and validation folds of
a training set for choosing settings without touching the test rows."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from pyro_mmt.data.dataset import MultimodalDataset

__all__ = [
    "LongTailedSplit",
    "MIN_TRAIN_PER_CLASS",
    "SplitSkippedError",
    "UNLABELLED_MIXES",
    "long_tailed_split",
    "validation_folds",
]

#: A ρ is skipped when some class would keep fewer training rows than this: with fewer, a
#: class's labelled and unlabelled parts become too small to say anything.
MIN_TRAIN_PER_CLASS = 5

# floor() of a product that is mathematically an integer can land just below it in floating
# point (e.g. 150 · 10^(-9/9)); this guard keeps such values on the integer.
_FLOOR_GUARD = 1e-9

#: The class mixes of the unlabelled training rows that :func:`long_tailed_split` can draw.
UNLABELLED_MIXES = ("same", "uniform", "reversed")


def _floor(value: float) -> int:
    return int(math.floor(value + _FLOOR_GUARD))


class SplitSkippedError(ValueError):
    """Raised by :func:`long_tailed_split` when ρ would leave some class with fewer than
    ``MIN_TRAIN_PER_CLASS`` training rows: the protocol skips that ρ for the data set."""


@dataclass
class LongTailedSplit:
    """One long-tailed, partially labelled split of a data set.

    Attributes
    ----------
    train : MultimodalDataset
        Training rows (in the original data set's order) with y = -1 for unlabelled rows.
    test : MultimodalDataset
        Class-balanced test rows (in the original order), fully labelled.
    train_labels : numpy.ndarray
        True labels of the training rows [N_train], labelled or not (for diagnostics only).
    train_class_counts : numpy.ndarray
        n_k, the long-tailed class sizes, int64 [K]: they set the labelled counts and rank the
        classes (head to tail; the minority classes of the metrics are the smallest n_k). With
        ``unlabelled="same"`` they are also the training rows per class; with another mix the
        training rows per class are ``labelled_class_counts + unlabelled_class_counts``
        (:attr:`training_rows_per_class`).
    labelled_class_counts : numpy.ndarray
        L_k = max(1, floor(β n_k)), labelled training rows per class, int64 [K].
    head_order : numpy.ndarray
        Class indices by rank: ``head_order[0]`` is the head class, ``head_order[-1]`` the tail.
    train_index, test_index : numpy.ndarray
        Positions of the training / test rows in the original data set (sorted).
    rho, beta : float
        The imbalance ratio ρ and the labelled fraction β.
    seed : int
        The seed of ``numpy.random.default_rng`` that drew the split.
    unlabelled : str
        The class mix of the unlabelled rows: ``"same"``, ``"uniform"`` or ``"reversed"``
        (see :func:`long_tailed_split`).
    unlabelled_class_counts : numpy.ndarray
        U_k, the true number of unlabelled training rows per class, int64 [K] (hidden from a
        method; kept to score a method that estimates the unlabelled class mix, e.g. by the
        total variation distance between the estimated and the true proportions).
    """

    train: MultimodalDataset
    test: MultimodalDataset
    train_labels: np.ndarray
    train_class_counts: np.ndarray
    labelled_class_counts: np.ndarray
    head_order: np.ndarray
    train_index: np.ndarray
    test_index: np.ndarray
    rho: float
    beta: float
    seed: int
    unlabelled: str = "same"
    unlabelled_class_counts: np.ndarray | None = None

    def __post_init__(self):
        if self.unlabelled_class_counts is None:
            self.unlabelled_class_counts = self.train_class_counts - self.labelled_class_counts

    @property
    def training_rows_per_class(self) -> np.ndarray:
        """Training rows per class, labelled + unlabelled, int64 [K]."""
        return self.labelled_class_counts + self.unlabelled_class_counts

    @property
    def unlabelled_class_proportions(self) -> np.ndarray:
        """U_k / Σ_k U_k, the true class mix of the unlabelled rows, float64 [K] (NaN when
        there is no unlabelled row)."""
        total = self.unlabelled_class_counts.sum()
        if total == 0:
            return np.full(self.unlabelled_class_counts.shape, np.nan)
        return self.unlabelled_class_counts / total

    @property
    def imbalance_ratio(self) -> float:
        """max_k n_k / min_k n_k of the training set (ρ, or less for K = 2 when the natural
        ratio is smaller)."""
        return float(self.train_class_counts.max() / self.train_class_counts.min())


def long_tailed_split(dataset: MultimodalDataset, rho: float, beta: float, seed: int,
                      unlabelled: str = "same") -> LongTailedSplit:
    """Draw the benchmark's long-tailed, partially labelled train/test split.

    With K classes, class counts c_k in the pooled, fully labelled ``dataset`` and
    ``rng = numpy.random.default_rng(seed)``:

    1. **Test set.** t = min(floor(c_min / 4), 1000) rows per class, drawn at random: each
       class's rows are permuted (in class order), the first t go to the test set and the rest
       form the class's pool P_k, in that random order. The test set depends only on the seed,
       never on ρ, β or the unlabelled mix.
    2. **Long-tailed class sizes.**

       - K > 2: a random order of the classes is drawn (``rng.permutation(K)``); the class with
         rank r_k gets n_k = floor(n_max · ρ^(−r_k/(K−1))) rows, n_max = min_k |P_k| (the
         smallest pool). Rank 0 is the head (n_max rows), rank K−1 the tail (floor(n_max/ρ)).
       - K = 2: the natural majority (more rows in ``dataset``; ties go to the lower class
         index) is the head and keeps its whole pool, n_head = |P_head|; the minority gets
         n_minor = min(|P_minor|, floor(n_head/ρ)), i.e. its whole pool when the natural ratio
         already exceeds ρ. (The tail size floor(n_max/ρ) uses the head's count as n_max, as
         in the K > 2 rule; with the smallest pool as n_max the breast cancer data would allow
         only ρ ≤ 31 instead of 50.)

    3. **Labels.** In each class the first L_k = max(1, floor(β n_k)) rows of P_k (a uniformly
       random subset, P_k being in random order) are the labelled training rows.
    4. **Unlabelled rows.** The class mix of the unlabelled training rows is set by
       ``unlabelled``; R_k = |P_k| − L_k is the class's remaining pool (its rows neither in
       the test set nor labelled), in its random order:

       - ``"same"`` (default): U_k = n_k − L_k, the next rows of P_k after the labelled ones,
         so the unlabelled rows follow the labelled rows' long tail. The splits are exactly
         those of the earlier versions of this function, for every seed.
       - ``"uniform"``: U_k = min(R_k, floor((1/K) Σ_k (n_k − L_k))): about as many unlabelled
         rows as with ``"same"`` in total, spread evenly over the classes (fewer where a
         class's remaining pool is too small).
       - ``"reversed"``: U_k = min(R_k, n_k' − L_k') where k' is the class of reversed rank
         (the head takes the tail's unlabelled count and vice versa, in the seed's class
         order ``head_order``): the unlabelled rows are long-tailed the other way round.

       For ``"uniform"`` and ``"reversed"`` the unlabelled rows of class k are the first U_k
       rows of its remaining pool, a uniformly random subset drawn with the seed (no further
       random numbers are drawn, so the labelled rows and the test set are those of
       ``"same"``). The rest of each pool is discarded (it is not used as unlabelled data).

    Because the draws do not depend on ρ and β, splits of one seed are nested: with
    ``"same"``, a larger ρ keeps a subset of the training rows of a smaller one, and a larger β
    labels a superset.

    Parameters
    ----------
    dataset : MultimodalDataset
        The pooled data set, every row labelled, K >= 2.
    rho : float
        Imbalance ratio ρ >= 1 (head size / tail size).
    beta : float
        Labelled fraction 0 < β <= 1.
    seed : int
        Non-negative seed; the split is a deterministic function of
        (dataset, ρ, β, seed, unlabelled).
    unlabelled : str
        The class mix of the unlabelled rows: ``"same"``, ``"uniform"`` or ``"reversed"``.

    Returns
    -------
    LongTailedSplit
        With ``unlabelled_class_counts`` holding the true U_k.

    Raises
    ------
    SplitSkippedError
        (a ``ValueError``) when some class would keep fewer than ``MIN_TRAIN_PER_CLASS`` = 5
        training rows (n_k < 5): that ρ is skipped for the data set. The message names the
        class and its count.
    ValueError
        For unlabelled rows in ``dataset``, a class with no rows, K < 2, ρ < 1, β outside
        (0, 1], a negative or non-integer seed, or an unknown ``unlabelled`` mix.
    """
    if not isinstance(dataset, MultimodalDataset):
        raise ValueError(f"dataset: expected a MultimodalDataset; found {type(dataset).__name__}")
    if not isinstance(unlabelled, str) or unlabelled not in UNLABELLED_MIXES:
        raise ValueError(
            f"unlabelled: expected one of {list(UNLABELLED_MIXES)}; found {unlabelled!r}"
        )
    y = dataset.y.numpy()
    hidden = int((y < 0).sum())
    if hidden:
        raise ValueError(
            f"dataset: expected every row labelled (the split chooses which labels to hide); "
            f"found {hidden} unlabelled rows"
        )
    if isinstance(rho, bool) or not isinstance(rho, numbers.Real) or not rho >= 1 or \
            not math.isfinite(rho):
        raise ValueError(f"rho: expected a finite imbalance ratio >= 1; found {rho!r}")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not 0 < beta <= 1:
        raise ValueError(f"beta: expected a labelled fraction 0 < beta <= 1; found {beta!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed: expected a non-negative integer; found {seed!r}")
    num_classes = dataset.num_classes
    if num_classes < 2:
        raise ValueError(f"dataset: expected at least 2 classes; found num_classes={num_classes}")
    counts = np.bincount(y, minlength=num_classes)
    if (counts == 0).any():
        empty = np.flatnonzero(counts == 0).tolist()
        raise ValueError(f"dataset: classes {empty} have no rows; expected every class present")

    rng = np.random.default_rng(int(seed))

    # 1. class-balanced test set, and each class's remaining pool in random order
    test_size = min(_floor(0.25 * counts.min()), 1000)
    pools, test_rows = [], []
    for k in range(num_classes):
        rows = rng.permutation(np.flatnonzero(y == k))
        test_rows.append(rows[:test_size])
        pools.append(rows[test_size:])
    pool_sizes = np.array([pool.size for pool in pools])

    # 2. long-tailed class sizes n_k
    if num_classes > 2:
        head_order = rng.permutation(num_classes)
        rank = np.empty(num_classes, dtype=np.int64)
        rank[head_order] = np.arange(num_classes)
        n_max = int(pool_sizes.min())
        train_counts = np.array(
            [_floor(n_max * float(rho) ** (-rank[k] / (num_classes - 1)))
             for k in range(num_classes)]
        )
    else:
        head = int(np.argmax(counts))
        minor = 1 - head
        head_order = np.array([head, minor])
        train_counts = np.empty(2, dtype=np.int64)
        train_counts[head] = pool_sizes[head]
        train_counts[minor] = min(int(pool_sizes[minor]), _floor(pool_sizes[head] / float(rho)))
    train_counts = train_counts.astype(np.int64)

    if train_counts.min() < MIN_TRAIN_PER_CLASS:
        k = int(np.argmin(train_counts))
        raise SplitSkippedError(
            f"rho: rho={rho} leaves class {k} ({dataset.class_names[k]!r}) with "
            f"{train_counts[k]} training rows, fewer than the {MIN_TRAIN_PER_CLASS} the protocol "
            f"requires (training rows per class would be {train_counts.tolist()}); this rho is "
            "skipped for this data set"
        )

    # 3. labelled subset
    labelled_counts = np.array(
        [max(1, _floor(float(beta) * n)) for n in train_counts], dtype=np.int64
    )

    # 4. unlabelled rows: the next rows of each pool after the labelled ones
    same_counts = train_counts - labelled_counts
    remaining = pool_sizes - labelled_counts
    if unlabelled == "same":
        unlabelled_counts = same_counts
    elif unlabelled == "uniform":
        unlabelled_counts = np.minimum(remaining, same_counts.sum() // num_classes)
    else:  # "reversed": the class of rank r takes the count of the class of rank K-1-r
        partner = np.empty(num_classes, dtype=np.int64)
        partner[head_order] = head_order[::-1]
        unlabelled_counts = np.minimum(remaining, same_counts[partner])
    unlabelled_counts = unlabelled_counts.astype(np.int64)

    used = labelled_counts + unlabelled_counts
    train_index = np.sort(np.concatenate([pools[k][:used[k]] for k in range(num_classes)]))
    labelled_index = np.concatenate([pools[k][:labelled_counts[k]] for k in range(num_classes)])
    test_index = np.sort(np.concatenate(test_rows))

    train_labels = y[train_index].copy()
    observed = np.full(train_index.size, -1, dtype=np.int64)
    keep = np.isin(train_index, labelled_index)
    observed[keep] = train_labels[keep]
    train = dataset[train_index].with_labels(observed)

    return LongTailedSplit(
        train=train,
        test=dataset[test_index],
        train_labels=train_labels,
        train_class_counts=train_counts,
        labelled_class_counts=labelled_counts,
        head_order=np.asarray(head_order, dtype=np.int64),
        train_index=train_index.astype(np.int64),
        test_index=test_index.astype(np.int64),
        rho=float(rho),
        beta=float(beta),
        seed=int(seed),
        unlabelled=unlabelled,
        unlabelled_class_counts=unlabelled_counts,
    )


def _check_count(value, argument, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{argument}: expected an integer >= {minimum}; found {value!r}")
    return int(value)


def validation_folds(dataset: MultimodalDataset, n_splits: int = 5, n_repeats: int = 1,
                     seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validation folds of a partially labelled training set, for choosing settings without
    looking at a test set.

    The labelled rows are split by stratified K-fold (scikit-learn's
    ``RepeatedStratifiedKFold``, ``random_state=seed``), so every fold's validation rows
    follow the labelled class mix. Three rules keep the folds usable for semi-supervised,
    long-tailed data:

    - K = min(``n_splits``, the smallest labelled count among the classes with at least two
      labelled rows): every such class has a validation row in every fold and keeps at least
      one labelled training row.
    - A class with a single labelled row is never validated: that row stays in the training
      part of every fold (removing it would leave the class with no label to learn from).
    - Every unlabelled row is in the training part of every fold (unlabelled rows cannot be
      scored, and a semi-supervised method learns from them).

    A fold's validation rows are never in its training part, and no row outside ``dataset``
    is used: split off the test set first (e.g. with :func:`long_tailed_split`) and pass
    ``split.train``.

    Parameters
    ----------
    dataset : MultimodalDataset
        The training data, y = -1 for unlabelled rows.
    n_splits : int
        The number of folds wanted, >= 2 (fewer when a validated class has fewer labelled rows,
        see above; the length of the result tells).
    n_repeats : int
        Repetitions of the K-fold split with different random partitions, >= 1.
    seed : int
        Non-negative seed; the folds are a deterministic function of (dataset, n_splits,
        n_repeats, seed).

    Returns
    -------
    list of (numpy.ndarray, numpy.ndarray)
        K · ``n_repeats`` pairs ``(train_rows, validation_rows)`` of sorted int64 positions in
        ``dataset`` (index it with ``dataset[rows]``), repeat by repeat. Within a repeat every
        labelled row of a validated class is a validation row exactly once.

    Raises
    ------
    ValueError
        For a bad argument, or when fewer than two classes have at least two labelled rows
        (there is nothing to compare a class with).
    """
    from sklearn.model_selection import RepeatedStratifiedKFold

    if not isinstance(dataset, MultimodalDataset):
        raise ValueError(f"dataset: expected a MultimodalDataset; found {type(dataset).__name__}")
    n_splits = _check_count(n_splits, "n_splits", 2)
    n_repeats = _check_count(n_repeats, "n_repeats", 1)
    seed = _check_count(seed, "seed", 0)
    y = dataset.y.numpy()
    counts = np.bincount(y[y >= 0], minlength=dataset.num_classes)
    validated = np.flatnonzero(counts >= 2)
    if validated.size < 2:
        raise ValueError(
            f"dataset: expected at least 2 classes with 2 or more labelled rows to validate on; "
            f"found {validated.size} (labelled rows per class: {counts.tolist()}); label more "
            "rows (with `pyro-mmt tune` on a data set name, a larger --beta or a smaller --rho "
            "labels more rows per class)"
        )
    k = min(n_splits, int(counts[validated].min()))
    rows = np.flatnonzero(np.isin(y, validated))  # labelled rows of the validated classes
    always = np.flatnonzero(~np.isin(y, validated))  # unlabelled rows and singleton classes
    splitter = RepeatedStratifiedKFold(n_splits=k, n_repeats=n_repeats, random_state=seed)
    folds = []
    for train, validation in splitter.split(np.zeros((rows.size, 1)), y[rows]):
        folds.append((np.sort(np.concatenate([rows[train], always])).astype(np.int64),
                      np.sort(rows[validation]).astype(np.int64)))
    return folds
