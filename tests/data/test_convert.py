"""as_modality_mapping and check_labels: every accepted form of X and y, and every refusal."""

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_mmt.data import MultimodalDataset, as_modality_mapping, check_labels

NAN = np.nan
FLAT = np.arange(15.0).reshape(3, 5)
FRAME = pd.DataFrame(FLAT, columns=["p", "q", "r", "s", "t"])


def _shapes(mapping):
    return {name: array.shape for name, array in mapping.items()}


# ----------------------------------------------------------------------------------------------
# accepted forms
# ----------------------------------------------------------------------------------------------


def test_mapping_of_arrays_tensors_and_frames():
    x = as_modality_mapping({"a": FLAT[:, :2], "b": torch.ones(3, 1), "c": FRAME[["r", "s"]],
                             "d": np.ones((3, 1), dtype=bool)})
    assert list(x) == ["a", "b", "c", "d"]
    assert _shapes(x) == {"a": (3, 2), "b": (3, 1), "c": (3, 2), "d": (3, 1)}
    assert all(isinstance(a, np.ndarray) and a.dtype.kind == "f" for a in x.values())
    np.testing.assert_array_equal(x["c"], FLAT[:, 2:4])


def test_multiindex_frame():
    top, bottom = pd.DataFrame(FLAT[:, :2]), pd.DataFrame(FLAT[:, 2:], columns=["u", "v", "w"])
    frame = pd.concat({"top": top, "bottom": bottom}, axis=1)
    x = as_modality_mapping(frame)
    assert list(x) == ["top", "bottom"]
    np.testing.assert_array_equal(x["bottom"], FLAT[:, 2:])


def test_flat_array_with_indices_slices_ranges_and_masks():
    x = as_modality_mapping(FLAT, modalities={
        "a": [1, 0], "b": slice(2, 3), "c": range(3, 4), "d": np.array([0, 0, 0, 0, 1], bool)})
    assert _shapes(x) == {"a": (3, 2), "b": (3, 1), "c": (3, 1), "d": (3, 1)}
    np.testing.assert_array_equal(x["a"], FLAT[:, [1, 0]])  # in the order given
    x = as_modality_mapping(FLAT, modalities={"a": [-1], "b": slice(None, -1)})
    np.testing.assert_array_equal(x["a"], FLAT[:, [4]])
    np.testing.assert_array_equal(x["b"], FLAT[:, :4])
    assert list(as_modality_mapping(torch.tensor(FLAT), {"a": slice(0, 5)})) == ["a"]


def test_flat_frame_with_column_names():
    x = as_modality_mapping(FRAME, modalities={"a": ["q", "p"], "b": ["r", "s", "t"]})
    np.testing.assert_array_equal(x["a"], FLAT[:, [1, 0]])
    np.testing.assert_array_equal(x["b"], FLAT[:, 2:])


def test_missing_rows_and_a_modality_missing_everywhere_are_kept():
    data = FLAT.copy()
    data[1, :2] = NAN
    data[:, 4] = NAN
    x = as_modality_mapping(data, modalities={"a": [0, 1], "b": [2, 3], "c": [4]})
    assert np.isnan(x["a"][1]).all() and np.isnan(x["c"]).all()


def test_result_builds_a_dataset():
    x = as_modality_mapping(FRAME, modalities={"a": ["p", "q"], "b": ["r", "s", "t"]})
    ds = MultimodalDataset(x, [0, 1, -1])
    assert ds.dims == {"a": 2, "b": 3}


def test_works_inside_a_scikit_learn_column_transformer_pipeline():
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import StandardScaler

    transform = ColumnTransformer([("scale", StandardScaler(), ["p", "q", "r"])],
                                  remainder="passthrough")
    out = transform.fit_transform(FRAME)  # a flat array: scaled p, q, r then s, t
    x = as_modality_mapping(out, modalities={"scaled": slice(0, 3), "raw": [3, 4]})
    np.testing.assert_array_equal(x["raw"], FLAT[:, 3:])


# ----------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "X, modalities, match",
    [
        # flat arrays
        (FLAT, None, r"X: expected a mapping .* or a flat 2-D DataFrame or array with "
                     r"modalities=.*found a ndarray without modalities"),
        (FLAT, {"a": [0, 1], "b": [1, 2, 3, 4]},
         r"modalities: column 1 is claimed by both 'a' and 'b'"),
        (FLAT, {"a": [0, 1], "b": [2, 3, 5]}, r"modalities\['b'\]: unknown columns \[5\]"),
        (FLAT, {"a": [0, 1], "b": [2, -6]}, r"modalities\['b'\]: unknown columns \[-6\]"),
        (FLAT, {"a": [0, 1], "b": slice(2, 9)}, r"modalities\['b'\]: slice bound 9 is outside"),
        (FLAT, {"a": [0, 1], "b": [2, 3]}, r"X: columns \[4\] \(1 of 5 columns\) belong to no "
                                           r"modality"),
        (FLAT, {"a": [0, 0, 1], "b": [2, 3, 4]},
         r"modalities\['a'\]: columns \[0\] are listed more than once"),
        (FLAT, {"a": [0, 1], "b": 2}, r"modalities\['b'\]: expected a list of column indices"),
        (FLAT, {"a": [0.0, 1.0]}, r"modalities\['a'\]: expected integer column indices"),
        (FLAT, {"a": np.ones(3, bool)}, r"a boolean mask must have one entry per column"),
        (FLAT, {"a": [], "b": [0, 1, 2, 3, 4]}, r"modalities\['a'\]: expected at least one column"),
        (FLAT, {"": [0, 1, 2, 3, 4]}, r"modalities: modality names must be non-empty strings"),
        (FLAT, [[0, 1], [2, 3, 4]], r"modalities: expected a non-empty mapping"),
        (FLAT[:, 0], {"a": [0]}, r"X: expected a 2-D array \[N, p\].*found shape \(3,\)"),
        (FLAT.astype(object), {"a": slice(0, 5)}, r"X: expected numeric values .*dtype object"),
        (FLAT.astype(str), {"a": slice(0, 5)}, r"X: expected numeric values .*dtype <U"),
        (FLAT + 1j, {"a": slice(0, 5)}, r"X: expected real values; found complex"),
        (np.c_[FLAT[:, :4], [1e39, 0, 0]], {"a": slice(0, 5)}, r"modalities\['a'\]: rows 0 hold "
                                                              r"values beyond the float32 range"),
        # flat DataFrames
        (FRAME, {"a": ["p", "q"], "b": ["q", "r", "s", "t"]},
         r"modalities: column 'q' is claimed by both 'a' and 'b'"),
        (FRAME, {"a": ["p", "q"], "b": ["r", "s", "t", "z"]},
         r"modalities\['b'\]: unknown columns \['z'\]"),
        (FRAME, {"a": ["p", "q"], "b": ["r"]},
         r"X: columns \['s', 't'\] \(2 columns\) belong to no modality"),
        (FRAME, {"a": "p"}, r"modalities\['a'\]: expected a list of column names of X; found 'p' "
                            r"\(write \['p'\]"),
        (FRAME.set_axis(["p", "p", "r", "s", "t"], axis=1), {"a": ["p", "r", "s", "t"]},
         r"X: column names \['p'\] appear more than once"),
        (FRAME.assign(t=["u", "v", "w"]), {"a": ["p", "q", "r", "s"], "b": ["t"]},
         r"modalities\['b'\]: expected real numeric or bool columns; found non-numeric columns "
         r"\['t'\]"),
        # MultiIndex frames
        (pd.concat({"a": FRAME[["p", "q"]], "b": FRAME[["r"]], "c": FRAME[["s"]]}, axis=1)
         .iloc[:, [0, 2, 1, 3]], None,
         r"X: the columns of modality 'a' are not side by side \(column positions \[0, 2\]\)"),
        (pd.concat({"a": FRAME[["p", "q"]]}, axis=1).iloc[:, [0, 1, 1]], None,
         r"X: columns \[\('a', 'q'\)\] appear more than once"),
        (pd.concat({"a": FRAME}, axis=1), {"a": ["p"]}, r"modalities: only used with a flat"),
        (pd.concat({0: FRAME}, axis=1), None, r"X \(the first column level\): modality names "
                                             r"must be non-empty strings; found 0"),
        # mappings
        ({"a": FLAT}, {"a": [0]}, r"modalities: only used with a flat 2-D DataFrame or array; "
                                  r"found a mapping X"),
        ({}, None, r"X: expected at least one modality; found an empty mapping"),
        ({"a": FLAT, "b": FLAT[:2]}, None, r"X: expected the same number of rows N in every "
                                           r"modality; found \{'a': 3, 'b': 2\}"),
        ({"a": FLAT, "b": np.array([["x"]] * 3)}, None, r"X\['b'\]: expected numeric values"),
        ({"a": FLAT, "b": np.array([[1, None]] * 3)}, None, r"X\['b'\]: .*found dtype object"),
        ({"a": FLAT, "b": FLAT + 2j}, None, r"X\['b'\]: expected real values; found complex"),
        ({"a": FLAT, "b": FLAT[:, 0]}, None, r"X\['b'\]: expected a 2-D array"),
        ({"a": FLAT, 3: FLAT}, None, r"X: modality names must be non-empty strings; found 3"),
        ({"a": FRAME, "b": FRAME.iloc[::-1]}, None,
         r"X: the row index of X\['b'\] differs from that of X\['a'\]"),
        # other types
        ([FLAT, FLAT], None, r"X: expected a mapping .* found a list without modalities"),
    ],
)
def test_refusals(X, modalities, match):
    with pytest.raises(ValueError, match=match):
        as_modality_mapping(X, modalities)


def test_a_dataset_is_refused_with_a_hint():
    ds = MultimodalDataset({"a": FLAT}, [0, 1, 0])
    with pytest.raises(ValueError, match=r"found a MultimodalDataset, which is already converted"):
        as_modality_mapping(ds)


# ----------------------------------------------------------------------------------------------
# check_labels
# ----------------------------------------------------------------------------------------------


def test_check_labels_accepts_the_convention():
    assert check_labels([0, 1.0, -1], 3).tolist() == [0, 1, -1]
    assert check_labels(pd.Series([2, -1]), 2, num_classes=3).dtype == np.int64
    assert check_labels(torch.tensor([1, 0]), 2, require_every_class=True).tolist() == [1, 0]
    assert check_labels(np.array([], dtype=int), 0).tolist() == []


@pytest.mark.parametrize(
    "y, n_rows, kwargs, match",
    [
        ([0, 1], 3, {}, r"y: expected a 1-D array of 3 labels; found shape \(2,\)"),
        ([[0, 1, 2]], 3, {}, r"y: expected a 1-D array of 3 labels; found shape \(1, 3\)"),
        ([0, 2.5, 1], 3, {}, r"y: expected integer class indices \(-1 = unlabelled\); found "
                             r"non-integer values \[2.5\] at rows 1"),
        ([0, NAN, 1], 3, {}, r"non-integer values \[nan\] at rows 1 \(NaN is not a label: mark "
                             r"unlabelled rows with -1\)"),
        ([0, np.inf, 1], 3, {}, r"non-integer values \[inf\]"),
        (["a", "b", "a"], 3, {}, r"y: expected integer class indices .*found dtype <U1"),
        ([0, None, 1], 3, {}, r"y: expected integer class indices .*found dtype object"),
        ([True, False, True], 3, {}, r"found dtype bool"),
        ([0, -2, 1], 3, {}, r"y: expected labels >= -1 \(-1 = unlabelled\); found \[-2\]"),
        ([0, 3, 1], 3, {"num_classes": 3}, r"y: expected labels in \[-1, 3\) \(num_classes=3"),
        ([0, 1e19, 1], 3, {}, r"y: expected class indices 0..K-1"),
        ([-1, -1], 2, {"require_labelled": True},
         r"y: no row is labelled \(all 2 labels are -1\); expected at least one labelled row"),
        ([-1, -1], 2, {"require_every_class": True}, r"y: no row is labelled"),
        ([0, 2, -1], 3, {"require_every_class": True},
         r"y: classes \[1\] have no labelled row \(the classes are 0..2, K = max\(y\) \+ 1; "
         r"labelled rows per class: \[1, 0, 1\]\); expected at least one labelled row per class"),
        ([0, 2, -1], 3, {"require_every_class": True, "num_classes": 4,
                         "class_names": ["cat", "dog", "emu", "fox"]},
         r"y: classes \[1, 3\] \('dog', 'fox'\) have no labelled row \(num_classes=4"),
        ([0, 10**9], 2, {"require_every_class": True},
         r"classes \[1, 2, 3, 4, 5, ... \(999999994 more\)\] have no labelled row"),
        ([0, 1], 2, {"argument": "labels", "num_classes": 1}, r"labels: expected labels in"),
        ([0, 1], -1, {}, r"n_rows: expected a non-negative integer"),
        ([0, 1], 2, {"num_classes": 0}, r"num_classes: expected a positive integer"),
    ],
)
def test_check_labels_refusals(y, n_rows, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_labels(y, n_rows, **kwargs)


def test_messages_do_not_mention_internal_names():
    for y, kwargs in [([-1, -1], {"require_labelled": True}),
                      ([0, 2], {"require_every_class": True})]:
        with pytest.raises(ValueError) as error:
            check_labels(y, 2, **kwargs)
        assert "_" not in str(error.value).replace("num_classes", "")
