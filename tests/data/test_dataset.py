"""MultimodalDataset, Batch, InterleavedLoader and Standardiser against hand-computed values."""

import numpy as np
import pandas as pd
import pytest
import torch

from pyro_mmt.data import Batch, InterleavedLoader, MultimodalDataset, Standardiser

NAN = np.nan


@pytest.fixture
def small():
    """4 rows, modalities "b" (3 features, row 1 missing) then "a" (2 features, row 2 missing),
    labels [0, -1, 2, -1], K = 3."""
    b = np.array([[1.0, 2.0, 3.0], [NAN, NAN, NAN], [7.0, 8.0, 9.0], [10.0, 11.0, 12.0]])
    a = np.array([[0.5, -0.5], [1.5, -1.5], [NAN, NAN], [3.5, -3.5]])
    return MultimodalDataset({"b": b, "a": a}, y=[0, -1, 2, -1], class_names=["x", "y", "z"])


# ----------------------------------------------------------------------------------------------
# construction and attributes
# ----------------------------------------------------------------------------------------------


def test_attributes(small):
    assert small.modalities == ("b", "a")
    assert small.dims == {"b": 3, "a": 2}
    assert small.num_classes == 3
    assert small.class_names == ("x", "y", "z")
    assert len(small) == 4
    assert small.dtype == torch.float32
    assert small.x["b"].dtype == torch.float32 and small.x["b"].shape == (4, 3)
    assert small.y.dtype == torch.int64
    assert small.y.tolist() == [0, -1, 2, -1]
    assert small.is_labelled.tolist() == [True, False, True, False]
    assert small.class_counts().tolist() == [1, 0, 1]


def test_missing_rows_are_masked_and_zero_filled(small):
    assert small.mask.dtype == torch.bool
    assert small.mask.tolist() == [[True, True], [False, True], [True, False], [True, True]]
    assert small.x["b"][1].tolist() == [0.0, 0.0, 0.0]
    assert small.x["a"][2].tolist() == [0.0, 0.0]
    assert small.x["b"][3].tolist() == [10.0, 11.0, 12.0]


def test_defaults_for_labels_and_class_names():
    ds = MultimodalDataset({"m": np.zeros((3, 2))}, num_classes=4)
    assert ds.y.tolist() == [-1, -1, -1]
    assert ds.class_names == ("0", "1", "2", "3")
    ds = MultimodalDataset({"m": np.zeros((3, 2))}, y=[1, 0, 1])
    assert ds.num_classes == 2 and ds.class_counts().tolist() == [1, 2]
    ds = MultimodalDataset({"m": np.zeros((3, 2))}, y=[1, 0, 1], num_classes=5)
    assert ds.class_counts().tolist() == [1, 2, 0, 0, 0]


def test_accepts_dataframes_tensors_ints_and_integer_valued_float_labels():
    frame = pd.DataFrame({"u": [1, 2, 3], "v": [4.0, 5.0, 6.0]})
    ds = MultimodalDataset(
        {"df": frame, "t": torch.arange(6).reshape(3, 2), "i": np.ones((3, 1), dtype=int)},
        y=np.array([1.0, 0.0, -1.0]),
    )
    assert ds.x["df"].tolist() == [[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]]
    assert ds.x["t"].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert ds.y.tolist() == [1, 0, -1]


def test_input_arrays_are_copied():
    data = np.ones((2, 2), dtype=np.float32)
    ds = MultimodalDataset({"m": data}, y=[0, 1])
    data[0, 0] = 99.0
    assert ds.x["m"][0, 0].item() == 1.0


# ----------------------------------------------------------------------------------------------
# validation at the boundary
# ----------------------------------------------------------------------------------------------

_ok = np.zeros((3, 2))


@pytest.mark.parametrize(
    "x, y, kwargs, match",
    [
        ({"m": _ok, "n": np.zeros((4, 2))}, None, {"num_classes": 2}, r"same number of rows"),
        ({"m": np.array([[1.0, np.inf], [0, 0], [0, 0]])}, [0, 1, 0], {}, r"infinite"),
        ({"m": np.array([[NAN, NAN], [0, 0], [0, 0]]), "n": np.array([[NAN], [1], [1]])},
         [0, 1, 0], {}, r"rows 0 .*missing every modality"),
        ({"m": _ok}, [0, 1, 3], {"num_classes": 3}, r"expected labels in \[-1, 3\).*found \[3\]"),
        ({"m": _ok}, [0, -2, 1], {}, r"expected labels >= -1"),
        ({"m": _ok}, [0, 1.5, 1], {}, r"non-integer values \[1.5\]"),
        ({"m": _ok}, [0, NAN, 1], {}, r"non-integer values \[nan\].*NaN is not a label"),
        ({"m": _ok}, ["a", "b", "a"], {}, r"integer class indices.*dtype"),
        ({"m": _ok}, [0, 1], {}, r"y: expected a 1-D array of 3 labels; found shape \(2,\)"),
        ({"m": np.zeros((0, 2))}, [], {"num_classes": 2}, r"at least one row and one column"),
        ({"m": np.zeros((3, 0))}, None, {"num_classes": 2}, r"found shape \(3, 0\)"),
        ({}, None, {"num_classes": 2}, r"at least one modality"),
        ({"m": np.zeros(3)}, [0, 1, 0], {}, r"expected a 2-D array.*found shape \(3,\)"),
        ({"m": np.array([["a", "b"]] * 3)}, [0, 1, 0], {}, r"expected numeric values"),
        ({"m": _ok}, None, {}, r"num_classes: no row is labelled.*pass num_classes \(or "
         r"class_names\)"),
        ({"m": _ok}, [0, 1, 0], {"num_classes": 0}, r"num_classes: expected a positive"),
        ({"m": _ok}, [0, 1, 0], {"class_names": ["a"]},
         r"class_names: expected at least 2 names \(one per class; the labels go up to 1\)"),
        ({"m": _ok}, [0, 1, 0], {"num_classes": 3, "class_names": ["a", "b"]},
         r"class_names: expected 3 names"),
        ({"m": np.ones((3, 2)) + 1j}, [0, 1, 0], {}, r"x\['m'\]: expected real values; found "
         r"complex dtype complex128 \(the imaginary part would be lost"),
        ({"m": np.array([[1e39, 0.0], [0, 0], [0, 0]])}, [0, 1, 0], {},
         r"x\['m'\]: rows 0 hold values beyond the float32 range \(1 rows, e.g. 1e\+39\)"),
        ({"m": np.array([[0.0, 0.0], [-4e38, 0], [0, 0]])}, [0, 1, 0], {}, r"rows 1 .*float32"),
        ({"m": np.array([[1, None]] * 3, dtype=object)}, [0, 1, 0], {},
         r"x\['m'\]: expected numeric values .*found dtype object"),
        ({"m": np.array([["1.5", "2"]] * 3)}, [0, 1, 0], {}, r"expected numeric values"),
        ({"m": pd.DataFrame({"u": [1.0, 2, 3], "s": ["a", "b", "c"]})}, [0, 1, 0], {},
         r"x\['m'\]: expected real numeric or bool columns; found non-numeric columns \['s'\]"),
        ({"m": pd.DataFrame({"c": np.ones(3) + 1j})}, [0, 1, 0], {}, r"complex columns \['c'\]"),
        ({"m": _ok, "n": np.full((3, 2), NAN)}, [0, 1, 0], {},
         r"x: modalities \['n'\] are observed in no row"),
        ({"m": _ok}, [0, None, 1], {}, r"y: expected integer class indices .*dtype object"),
        ({"m": _ok}, [0, 1e20, 1], {}, r"y: expected class indices .*found \[1e\+20\]"),
        ({"m": _ok}, [0, 10**12, 1], {},
         r"num_classes: the largest label is 1000000000000, which would make 1000000000001 "
         r"classes for 3 rows"),
        ({"m": _ok}, [0, -1, 5], {}, r"num_classes: the largest label is 5"),
        ({"m": pd.DataFrame(_ok), "n": pd.DataFrame(_ok, index=[2, 1, 0])}, [0, 1, 0], {},
         r"x: the row index of x\['n'\] differs from that of x\['m'\]"),
        ({"m": pd.DataFrame(_ok)}, pd.Series([0, 1, 0], index=[5, 6, 7]), {},
         r"y: the row index of y differs from that of x\['m'\]"),
        ({"m": _ok}, [0, 1, 0], {"class_names": "ab"}, r"single string"),
        ({1: _ok}, [0, 1, 0], {}, r"non-empty strings"),
    ],
)
def test_invalid_input_raises_value_error(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultimodalDataset(x, y, **kwargs)


def test_valid_edge_cases_are_accepted():
    # the float32 limit itself is fine, and float32 input is never "beyond float32"
    top = float(np.finfo(np.float32).max)
    ds = MultimodalDataset({"m": np.array([[top, -top], [0.0, 1.0]])}, [0, 1])
    assert ds.x["m"][0].tolist() == [top, -top]
    # a DataFrame mixing bool and float columns (its to_numpy() is an object array)
    frame = pd.DataFrame({"f": [1.5, 2.5], "b": [True, False]})
    assert MultimodalDataset({"m": frame}, [0, 1]).x["m"].tolist() == [[1.5, 1.0], [2.5, 0.0]]
    # nullable pandas dtypes: NA marks a missing row like NaN
    nullable = pd.DataFrame({"i": pd.array([1, None], dtype="Int64")})
    assert MultimodalDataset({"m": nullable, "n": _ok[:2]}, [0, 1]).mask.tolist() == [
        [True, True], [False, True]]
    # class_names alone give K, also without labels
    assert MultimodalDataset({"m": _ok}, class_names=["a", "b"]).num_classes == 2
    assert MultimodalDataset({"m": _ok}, [0, 0, -1], class_names=["a", "b", "c"]).num_classes == 3
    # bfloat16 tensors are widened exactly
    bf16 = torch.tensor([[1.5], [2.0]], dtype=torch.bfloat16)
    assert MultimodalDataset({"m": bf16}, [0, 1]).x["m"].tolist() == [[1.5], [2.0]]
    # aligned pandas inputs, and a y Series with the same index
    index = pd.Index([10, 11, 12])
    ds = MultimodalDataset({"m": pd.DataFrame(_ok, index=index)},
                           pd.Series([0, 1, 0], index=index))
    assert ds.y.tolist() == [0, 1, 0]


def test_unobserved_modality_can_be_allowed_for_prediction_data():
    x = {"m": _ok, "n": np.full((3, 2), NAN)}
    ds = MultimodalDataset(x, num_classes=2, allow_unobserved_modalities=True)
    assert ds.mask[:, 1].tolist() == [False, False, False]
    with pytest.raises(ValueError, match=r"modalities \['n'\] are observed in no row"):
        MultimodalDataset(x, num_classes=2)


def test_x_must_be_a_mapping():
    with pytest.raises(ValueError, match="x: expected a mapping"):
        MultimodalDataset([np.zeros((2, 2))], [0, 1])


def test_error_names_the_modality():
    with pytest.raises(ValueError, match=r"x\['second'\]: rows 1 hold infinite values"):
        MultimodalDataset({"first": _ok, "second": np.array([[0, 0], [np.inf, 1], [0, 0]])},
                          [0, 1, 0])


def test_a_partly_nan_row_has_missing_cells():
    ds = MultimodalDataset({"first": _ok, "second": np.array([[0, 0], [NAN, 1], [0, 0]])},
                           [0, 1, 0])
    assert ds.mask.all() and list(ds.cells) == ["second"]
    assert ds.cells["second"].tolist() == [[True, True], [False, True], [True, True]]


# ----------------------------------------------------------------------------------------------
# subsets and copies
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "index, rows",
    [
        (np.array([2, 0]), [2, 0]),
        (slice(1, 3), [1, 2]),
        (np.array([True, False, False, True]), [0, 3]),
        (torch.tensor([3, 1]), [3, 1]),
        (torch.tensor([False, True, True, False]), [1, 2]),
        ([-1], [3]),
        (2, [2]),
        (torch.tensor(1), [1]),
        ([], []),
    ],
)
def test_getitem(small, index, rows):
    sub = small[index]
    assert isinstance(sub, MultimodalDataset)
    assert len(sub) == len(rows)
    assert sub.y.tolist() == [small.y[r].item() for r in rows]
    assert torch.equal(sub.x["b"], small.x["b"][rows])
    assert torch.equal(sub.mask, small.mask[rows])
    assert sub.num_classes == 3 and sub.class_names == ("x", "y", "z")
    assert sub.modalities == ("b", "a")


def test_getitem_rejects_bad_indices(small):
    with pytest.raises(IndexError, match="out of range"):
        small[[4]]
    with pytest.raises(IndexError, match="boolean index must have shape"):
        small[np.array([True, False])]
    with pytest.raises(TypeError, match="expected an int"):
        small[np.array([0.5])]


def test_labelled_and_unlabelled_views(small):
    lab, unl = small.labelled(), small.unlabelled()
    assert lab.y.tolist() == [0, 2] and unl.y.tolist() == [-1, -1]
    assert torch.equal(lab.x["a"], small.x["a"][[0, 2]])
    assert len(lab.unlabelled()) == 0  # empty views are allowed
    assert lab.num_classes == unl.num_classes == 3


def test_with_labels(small):
    relabelled = small.with_labels([1, 1, -1, 0])
    assert relabelled.y.tolist() == [1, 1, -1, 0]
    assert small.y.tolist() == [0, -1, 2, -1]  # the original is untouched
    assert relabelled.class_counts().tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match=r"y: expected labels in \[-1, 3\)"):
        small.with_labels([0, 1, 5, 0])
    with pytest.raises(ValueError, match="4 labels"):
        small.with_labels([0, 1])


def test_select_modalities(small):
    only_a = small[[0, 1, 3]].select_modalities(["a"])
    assert only_a.modalities == ("a",) and only_a.dims == {"a": 2}
    assert only_a.mask.tolist() == [[True], [True], [True]]
    assert only_a.x["a"].tolist() == [[0.5, -0.5], [1.5, -1.5], [3.5, -3.5]]
    reordered = small[[0, 3]].select_modalities(["a", "b"])
    assert reordered.modalities == ("a", "b")
    assert reordered.mask.tolist() == [[True, True], [True, True]]
    assert torch.equal(reordered.x["b"], small.x["b"][[0, 3]])
    assert small[[0, 1, 3]].select_modalities("a").modalities == ("a",)


def test_select_modalities_errors(small):
    with pytest.raises(ValueError, match=r"unknown modalities \['c'\]; expected names among"):
        small.select_modalities(["c"])
    with pytest.raises(ValueError, match="distinct"):
        small.select_modalities(["a", "a"])
    with pytest.raises(ValueError, match="at least one modality"):
        small.select_modalities([])
    with pytest.raises(ValueError, match=r"rows 2 .*observe none of the modalities \['a'\]"):
        small.select_modalities(["a"])


def test_to_dtype(small):
    double = small.to(torch.float64)
    assert double.dtype == torch.float64 and double.x["a"].dtype == torch.float64
    assert double.x["a"].tolist() == small.x["a"].tolist()
    assert small.dtype == torch.float32
    with pytest.raises(ValueError, match="floating dtype"):
        small.to(torch.int64)


def test_to_numpy_and_concatenated(small):
    x, y = small.to_numpy()
    assert list(x) == ["b", "a"] and x["b"].dtype == np.float64
    assert np.isnan(x["b"][1]).all() and np.isnan(x["a"][2]).all()
    np.testing.assert_array_equal(x["a"][[0, 1, 3]], [[0.5, -0.5], [1.5, -1.5], [3.5, -3.5]])
    assert y.tolist() == [0, -1, 2, -1]
    flat = small.concatenated()
    assert flat.shape == (4, 5)
    np.testing.assert_array_equal(flat[0], [1.0, 2.0, 3.0, 0.5, -0.5])
    assert np.isnan(flat[1, :3]).all() and not np.isnan(flat[1, 3:]).any()


def test_summary_and_repr(small):
    text = small.summary()
    assert "N = 4" in text and "labelled = 2" in text and "K = 3" in text
    assert "missing_fraction" in text and "0.25" in text
    assert repr(small) == (
        "MultimodalDataset(N=4, dims={'b': 3, 'a': 2}, num_classes=3, labelled=2, missing=25.0%)"
    )


# ----------------------------------------------------------------------------------------------
# npz
# ----------------------------------------------------------------------------------------------


def test_npz_round_trip_with_missing_rows(small, tmp_path):
    path = tmp_path / "small.npz"
    small.to_npz(path)
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {"x_b", "x_a", "y", "class_names", "modalities"}
        assert np.isnan(npz["x_b"][1]).all() and npz["x_b"].dtype == np.float32
    back = MultimodalDataset.from_npz(path)
    assert back.modalities == ("b", "a")
    assert back.class_names == small.class_names and back.num_classes == 3
    assert torch.equal(back.mask, small.mask)
    assert torch.equal(back.y, small.y)
    for name in small.modalities:
        assert torch.equal(back.x[name], small.x[name])


def test_from_hand_written_npz(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, x_one=np.array([[1.0], [NAN]]), x_two=np.ones((2, 2)), y=np.array([1, -1]))
    ds = MultimodalDataset.from_npz(path)
    assert ds.modalities == ("one", "two") and ds.num_classes == 2
    assert ds.mask.tolist() == [[True, True], [False, True]]


def test_from_npz_refuses_pickled_arrays_and_missing_arrays(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, x_m=np.array([[1.0, None]], dtype=object), y=np.array([0]))
    with pytest.raises(ValueError, match=r"path: array 'x_m' in .*pickled\.npz holds pickled "
                       r"Python objects .*pickled objects are refused .*allow_pickle=False"):
        MultimodalDataset.from_npz(path)
    path = tmp_path / "no_y.npz"
    np.savez(path, x_m=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"expected arrays 'x_<modality>' and 'y'.*"
                                         r"labels='optional'"):
        MultimodalDataset.from_npz(path)
    path = tmp_path / "no_x.npz"
    np.savez(path, y=np.ones(2))
    with pytest.raises(ValueError, match=r"expected arrays 'x_<modality>' in"):
        MultimodalDataset.from_npz(path, labels="optional")


def _write_bytes(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    "make, why",
    [
        # a valid archive cut in half: the zip's directory (at its end) is gone
        (lambda p, good: _write_bytes(p, good[: len(good) // 2]), "damaged or truncated zip"),
        (lambda p, good: _write_bytes(p, b""), "neither a zip archive nor a .npy array"),
        (lambda p, good: _write_bytes(p, b"x,y\n1,2\n"), "neither a zip archive nor a .npy"),
        (lambda p, good: np.save(p.with_suffix(".npy"), np.ones(3)) or p.with_suffix(".npy"),
         "a single .npy array"),
        (lambda p, good: _zip_with_text(p), "member 'notes.txt' is not a .npy array"),
    ],
)
def test_from_npz_unreadable_files(small, tmp_path, make, why):
    good_path = tmp_path / "good.npz"
    small.to_npz(good_path)
    path = make(tmp_path / "bad.npz", good_path.read_bytes())
    with pytest.raises(ValueError) as error:
        MultimodalDataset.from_npz(path)
    message = str(error.value)
    assert message.startswith(f"path: {path} is not a readable .npz file (")
    assert why in message and "pickled" not in message


def _zip_with_text(path):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not an array")
    return path


def test_from_npz_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        MultimodalDataset.from_npz(tmp_path / "absent.npz")


def test_from_npz_features_only(small, tmp_path):
    path = tmp_path / "features.npz"
    x, _ = small.to_numpy()
    np.savez(path, **{f"x_{name}": array for name, array in x.items()})
    ds = MultimodalDataset.from_npz(path, labels="optional", num_classes=3)
    assert ds.modalities == ("b", "a") and ds.num_classes == 3
    assert ds.y.tolist() == [-1] * 4 and ds.class_names == ("0", "1", "2")
    assert torch.equal(ds.mask, small.mask)
    named = MultimodalDataset.from_npz(path, labels="optional", class_names=["x", "y", "z"])
    assert named.num_classes == 3 and named.class_names == ("x", "y", "z")
    with pytest.raises(ValueError, match=r"num_classes: .*features\.npz holds no labels \('y'\), "
                                         r"so the number of classes cannot be inferred; pass "
                                         r"num_classes \(or class_names\)"):
        MultimodalDataset.from_npz(path, labels="optional")
    with pytest.raises(ValueError, match="labels: expected 'required' or 'optional'"):
        MultimodalDataset.from_npz(path, labels="none")
    # a labelled file read with labels="optional" keeps its labels
    small.to_npz(tmp_path / "full.npz")
    assert MultimodalDataset.from_npz(tmp_path / "full.npz", labels="optional").y.tolist() == [
        0, -1, 2, -1]


def test_from_npz_class_names_and_num_classes(small, tmp_path):
    path = tmp_path / "small.npz"
    small.to_npz(path)  # class_names x, y, z
    assert MultimodalDataset.from_npz(path, class_names=["x", "y", "z"]).num_classes == 3
    assert MultimodalDataset.from_npz(path, num_classes=3).class_names == ("x", "y", "z")
    with pytest.raises(ValueError, match=r"class_names: .*holds class_names \['x', 'y', 'z'\]; "
                                         r"found \['a', 'b', 'c'\]"):
        MultimodalDataset.from_npz(path, class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"path: array 'class_names' in .*: expected 4 names"):
        MultimodalDataset.from_npz(path, num_classes=4)
    with pytest.raises(ValueError, match=r"path: array 'y' in .*: expected labels in \[-1, 2\) "
                                         r"\(num_classes=2"):
        MultimodalDataset.from_npz(path, num_classes=2)


def test_from_npz_names_the_files_arrays(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_m=np.array([[1.0, np.inf], [1, 1]]), y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"path: array 'x_m' in .*bad\.npz: rows 0 hold infinite"):
        MultimodalDataset.from_npz(path)
    np.savez(path, x_m=np.ones((2, 1)), y=np.array([0, 1.5]))
    with pytest.raises(ValueError, match=r"path: array 'y' in .*bad\.npz: .*non-integer values"):
        MultimodalDataset.from_npz(path)
    np.savez(path, x_m=np.ones((2, 1)), y=np.array([0, 1]), ids=np.arange(2))
    with pytest.raises(ValueError, match=r"holds arrays \['ids'\] that are not part of a data set"):
        MultimodalDataset.from_npz(path)
    np.savez(path, x_m=np.ones((2, 1)), x_n=np.ones((2, 1)), y=np.array([0, 1]),
             modalities=np.array(["m"]))
    with pytest.raises(ValueError, match=r"the array 'modalities' in .* lists \['m'\]; expected "
                                         r"exactly the file's 'x_<modality>' arrays"):
        MultimodalDataset.from_npz(path)
    np.savez(path, x_m=np.ones((2, 1)), x_n=np.full((2, 1), NAN), y=np.array([0, 1]))
    with pytest.raises(ValueError, match=r"modalities \['n'\] are observed in no row"):
        MultimodalDataset.from_npz(path)
    ds = MultimodalDataset.from_npz(path, allow_unobserved_modalities=True)
    assert ds.mask.tolist() == [[True, False], [True, False]]
    np.savez(path, x_m=np.ones((2, 1)), y=np.array([-1, -1]))
    with pytest.raises(ValueError, match=r"num_classes: no row of .*bad\.npz is labelled"):
        MultimodalDataset.from_npz(path)


# ----------------------------------------------------------------------------------------------
# Batch
# ----------------------------------------------------------------------------------------------


def test_batch_labelled_unlabelled_and_mixed(small):
    lab = small.batch([2, 0])
    assert isinstance(lab, Batch)
    assert lab.size == 2 and lab.is_labelled
    assert lab.y.tolist() == [2, 0] and lab.index.tolist() == [2, 0]
    assert lab.index.dtype == torch.int64
    assert lab.mask.tolist() == [[True, False], [True, True]]
    assert lab.x["b"].tolist() == [[7.0, 8.0, 9.0], [1.0, 2.0, 3.0]]
    assert lab.modalities == ("b", "a")
    unl = small.batch(np.array([False, True, False, True]))
    assert unl.y is None and unl.index.tolist() == [1, 3] and not unl.is_labelled
    assert unl.x["b"][0].tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="mixes 1 labelled and 1 unlabelled rows"):
        small.batch([0, 1])
    with pytest.raises(ValueError, match="at least one row"):
        small.batch([])


# ----------------------------------------------------------------------------------------------
# InterleavedLoader
# ----------------------------------------------------------------------------------------------


def _semi(n_lab, n_unl, seed=0):
    """n_lab labelled rows then n_unl unlabelled rows (shuffled positions); x = row id."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(n_lab) % 3, -np.ones(n_unl, dtype=int)])
    order = rng.permutation(n_lab + n_unl)
    ids = np.arange(n_lab + n_unl, dtype=float)[:, None]
    return MultimodalDataset({"m": ids}, y[order], num_classes=3)


def _epoch(loader):
    return [(b.index.tolist(), b.y is not None, n) for b, n in loader]


def test_interleaving_sizes_and_coverage():
    ds = _semi(n_lab=5, n_unl=10)
    loader = InterleavedLoader(ds, batch_size=4)
    assert loader.labelled_batch_size == 4  # min(batch_size, n_labelled)
    batches = list(loader)
    assert len(loader) == len(batches) == 6  # ceil(10 / 4) unlabelled batches, each paired
    assert [b.y is not None for b, _ in batches] == [True, False] * 3
    assert [n for _, n in batches] == [5, 10] * 3
    assert [b.size for b, _ in batches] == [4, 4, 4, 4, 4, 2]
    unlabelled_seen = np.concatenate([b.index.numpy() for b, _ in batches[1::2]])
    assert sorted(unlabelled_seen) == np.flatnonzero(ds.y.numpy() < 0).tolist()
    labelled_rows = set(np.flatnonzero(ds.y.numpy() >= 0).tolist())
    stream = []
    for b, _ in batches[0::2]:
        rows = b.index.tolist()
        assert len(set(rows)) == len(rows)  # no row twice in a labelled batch
        assert set(rows) <= labelled_rows
        assert torch.equal(b.y, ds.y[b.index])
        stream += rows
    # the labelled rows are cycled: each block of 5 in the stream is a permutation of them
    assert set(stream[0:5]) == labelled_rows and set(stream[5:10]) == labelled_rows


def test_labelled_cycle_straddle_keeps_cycles_complete():
    ds = _semi(n_lab=7, n_unl=40)
    loader = InterleavedLoader(ds, batch_size=4, labelled_batch_size=3, seed=3)
    stream = []
    for b, _ in loader:
        if b.y is not None:
            rows = b.index.tolist()
            assert len(rows) == 3 and len(set(rows)) == 3
            stream += rows
    assert len(stream) == 30
    labelled_rows = set(np.flatnonzero(ds.y.numpy() >= 0).tolist())
    for start in range(0, 28, 7):
        assert set(stream[start:start + 7]) == labelled_rows


def test_labelled_batch_size_is_capped():
    loader = InterleavedLoader(_semi(n_lab=3, n_unl=8), batch_size=4, labelled_batch_size=10)
    assert loader.labelled_batch_size == 3
    assert [b.size for b, _ in loader] == [3, 4, 3, 4]


def test_only_labelled_rows_one_pass():
    ds = _semi(n_lab=10, n_unl=0)
    loader = InterleavedLoader(ds, batch_size=4)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [b.size for b, _ in batches] == [4, 4, 2]
    assert all(b.y is not None and n == 10 for b, n in batches)
    assert sorted(np.concatenate([b.index.numpy() for b, _ in batches])) == list(range(10))


def test_only_unlabelled_rows():
    ds = MultimodalDataset({"m": np.zeros((7, 1))}, num_classes=2)
    loader = InterleavedLoader(ds, batch_size=3)
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert all(b.y is None and n == 7 for b, n in batches)
    assert sorted(np.concatenate([b.index.numpy() for b, _ in batches])) == list(range(7))


def test_no_shuffle_is_in_order_and_wraps():
    ds = MultimodalDataset({"m": np.zeros((8, 1))}, [0, 1, 0, -1, -1, -1, -1, -1])
    loader = InterleavedLoader(ds, batch_size=2, shuffle=False)
    assert _epoch(loader) == [
        ([0, 1], True, 3), ([3, 4], False, 5),
        ([2, 0], True, 3), ([5, 6], False, 5),
        ([1, 2], True, 3), ([7], False, 5),
    ]


def test_determinism_and_epochs():
    ds = _semi(n_lab=6, n_unl=20)
    first, again = InterleavedLoader(ds, 4, seed=1), InterleavedLoader(ds, 4, seed=1)
    epoch0 = _epoch(first)
    assert _epoch(again) == epoch0
    epoch1 = _epoch(first)
    assert first.epoch == 2 and epoch1 != epoch0
    first.set_epoch(0)
    assert _epoch(first) == epoch0
    assert _epoch(InterleavedLoader(ds, 4, seed=2)) != epoch0


def test_loader_validation():
    ds = _semi(2, 2)
    with pytest.raises(ValueError, match="batch_size: expected a positive integer; found 0"):
        InterleavedLoader(ds, batch_size=0)
    with pytest.raises(ValueError, match="labelled_batch_size"):
        InterleavedLoader(ds, labelled_batch_size=-1)
    with pytest.raises(ValueError, match="seed"):
        InterleavedLoader(ds, seed=-1)
    with pytest.raises(ValueError, match="dataset: expected a MultimodalDataset"):
        InterleavedLoader(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="epoch"):
        InterleavedLoader(ds).set_epoch(-1)


# ----------------------------------------------------------------------------------------------
# Standardiser
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def numeric():
    m = np.array([[1.0, 10.0], [3.0, 10.0], [NAN, NAN], [5.0, 10.0]])
    n = np.array([[2.0], [4.0], [6.0], [8.0]])
    return MultimodalDataset({"m": m, "n": n}, y=[0, 1, -1, 0])


def test_standardiser_hand_values(numeric):
    scaler = Standardiser().fit(numeric)
    # present rows of m: [1, 3, 5] -> mean 3, std (ddof=0) sqrt(8/3); constant column -> 1
    np.testing.assert_allclose(scaler.mean_["m"], [3.0, 10.0])
    np.testing.assert_allclose(scaler.scale_["m"], [np.sqrt(8 / 3), 1.0])
    np.testing.assert_allclose(scaler.mean_["n"], [5.0])
    np.testing.assert_allclose(scaler.scale_["n"], [np.sqrt(5.0)])
    out = scaler.transform(numeric)
    s = np.sqrt(8 / 3)
    np.testing.assert_allclose(
        out.x["m"].numpy(), [[-2 / s, 0.0], [0.0, 0.0], [0.0, 0.0], [2 / s, 0.0]], rtol=1e-6
    )
    assert torch.equal(out.mask, numeric.mask) and torch.equal(out.y, numeric.y)
    assert out.dtype == torch.float32


def test_standardiser_fits_training_rows_only(numeric):
    train, test = numeric[[0, 1]], numeric[[3]]
    scaler = Standardiser().fit(train)  # m: mean [2, 10], std [1, 1 (constant)]
    assert scaler.transform(test).x["m"].tolist() == [[3.0, 0.0]]
    assert scaler.fit_transform(train).x["m"].tolist() == [[-1.0, 0.0], [1.0, 0.0]]


def test_standardiser_keeps_float64(numeric):
    out = Standardiser().fit_transform(numeric.to(torch.float64))
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.x["n"].numpy().ravel(), (np.array([2, 4, 6, 8]) - 5) / 5**0.5)


def test_standardiser_inverse_and_state_dict(numeric, tmp_path):
    scaler = Standardiser().fit(numeric)
    z = scaler.transform_modality("m", np.array([[5.0, 12.0]]))
    np.testing.assert_allclose(z, [[2 / np.sqrt(8 / 3), 2.0]])
    np.testing.assert_allclose(scaler.inverse_transform_modality("m", z), [[5.0, 12.0]])
    back = scaler.inverse_transform_modality("n", torch.tensor([[1.0]], dtype=torch.float64))
    assert isinstance(back, torch.Tensor) and back.item() == pytest.approx(5 + 5**0.5)
    np.savez(tmp_path / "scaler.npz", **scaler.state_dict())
    with np.load(tmp_path / "scaler.npz", allow_pickle=False) as npz:
        loaded = Standardiser.from_state_dict(npz)
    assert loaded.modalities == ("m", "n")
    assert torch.equal(loaded.transform(numeric).x["m"], scaler.transform(numeric).x["m"])


def test_standardiser_errors(numeric):
    with pytest.raises(ValueError, match="not fitted"):
        Standardiser().transform(numeric)
    scaler = Standardiser().fit(numeric)
    other = MultimodalDataset({"c": np.zeros((2, 1))}, y=[0, 1])
    with pytest.raises(ValueError, match=r"unknown modalities \['c'\]"):
        scaler.transform(other)
    with pytest.raises(ValueError, match=r"unknown modalities \['c'\]"):
        scaler.inverse_transform_modality("c", np.zeros((1, 1)))
    wider = MultimodalDataset({"n": np.zeros((2, 3))}, y=[0, 1])
    with pytest.raises(ValueError, match="has 3 features; expected 1"):
        scaler.transform(wider)
    with pytest.raises(ValueError, match="observed in no row"):
        Standardiser().fit(MultimodalDataset({"m": np.ones((2, 1)), "n": np.full((2, 1), NAN)},
                                             y=[0, 1]))
    with pytest.raises(ValueError, match="mean_<modality>"):
        Standardiser.from_state_dict({"modalities": np.array(["m"])})


def test_subsample_keeps_every_labelled_row():
    x = {"a": np.arange(40.0).reshape(20, 2)}
    y = np.array([0, 1, 2] + [-1] * 17)
    data = MultimodalDataset(x, y)
    small = data.subsample(8, seed=1)
    assert len(small) == 8 and int(small.is_labelled.sum()) == 3
    assert sorted(small.y[small.is_labelled].tolist()) == [0, 1, 2]
    rows = small.x["a"][:, 0].numpy() / 2  # original row numbers, in order
    assert np.all(np.diff(rows) > 0)
    assert len(data.subsample(100)) == 20
    assert len(data.labelled().subsample(2, seed=0)) == 2  # fully labelled: uniform
    with pytest.raises(ValueError, match="n:"):
        data.subsample(0)
