"""Multimodal, partially labelled data: the data set, its mini-batches, standardisation, the
benchmark's data sets, its long-tailed splits and validation folds, and the conversion and
checking of user input (X, y).

The data contract: a mapping modality-name -> array [N, n_j] plus integer labels y, -1 for
unlabelled; a row that is entirely NaN in one modality marks that modality missing for that
datum, a NaN among values a missing cell. On disk: an ``.npz`` with arrays ``x_<modality>`` and ``y``, loaded without pickle.
"""

from pyro_mmt.data.convert import as_modality_mapping, check_labels, encode_labels
from pyro_mmt.data.dataset import Batch, InterleavedLoader, MultimodalDataset
from pyro_mmt.data.loaders import (
    DATASETS,
    PBC_LIKELIHOODS,
    DatasetInfo,
    load_breast,
    load_dataset,
    load_digits,
    load_fmnist,
    load_mfeat,
    load_pbc,
    load_pdspeech,
)
from pyro_mmt.data.split import (
    MIN_TRAIN_PER_CLASS,
    UNLABELLED_MIXES,
    LongTailedSplit,
    SplitSkippedError,
    long_tailed_split,
    validation_folds,
)
from pyro_mmt.data.standardise import Standardiser
from pyro_mmt.data.tabular import TableSchema, read_table

__all__ = [
    "DATASETS",
    "MIN_TRAIN_PER_CLASS",
    "Batch",
    "DatasetInfo",
    "InterleavedLoader",
    "LongTailedSplit",
    "MultimodalDataset",
    "SplitSkippedError",
    "Standardiser",
    "TableSchema",
    "UNLABELLED_MIXES",
    "as_modality_mapping",
    "check_labels",
    "encode_labels",
    "load_breast",
    "load_dataset",
    "load_digits",
    "load_fmnist",
    "load_mfeat",
    "load_pbc",
    "load_pdspeech",
    "PBC_LIKELIHOODS",
    "long_tailed_split",
    "read_table",
    "validation_folds",
]
