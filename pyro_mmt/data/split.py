"""The benchmark's long-tailed, partially labelled splits (PROTOCOL.md, "Splits")."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from pyro_mmt.data.dataset import MultimodalDataset

__all__ = ["LongTailedSplit", "SplitSkippedError", "long_tailed_split", "MIN_TRAIN_PER_CLASS"]

#: A ρ is skipped when some class would keep fewer training rows than this (PROTOCOL.md).
MIN_TRAIN_PER_CLASS = 5

# floor() of a product that is mathematically an integer can land just below it in floating
# point (e.g. 150 · 10^(-9/9)); this guard keeps such values on the integer.
_FLOOR_GUARD = 1e-9


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
        n_k, training rows per class (labelled + unlabelled), int64 [K].
    labelled_class_counts : numpy.ndarray
        max(1, floor(β n_k)), labelled training rows per class, int64 [K].
    head_order : numpy.ndarray
        Class indices by rank: ``head_order[0]`` is the head class, ``head_order[-1]`` the tail.
    train_index, test_index : numpy.ndarray
        Positions of the training / test rows in the original data set (sorted).
    rho, beta : float
        The imbalance ratio ρ and the labelled fraction β.
    seed : int
        The seed of ``numpy.random.default_rng`` that drew the split.
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

    @property
    def imbalance_ratio(self) -> float:
        """max_k n_k / min_k n_k of the training set (ρ, or less for K = 2 when the natural
        ratio is smaller)."""
        return float(self.train_class_counts.max() / self.train_class_counts.min())


def long_tailed_split(dataset: MultimodalDataset, rho: float, beta: float,
                      seed: int) -> LongTailedSplit:
    """Draw the protocol's long-tailed, partially labelled train/test split.

    With K classes, class counts c_k in the pooled, fully labelled ``dataset`` and
    ``rng = numpy.random.default_rng(seed)``:

    1. **Test set.** t = min(floor(c_min / 4), 1000) rows per class, drawn at random: each
       class's rows are permuted (in class order), the first t go to the test set and the rest
       form the class's pool P_k, in that random order. The test set depends only on the seed,
       never on ρ or β.
    2. **Long-tailed training set.**

       - K > 2: a random order of the classes is drawn (``rng.permutation(K)``); the class with
         rank r_k keeps n_k = floor(n_max · ρ^(−r_k/(K−1))) rows, n_max = min_k |P_k| (the
         smallest pool). Rank 0 is the head (n_max rows), rank K−1 the tail (floor(n_max/ρ)).
       - K = 2: the natural majority (more rows in ``dataset``; ties go to the lower class
         index) is the head and keeps its whole pool, n_head = |P_head|; the minority keeps
         n_minor = min(|P_minor|, floor(n_head/ρ)), i.e. its whole pool when the natural ratio
         already exceeds ρ. (PROTOCOL.md writes floor(n_max/ρ); n_max is read here as the
         head's count, as in the K > 2 rule, since that is the reading that gives its stated
         "breast ρ ≤ 50" — with the smallest pool, breast would allow only ρ ≤ 31.)

       Class k's training rows are the first n_k rows of P_k; the rest of the pool is
       discarded (not added as unlabelled data).
    3. **Labels.** In each class the first m_k = max(1, floor(β n_k)) training rows (a uniformly
       random subset, P_k being in random order) keep their labels; the others get y = −1.

    Because the draws do not depend on ρ and β, splits of one seed are nested: a larger ρ
    keeps a subset of the training rows of a smaller one, and a larger β labels a superset.

    Parameters
    ----------
    dataset : MultimodalDataset
        The pooled data set, every row labelled, K >= 2.
    rho : float
        Imbalance ratio ρ >= 1 (head size / tail size).
    beta : float
        Labelled fraction 0 < β <= 1.
    seed : int
        Non-negative seed; the split is a deterministic function of (dataset, ρ, β, seed).

    Returns
    -------
    LongTailedSplit

    Raises
    ------
    SplitSkippedError
        (a ``ValueError``) when some class would keep fewer than ``MIN_TRAIN_PER_CLASS`` = 5
        training rows: the protocol skips that ρ. The message names the class and its count.
    ValueError
        For unlabelled rows in ``dataset``, a class with no rows, K < 2, ρ < 1, β outside
        (0, 1], or a negative or non-integer seed.
    """
    if not isinstance(dataset, MultimodalDataset):
        raise ValueError(f"dataset: expected a MultimodalDataset; found {type(dataset).__name__}")
    y = dataset.y.numpy()
    unlabelled = int((y < 0).sum())
    if unlabelled:
        raise ValueError(
            f"dataset: expected every row labelled (the split chooses which labels to hide); "
            f"found {unlabelled} unlabelled rows"
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

    train_index = np.sort(np.concatenate([pools[k][:train_counts[k]]
                                          for k in range(num_classes)]))
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
    )
