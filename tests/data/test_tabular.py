"""Tables as statisticians hold them: DataFrames, CSV and Parquet files with a schema."""

import json

import numpy as np
import pandas as pd
import pytest

from pyro_mmt.data import MultimodalDataset, TableSchema, read_table

NAN = np.nan


@pytest.fixture
def frame():
    """6 rows: modality size (2 columns, missing in row 2), texture (1 column), site (text);
    labels benign/malignant with three unlabelled markers (empty, -1, None)."""
    return pd.DataFrame({
        "id": [10, 11, 12, 13, 14, 15],
        "radius": [1.0, 2.0, NAN, 4.0, 5.0, 6.0],
        "area": [3.0, 1.0, NAN, 2.0, 0.5, 7.0],
        "smoothness": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        "site": ["left", "right", "left", None, "right", "left"],
        "diagnosis": ["benign", NAN, "malignant", "-1", None, "benign"],
    })


SCHEMA = dict(modalities={"size": ["radius", "area"], "texture": ["smoothness"],
                          "site": ["site"]}, label="diagnosis", ignore=["id"])


def test_a_frame_with_a_schema(frame):
    data, schema = TableSchema(**SCHEMA).encode(frame)
    assert data.modalities == ("size", "texture", "site")
    assert data.class_names == ("benign", "malignant")
    assert data.y.tolist() == [0, -1, 1, -1, -1, 0]
    assert data.mask[:, 0].tolist() == [True, True, False, True, True, True]
    assert data.mask[:, 2].tolist() == [True, True, True, False, True, True]
    assert data.x["site"][:, 0].tolist() == [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    assert schema.categories == {"site": ("left", "right")}
    assert schema.likelihood == {"site": "categorical"}
    assert schema.classes == ("benign", "malignant")


def test_from_dataframe_with_prefixes():
    frame = pd.DataFrame({"a__1": [0.5, 1.0, 2.0], "a__2": [1.0, 2.0, 3.0],
                          "b__x": [1.0, NAN, 3.0], "label": [3, -1, 7]})
    data = MultimodalDataset.from_dataframe(frame, label="label")
    assert data.dims == {"a": 2, "b": 1}
    assert data.class_names == ("3", "7") and data.y.tolist() == [0, -1, 1]


def test_new_tables_are_coded_as_the_first(frame):
    _, schema = TableSchema(**SCHEMA).encode(frame)
    new = frame.drop(columns="diagnosis").iloc[[5, 1]]
    data, same = schema.encode(new.reset_index(drop=True), labels="optional")
    assert data.x["site"][:, 0].tolist() == [0.0, 1.0]
    assert data.class_names == ("benign", "malignant") and data.y.tolist() == [-1, -1]
    assert same == schema
    without = new.drop(columns=["radius", "area"]).reset_index(drop=True)
    data, _ = schema.encode(without, labels="optional", allow_unobserved_modalities=True)
    assert data.mask[:, 0].tolist() == [False, False]  # size: absent, so missing
    unknown = new.assign(site=["middle", "left"]).reset_index(drop=True)
    with pytest.raises(ValueError, match=r"^frame: column 'site', row 0: found the category "
                                         r"'middle'; expected one of \['left', 'right'\]"):
        schema.encode(unknown, labels="optional")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_files_round_trip(frame, tmp_path, suffix):
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.assign(diagnosis=frame["diagnosis"].astype(object).where(
            frame["diagnosis"].notna(), None)).to_parquet(path)
    data, schema = read_table(path, TableSchema(**SCHEMA))
    assert data.class_names == ("benign", "malignant")
    assert data.y.tolist() == [0, -1, 1, -1, -1, 0]
    assert data.mask[:, 0].tolist() == [True, True, False, True, True, True]


def test_schema_files(tmp_path, frame):
    (tmp_path / "s.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "s.toml").write_text(
        'label = "diagnosis"\nignore = ["id"]\n[modalities]\nsize = ["radius", "area"]\n'
        'texture = ["smoothness"]\nsite = ["site"]\n')
    for name in ("s.json", "s.toml"):
        schema = TableSchema.from_file(tmp_path / name)
        assert schema.encode(frame)[0].modalities == ("size", "texture", "site")
    _, learnt = TableSchema(**SCHEMA).encode(frame)
    assert TableSchema.from_dict(json.loads(json.dumps(learnt.to_dict()))) == learnt
    (tmp_path / "bad.json").write_text(json.dumps({"modalites": {}}))
    with pytest.raises(ValueError, match=r"unknown keys \['modalites'\]"):
        TableSchema.from_file(tmp_path / "bad.json")


def test_a_partly_empty_modality_row_has_missing_cells(frame, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frame.assign(area=[3.0, 1.0, 2.0, 2.0, 0.5, 7.0]).to_csv("data.csv", index=False)
    data = read_table("data.csv", TableSchema(**SCHEMA))[0]
    j = data.modalities.index("size")
    assert data.mask[2, j] and "size" in data.cells
    assert not data.cells["size"][2].all() and data.cells["size"][2].any()


@pytest.mark.parametrize("change, message", [
    (lambda f: f.assign(smoothness=["0.1", "x", "0.3", "0.4", "0.5", "0.6"]),
     r"^data.csv: column 'smoothness', row 1 \(line 3\): found 'x', not a number"),
    (lambda f: f.assign(extra=1.0),
     r"^data.csv: columns \['extra'\] belong to no modality"),
    (lambda f: f.drop(columns="diagnosis"), r"^data.csv: no label column 'diagnosis'"),
    (lambda f: f.assign(diagnosis=None), r"^data.csv: no row of column 'diagnosis' is labelled"),
])
def test_errors_name_the_file_the_column_and_the_row(frame, tmp_path, monkeypatch, change,
                                                     message):
    monkeypatch.chdir(tmp_path)
    change(frame).to_csv("data.csv", index=False)
    with pytest.raises(ValueError, match=message):
        read_table("data.csv", TableSchema(**SCHEMA))


def test_numbers_as_text_and_empty_rows():
    frame = pd.DataFrame({"a__x": pd.Series(["0.1", "2", None], dtype="string"),
                          "a__y": [1.0, 2.0, None], "b__z": [1.0, None, 3.0],
                          "label": ["u", "v", None]})
    data, _ = TableSchema(label="label").encode(frame)
    assert data.x["a"][:, 0].tolist() == pytest.approx([0.1, 2.0, 0.0])
    assert data.mask.tolist() == [[True, True], [True, False], [False, True]]
    with pytest.raises(ValueError, match=r"^frame: every feature cell is empty in row 1 "):
        TableSchema(label="label").encode(frame.assign(b__z=[1.0, None, 3.0]).iloc[[0, 1]]
                                          .assign(a__x=["1", None], a__y=[1.0, None]))
    with pytest.raises(ValueError, match=r"^frame: modalities \['b'\] are empty in every row"):
        TableSchema(label="label").encode(frame.assign(b__z=None, a__x="1", a__y=1.0))


def test_mixed_labels_in_a_frame(frame):
    with pytest.raises(ValueError, match=r"^frame: column 'diagnosis' mixes label types "
                                         r"\['int', 'str'\]"):
        TableSchema(**SCHEMA).encode(frame.assign(diagnosis=["a", 1, "b", "c", "d", "e"]))


def test_unprefixed_columns_and_unknown_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pd.DataFrame({"a__1": [1.0, 2.0], "age": [3, 4], "label": [0, 1]}).to_csv("t.csv",
                                                                               index=False)
    with pytest.raises(ValueError, match=r"^t.csv: column 'age' has no modality prefix"):
        read_table("t.csv")
    with pytest.raises(ValueError, match=r"^path: no file at nothing.csv"):
        read_table("nothing.csv")
    with pytest.raises(ValueError, match=r"^path: expected a .csv, .parquet, .pq file"):
        read_table("t.xlsx")
