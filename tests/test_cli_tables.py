"""From a CSV (or Parquet) file as a statistician holds it to a run folder, its evaluation and
its predictions by class name: the command line and the estimator agree on the classes."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pyro_mmt.cli import main
from pyro_mmt.data import MultimodalDataset, TableSchema
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier

#: a small single model (the ensemble of the defaults is tested with the estimator)
SMALL = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--batch-size", "32", "--quiet",
         "--n-init", "1"]

SCHEMA_TOML = """\
label = "diagnosis"
ignore = ["id"]

[modalities]
size = ["radius", "area"]
texture = ["smoothness", "symmetry"]
site = ["site"]
"""


@pytest.fixture
def biopsies(tmp_path):
    """90 biopsies: labels benign/malignant (60 rows unlabelled as empty cells), the texture
    modality missing (empty) for every sixth row, a text column ``site``."""
    rng = np.random.default_rng(0)
    n = 90
    malignant = rng.random(n) < 0.35
    frame = pd.DataFrame({
        "id": np.arange(1000, 1000 + n),
        "radius": rng.normal(12 + 5 * malignant, 2),
        "area": rng.normal(500 + 300 * malignant, 80),
        "smoothness": rng.normal(0.1 + 0.02 * malignant, 0.01),
        "symmetry": rng.normal(0.18, 0.02, n),
        "site": rng.choice(["left", "right"], n),
        "diagnosis": np.where(malignant, "malignant", "benign").astype(object),
    })
    frame.loc[30:, "diagnosis"] = None  # written as empty cells
    frame.loc[::6, ["smoothness", "symmetry"]] = np.nan
    frame.loc[:1, "diagnosis"] = ["benign", "malignant"]
    path = tmp_path / "biopsy.csv"
    frame.to_csv(path, index=False)
    (tmp_path / "schema.toml").write_text(SCHEMA_TOML)
    return path, tmp_path / "schema.toml", frame


def _cli(*argv):
    done = subprocess.run([sys.executable, "-m", "pyro_mmt.cli", *argv], capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_csv_from_the_command_line_to_named_predictions(biopsies, tmp_path):
    path, schema, frame = biopsies
    run = tmp_path / "run"
    _cli("train", str(path), "--schema", str(schema), "--out", str(run), *SMALL)
    config = json.loads((run / "config.json").read_text())
    assert "rho" not in config and "beta" not in config  # no split of a file
    assert config["estimator"]["likelihood"] == {"site": "categorical"}
    learnt = TableSchema.from_file(run / "schema.json")
    assert learnt.classes == ("benign", "malignant")
    assert learnt.categories == {"site": ("left", "right")}

    out = _cli("evaluate", str(run), str(path), "--out", str(tmp_path / "metrics.csv"))
    assert "balanced_accuracy" in out
    _cli("predict", str(run), str(path))
    proba = pd.read_csv(run / "predictions.csv", index_col="row")
    assert list(proba.columns) == ["predicted", "p_benign", "p_malignant"]
    assert set(proba["predicted"]) <= {"benign", "malignant"} and len(proba) == len(frame)

    # the same data through the estimator: classes_ are the names
    data = MultimodalDataset.from_dataframe(frame, {"size": ["radius", "area"],
                                                    "texture": ["smoothness", "symmetry"]},
                                            label="diagnosis", ignore=["id", "site"])
    assert data.class_names == ("benign", "malignant")
    X = frame[["radius", "area", "smoothness", "symmetry"]]
    est = MultimodalSemiSupervisedClassifier(
        epochs=1, hidden=(8,), latent_dim=2,
        modalities={"size": ["radius", "area"], "texture": ["smoothness", "symmetry"]},
    ).fit(X, frame["diagnosis"])
    np.testing.assert_array_equal(est.classes_, ["benign", "malignant"])
    assert set(est.predict(X)) <= {"benign", "malignant"}


def test_modality_options_prefixes_and_parquet(biopsies, tmp_path, capsys):
    path, _, frame = biopsies
    run = tmp_path / "by-options"
    assert main(["train", str(path), "--modality", "size=radius,area",
                 "--modality", "texture=smoothness,symmetry", "--modality", "site=site",
                 "--label", "diagnosis", "--ignore", "id", "--out", str(run), *SMALL]) == 0
    prefixed = frame.rename(columns={"radius": "size__radius", "area": "size__area",
                                     "smoothness": "texture__smoothness",
                                     "symmetry": "texture__symmetry", "diagnosis": "label",
                                     "site": "site__site"}).drop(columns="id")
    prefixed.to_parquet(tmp_path / "prefixed.parquet")
    run = tmp_path / "by-prefix"
    assert main(["train", str(tmp_path / "prefixed.parquet"), "--out", str(run), *SMALL]) == 0
    assert main(["predict", str(run), str(tmp_path / "prefixed.parquet"),
                 "--out", str(tmp_path / "p.csv")]) == 0
    assert list(pd.read_csv(tmp_path / "p.csv").columns) == ["row", "predicted", "p_benign",
                                                            "p_malignant"]


def test_a_file_run_says_what_evaluate_needs(biopsies, tmp_path):
    path, schema, _ = biopsies
    run = tmp_path / "run"
    assert main(["train", str(path), "--schema", str(schema), "--out", str(run), *SMALL]) == 0
    with pytest.raises(SystemExit, match=r"was trained on the file .*biopsy.csv, which has no "
                                         r"held-out split; pass a labelled file"):
        main(["evaluate", str(run)])


def test_a_table_with_missing_cells_trains_and_predicts(biopsies, tmp_path):
    """An empty cell in a modality whose other cells are filled is a missing cell: the table
    trains and predicts (the model scores the observed cells), with the cell mask as input."""
    path, schema, frame = biopsies
    frame.loc[[3, 10, 20, 40], "radius"] = np.nan
    frame.loc[[5, 41], "site"] = None
    frame.to_csv(path, index=False)
    run = tmp_path / "run"
    assert main(["train", str(path), "--schema", str(schema), "--out", str(run), *SMALL]) == 0
    assert main(["predict", str(run), str(path)]) == 0
    proba = pd.read_csv(run / "predictions.csv", index_col="row")
    assert len(proba) == len(frame) and np.isfinite(proba[["p_benign", "p_malignant"]]).all().all()


def test_table_errors_name_the_file_column_and_row(biopsies, tmp_path):
    path, schema, frame = biopsies
    frame.loc[3, "radius"] = np.inf
    frame.to_csv(path, index=False)
    with pytest.raises(SystemExit, match=r"column 'radius', row 3 \(line 5\): found inf"):
        main(["train", str(path), "--schema", str(schema), "--out", str(tmp_path / "r"),
              *SMALL])
    with pytest.raises(SystemExit, match=r"no label column 'label'; .*\(name the label column "
                                         r"with label=: --label COL"):
        main(["train", str(path), "--out", str(tmp_path / "r"), *SMALL])
    with pytest.raises(SystemExit, match=r"column 'id' has no modality prefix"):
        main(["train", str(path), "--label", "diagnosis", "--out", str(tmp_path / "r"), *SMALL])


def test_tune_on_a_csv_writes_a_train_command_for_the_file(biopsies, tmp_path, capsys):
    path, schema, _ = biopsies
    out = tmp_path / "tune"
    assert main(["tune", str(path), "--schema", str(schema), "--grid", "alpha=0.5,1.5",
                 "--folds", "2", "--out", str(out), *SMALL]) == 0
    best = json.loads((out / "best.json").read_text())
    assert "rho" not in best and "--rho" not in best["train_command"]
    assert f"--schema {schema}" in best["train_command"]
