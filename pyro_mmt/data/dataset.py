"""Multimodal, partially labelled data sets and the interleaved mini-batch loader.

The data contract: a data set is a mapping modality-name -> array [N, n_j] plus integer labels
y with -1 for "unlabelled" (the scikit-learn semi-supervised convention). A row that is
entirely NaN in one modality means that modality is missing for that datum; the model
marginalises it out, so in memory the row is stored as zeros and ``mask[i, j]`` says whether
modality j of datum i was observed. A NaN in a row with other values is a missing cell:
stored as 0.0, with ``cells[name][i, k]`` False. Everything the user passes is checked here, once: a bad
input raises ``ValueError`` naming the argument, what was found and what was expected, and
nothing is silently dropped, truncated or converted with loss.

The checks are public functions of this module (not in ``__all__``: ``pyro_mmt.data``
exports :func:`~pyro_mmt.data.check_labels` and friends, built on them), shared with
``convert`` and ``standardise``: :func:`modality_values`, :func:`check_modality`,
:func:`check_aligned`, :func:`check_label_indices` and :func:`check_modality_names`.
"""

from __future__ import annotations

import numbers
import os
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike

import numpy as np
import pandas as pd
import torch

__all__ = ["Batch", "InterleavedLoader", "MultimodalDataset"]

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------
# input validation (the one place where user input is converted and checked)
# ----------------------------------------------------------------------------------------------


#: The largest finite float32 value: data are stored as float32, so larger values would
#: silently become infinite.
_FLOAT32_MAX = float(np.finfo(np.float32).max)

#: Float labels must be integer-valued and below this (beyond 2**53 floats skip integers).
_LARGEST_FLOAT_LABEL = 2.0**53


def _to_numpy(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
            value = value.to(torch.float32)
        return value.numpy()
    if isinstance(value, pd.DataFrame | pd.Series):
        return value.to_numpy()
    return np.asarray(value)


def _first(rows, k=5):
    """The first k entries of an index array, for error messages."""
    rows = np.asarray(rows)
    text = ", ".join(str(int(r)) for r in rows[:k])
    return text + (", ..." if rows.size > k else "")


def _frame_to_numpy(frame, label):
    """A DataFrame's values as float64, after checking that every column is real numeric or
    bool (a mixed frame's ``to_numpy()`` would be an object array)."""
    types = pd.api.types
    complex_columns = [c for c, t in frame.dtypes.items() if types.is_complex_dtype(t)]
    if complex_columns:
        raise ValueError(
            f"{label}: expected real values; found complex columns {complex_columns[:5]} (the "
            "imaginary part would be lost: pass the real part, the imaginary part or the modulus "
            "explicitly)"
        )
    bad = [(c, str(t)) for c, t in frame.dtypes.items()
           if not (types.is_bool_dtype(t) or types.is_numeric_dtype(t))]
    if bad:
        raise ValueError(
            f"{label}: expected real numeric or bool columns; found non-numeric columns "
            f"{[c for c, _ in bad[:5]]} with dtypes {[t for _, t in bad[:5]]}"
            f"{' ...' if len(bad) > 5 else ''} (encode or drop them first)"
        )
    return frame.to_numpy(dtype=np.float64, na_value=np.nan)


def modality_values(value, label):
    """One modality as a numpy array, its dtype checked (real numeric or bool)."""
    if isinstance(value, pd.DataFrame):
        return _frame_to_numpy(value, label)
    try:
        array = _to_numpy(value)
    except (TypeError, ValueError) as error:  # e.g. ragged nested lists
        raise ValueError(
            f"{label}: expected a 2-D numeric array [N, n_j]; found a {type(value).__name__} "
            f"that numpy cannot convert ({error})"
        ) from error
    kind = array.dtype.kind
    if kind == "c":
        raise ValueError(
            f"{label}: expected real values; found complex dtype {array.dtype} (the imaginary "
            "part would be lost: pass the real part, the imaginary part or the modulus "
            "explicitly)"
        )
    if kind == "O":
        raise ValueError(
            f"{label}: expected numeric values (a real numeric or bool array); found dtype "
            "object (Python objects, e.g. None or strings); convert it with "
            "numpy.asarray(a, dtype=float), marking a missing modality with a row of NaN"
        )
    if kind not in "biuf":
        raise ValueError(
            f"{label}: expected numeric values (a real numeric or bool array); found dtype "
            f"{array.dtype}"
        )
    return array


def check_modality(name, value, label=None):
    """Convert one modality to a 2-D float numpy array and return (array, present-row mask,
    observed-cell mask): a row that is entirely NaN marks the modality missing, a NaN in a
    row with other values a missing cell.

    ``label`` names the argument in error messages (default ``x[<name>]``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"x: modality names must be non-empty strings; found {name!r}")
    label = f"x[{name!r}]" if label is None else label
    array = modality_values(value, label)
    if array.ndim != 2:
        raise ValueError(
            f"{label}: expected a 2-D array [N, n_j]; found shape {array.shape} "
            "(a single feature is a column: use a[:, None])"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"{label}: expected at least one row and one column; found shape {array.shape}"
        )
    if array.dtype.kind != "f":
        array = array.astype(np.float64)
    nan = np.isnan(array)
    missing = nan.all(axis=1)
    infinite = np.flatnonzero(np.isinf(array).any(axis=1))
    if infinite.size:
        raise ValueError(
            f"{label}: rows {_first(infinite)} hold infinite values ({infinite.size} rows); "
            "expected finite values"
        )
    if array.dtype.itemsize > 4:
        huge = np.flatnonzero(((array > _FLOAT32_MAX) | (array < -_FLOAT32_MAX)).any(axis=1))
        if huge.size:
            value = array[huge[0]][np.abs(array[huge[0]]) > _FLOAT32_MAX][0]
            raise ValueError(
                f"{label}: rows {_first(huge)} hold values beyond the float32 range "
                f"({huge.size} rows, e.g. {value:.6g}); expected |value| <= {_FLOAT32_MAX:.6g} "
                "(data are stored as float32, where these would become infinite: rescale them)"
            )
    return array, ~missing, ~nan


def check_aligned(frames, label):
    """Refuse pandas inputs whose row indexes differ: rows are matched by position, so
    differently indexed frames would be silently misaligned. ``frames`` maps a description
    to a pandas object."""
    indexed = [(what, v.index) for what, v in frames.items()
               if isinstance(v, pd.DataFrame | pd.Series)]
    for what, index in indexed[1:]:
        if not index.equals(indexed[0][1]):
            raise ValueError(
                f"{label}: the row index of {what} differs from that of {indexed[0][0]}; "
                "rows are matched by position, so expected identical row indexes (align "
                "them first, e.g. with .loc[common_index] or .reset_index(drop=True))"
            )


def check_label_indices(y, num_rows, num_classes=None, argument="y", source=None):
    """Convert labels to an int64 numpy array [N] and check them.

    ``argument`` names the labels in error messages; ``source`` says where ``num_classes``
    came from (default ``num_classes=K``).
    """
    labels = _to_numpy(y)
    if labels.ndim != 1 or labels.shape[0] != num_rows:
        raise ValueError(
            f"{argument}: expected a 1-D array of {num_rows} labels; found shape {labels.shape}"
        )
    kind = labels.dtype.kind
    if kind == "f":
        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
        if bad.size:
            hint = " (NaN is not a label: mark unlabelled rows with -1)" if np.isnan(
                labels[bad]).any() else ""
            raise ValueError(
                f"{argument}: expected integer class indices (-1 = unlabelled); found "
                f"non-integer values {labels[bad[:5]].tolist()} at rows {_first(bad)}{hint}"
            )
        bad = np.flatnonzero(labels > _LARGEST_FLOAT_LABEL)
        if bad.size:
            raise ValueError(
                f"{argument}: expected class indices 0..K-1 (-1 = unlabelled); found "
                f"{labels[bad[:5]].tolist()} at rows {_first(bad)}"
            )
    elif kind == "O":
        raise ValueError(
            f"{argument}: expected integer class indices (-1 = unlabelled); found dtype object "
            "(Python objects, e.g. None or strings): use -1 for unlabelled rows and encode "
            "class names first, e.g. with pandas.factorize"
        )
    elif kind not in "iu":
        raise ValueError(
            f"{argument}: expected integer class indices (-1 = unlabelled); found dtype "
            f"{labels.dtype} (encode class names first, e.g. with pandas.factorize)"
        )
    elif kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
        bad = np.flatnonzero(labels > np.iinfo(np.int64).max)
        raise ValueError(
            f"{argument}: expected class indices 0..K-1 (-1 = unlabelled); found "
            f"{labels[bad[:5]].tolist()} at rows {_first(bad)}"
        )
    labels = labels.astype(np.int64)
    if num_classes is not None:
        bad = np.flatnonzero((labels < -1) | (labels >= num_classes))
        if bad.size:
            source = f"num_classes={num_classes}" if source is None else source
            raise ValueError(
                f"{argument}: expected labels in [-1, {num_classes}) ({source}, "
                f"-1 = unlabelled); found {np.unique(labels[bad])[:5].tolist()} at rows "
                f"{_first(bad)}"
            )
    else:
        bad = np.flatnonzero(labels < -1)
        if bad.size:
            raise ValueError(
                f"{argument}: expected labels >= -1 (-1 = unlabelled); found "
                f"{np.unique(labels[bad])[:5].tolist()} at rows {_first(bad)}"
            )
    return labels


def _check_num_classes(num_classes, labels, class_names=None, args=None):
    """K: ``num_classes`` when given, else the number of ``class_names``, else max(y) + 1.

    Returns ``(K, source)``, ``source`` describing where K came from for error messages.
    """
    args = _ARGUMENTS if args is None else args
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
            raise ValueError(f"num_classes: expected a positive integer; found {num_classes!r}")
        if num_classes < 1:
            raise ValueError(f"num_classes: expected a positive integer; found {num_classes}")
        return int(num_classes), f"num_classes={int(num_classes)}"
    if class_names is not None:
        names = _class_name_list(class_names, args.class_names)
        return len(names), f"{args.class_names_source} has {len(names)} names"
    labelled = labels[labels >= 0]
    if labelled.size == 0:
        raise ValueError(
            f"num_classes: {args.no_labels}, so the number of classes cannot be inferred; "
            "pass num_classes (or class_names)"
        )
    largest = int(labelled.max())
    if largest >= labels.size:
        raise ValueError(
            f"num_classes: the largest label is {largest}, which would make {largest + 1} "
            f"classes for {labels.size} rows; pass num_classes (or class_names) if that is "
            "intended (labels are class indices 0..K-1: encode other class labels first, e.g. "
            "with pandas.factorize)"
        )
    return largest + 1, f"K = max({args.y_short}) + 1 = {largest + 1}"


def _class_name_list(class_names, argument):
    if isinstance(class_names, str | bytes):
        raise ValueError(
            f"{argument}: expected a sequence of class names; found the single string "
            f"{class_names!r}"
        )
    values = _to_numpy(class_names)
    if values.ndim != 1:
        raise ValueError(
            f"{argument}: expected a 1-D sequence of class names; found shape {values.shape}"
        )
    if values.dtype.kind == "S":
        values = values.astype(np.str_)
    return [str(name) for name in values.tolist()]


def _check_class_names(class_names, num_classes, argument="class_names"):
    if class_names is None:
        return tuple(str(k) for k in range(num_classes))
    names = tuple(_class_name_list(class_names, argument))
    if len(names) != num_classes:
        raise ValueError(
            f"{argument}: expected {num_classes} names (one per class); found {len(names)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{argument}: expected distinct names; found {names}")
    return names


def check_modality_names(names, available, argument):
    """Check a selection of modality names against the available ones; returns a tuple."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    if not names:
        raise ValueError(f"{argument}: expected at least one modality name; found none")
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(
            f"{argument}: unknown modalities {unknown}; expected names among {list(available)}"
        )
    if len(set(names)) != len(names):
        raise ValueError(f"{argument}: expected distinct modality names; found {list(names)}")
    return names


# errors that numpy and zipfile raise on a damaged archive
_UNREADABLE = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def _read_npz(path, where):
    """Every array of an ``.npz`` file, read without pickle; ``ValueError`` for anything that
    is not a readable ``.npz`` (``FileNotFoundError`` and the like pass through)."""

    def unreadable(why):
        return ValueError(
            f"path: {where} is not a readable .npz file ({why}); expected a zip archive of .npy "
            "arrays, as written by numpy.savez or MultimodalDataset.to_npz"
        )

    if isinstance(path, str | PathLike):
        # open the file here, so that it is closed even when numpy fails half-way
        with open(path, "rb") as file:
            return _read_npz_file(file, unreadable, where)
    return _read_npz_file(path, unreadable, where)


def _read_npz_file(file, unreadable, where):
    try:
        npz = np.load(file, allow_pickle=False)
    except zipfile.BadZipFile as error:
        raise unreadable(f"a damaged or truncated zip archive: {error}") from error
    except _UNREADABLE as error:
        raise unreadable("neither a zip archive nor a .npy array") from error
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise unreadable("a single .npy array, not an archive of named arrays")
    arrays = {}
    with npz:
        for key in npz.files:
            try:
                value = npz[key]
            except ValueError as error:
                if "pickle" in str(error).lower():
                    raise ValueError(
                        f"path: array {key!r} in {where} holds pickled Python objects (an object "
                        "array); pickled objects are refused (the file is read with "
                        "allow_pickle=False): save numeric arrays, and text as unicode arrays"
                    ) from error
                raise unreadable(f"array {key!r} cannot be read: {error}") from error
            except _UNREADABLE as error:
                raise unreadable(f"array {key!r} is damaged or truncated: {error}") from error
            if not isinstance(value, np.ndarray):
                raise unreadable(f"member {key!r} is not a .npy array")
            arrays[key] = value
    return arrays


@dataclass(frozen=True)
class _Arguments:
    """How error messages name what the user passed: the constructor's arguments, or the
    arrays of an ``.npz`` file read by :meth:`MultimodalDataset.from_npz`."""

    x: str = "x"
    y: str = "y"
    y_short: str = "y"
    class_names: str = "class_names"
    class_names_source: str = "class_names"
    no_labels: str = "no row is labelled"
    modality: Callable[[str], str] | None = None  # name -> label; None: x[<name>]

    def of(self, name):
        return f"x[{name!r}]" if self.modality is None else self.modality(name)


_ARGUMENTS = _Arguments()


# ----------------------------------------------------------------------------------------------
# Batch
# ----------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Batch:
    """A mini-batch of B data, every row labelled or every row unlabelled.

    Attributes
    ----------
    x : dict[str, torch.Tensor]
        Modality name -> float tensor [B, n_j], in the data set's modality order. Rows of a
        missing modality hold 0.0 (they carry no information: the model drops them via ``mask``).
    mask : torch.Tensor
        Bool [B, M]; ``mask[b, j]`` is True when modality j of row b is observed.
    y : torch.Tensor or None
        Int64 labels [B] when every row is labelled, ``None`` when every row is unlabelled (the
        model then enumerates the label, as in M2 [1]).
    index : torch.Tensor
        Int64 [B], the rows' positions in the data set the batch came from.
    cells : dict[str, torch.Tensor]
        Modality name -> bool [B, n_j], True where a cell is observed, for the modalities with
        missing cells in the data set (empty when every observed row is complete). A missing
        cell holds 0.0; ``mask[b, j]`` is True when any cell of modality j is observed.

    References
    ----------
    [1] D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling, "Semi-supervised learning with deep
        generative models", NeurIPS 2014.
    """

    x: dict[str, torch.Tensor]
    mask: torch.Tensor
    y: torch.Tensor | None
    index: torch.Tensor
    cells: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def size(self) -> int:
        """Number of rows B."""
        return int(self.index.shape[0])

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modality names, in the order of ``mask``'s columns."""
        return tuple(self.x)

    @property
    def is_labelled(self) -> bool:
        """True when the batch carries labels."""
        return self.y is not None


# ----------------------------------------------------------------------------------------------
# MultimodalDataset
# ----------------------------------------------------------------------------------------------


class MultimodalDataset:
    """N data observed in M modalities, some labelled, some modalities possibly missing.

    A datum i is (x_i1, ..., x_iM, y_i) with x_ij in R^{n_j}; y_i in {0, ..., K-1}, or -1 when
    the datum is unlabelled. Modality j of datum i is *missing* when its input row is entirely
    NaN; it is then stored as a row of zeros with ``mask[i, j] = False``, so a model that
    respects the mask marginalises the modality out. Every datum must observe at least one
    modality. A NaN in a row that has other values is a *missing cell*: it is stored as 0.0
    and ``cells[name][i, k]`` is False (``cells`` lists the modalities with missing cells), so
    the model scores the observed cells only (``docs/derivation.md`` §11).

    Data sets are values: every method returns a new data set and nothing is modified in place
    (tensors may be shared between data sets, so do not write into them).

    Parameters
    ----------
    x : Mapping[str, array-like]
        Modality name -> numpy array, pandas DataFrame or tensor of shape [N, n_j] (2-D: a single
        feature is a column), of real numbers or bools. The modality order is the mapping's
        order. Values are stored as float32, so they must be finite and within float32's range
        (|v| <= 3.4e38); NaN marks a missing cell, a row entirely NaN a missing modality. DataFrames
        (and a ``y`` Series) are matched by position, so their row indexes must agree.
    y : array-like of int, optional
        Labels [N], -1 = unlabelled. ``None`` means every row is unlabelled. Float labels are
        accepted when integer-valued (1.0), rejected otherwise (1.5, NaN).
    num_classes : int, optional
        K. Default ``len(class_names)`` when class names are given, else ``max(y) + 1``; one
        of the two is required when no row is labelled. (An inferred K larger than N is
        refused: pass num_classes when that is intended.)
    class_names : sequence of str, optional
        K names; default ``("0", ..., "K-1")``.
    allow_unobserved_modalities : bool
        By default a modality observed in no row (every row NaN) is refused: nothing can be
        learnt about it. Data that are only predicted on may lack a modality entirely (the
        model marginalises it out); pass ``True`` for them.

    Attributes
    ----------
    modalities : tuple[str, ...]
        Modality names, in order.
    dims : dict[str, int]
        Modality name -> n_j.
    num_classes : int
        K.
    class_names : tuple[str, ...]
        K class names.
    x : dict[str, torch.Tensor]
        Modality name -> float32 tensor [N, n_j] (see :meth:`to` for other dtypes), missing rows
        filled with 0.0.
    mask : torch.Tensor
        Bool [N, M], True = modality observed; columns in modality order.
    cells : dict[str, torch.Tensor]
        Modality name -> bool [N, n_j], True where a cell is observed, for the modalities with
        a missing cell (a NaN in a row that has other values).
    y : torch.Tensor
        Int64 labels [N], -1 = unlabelled.

    Raises
    ------
    ValueError
        When the input breaks the data contract: no modality, an empty modality (no rows or no
        columns), a 1-D array, complex, string or object values, row counts or pandas row
        indexes that differ across modalities, infinite values or values beyond float32's
        range, a row missing every modality, a modality observed in no row
        (unless allowed), non-integer labels (1.5, NaN, strings, None), labels outside [-1, K),
        or class names that do not match K. The message names the argument, what was found and
        what was expected.

    Examples
    --------
    >>> import numpy as np
    >>> ds = MultimodalDataset({"a": np.eye(3), "b": np.ones((3, 2))}, y=[0, 1, -1])
    >>> ds.dims, ds.num_classes, ds.class_counts().tolist()
    ({'a': 3, 'b': 2}, 2, [1, 1])
    """

    def __init__(self, x, y=None, *, num_classes=None, class_names=None,
                 allow_unobserved_modalities=False):
        self._validate(x, y, num_classes, class_names, allow_unobserved_modalities, _ARGUMENTS)

    def _validate(self, x, y, num_classes, class_names, allow_unobserved, args):
        """Check and convert user input (see the class docstring), naming the user's arguments
        in error messages as ``args`` says."""
        if not isinstance(x, Mapping):
            raise ValueError(
                f"{args.x}: expected a mapping modality-name -> array [N, n_j]; found "
                f"{type(x).__name__}"
            )
        if len(x) == 0:
            raise ValueError(f"{args.x}: expected at least one modality; found an empty mapping")
        arrays, present, cells = {}, [], {}
        for name, value in x.items():
            array, observed, observed_cells = check_modality(name, value, args.of(name))
            arrays[name] = array
            present.append(observed)
            if not observed_cells[observed].all():  # a partly observed row
                cells[name] = torch.from_numpy(observed_cells)
        rows = {name: array.shape[0] for name, array in arrays.items()}
        if len(set(rows.values())) != 1:
            raise ValueError(
                f"{args.x}: expected the same number of rows N in every modality; found {rows}"
            )
        check_aligned({args.of(name): value for name, value in x.items()}, args.x)
        if y is not None and isinstance(y, pd.Series):
            check_aligned({**{args.of(n): v for n, v in x.items()}, args.y: y}, args.y)
        num_rows = next(iter(rows.values()))
        mask = np.stack(present, axis=1)
        empty = np.flatnonzero(~mask.any(axis=1))
        if empty.size:
            raise ValueError(
                f"{args.x}: rows {_first(empty)} ({empty.size} rows) are missing every "
                "modality; expected each datum to observe at least one modality"
            )
        unobserved = [name for j, name in enumerate(arrays) if not mask[:, j].any()]
        if unobserved and not allow_unobserved:
            raise ValueError(
                f"{args.x}: modalities {unobserved} are observed in no row (every row is NaN); "
                "expected each modality observed in at least one row (drop it, or pass "
                "allow_unobserved_modalities=True for data that are only predicted on)"
            )
        labels = (
            np.full(num_rows, -1, dtype=np.int64) if y is None
            else check_label_indices(y, num_rows, argument=args.y)
        )
        from_names = num_classes is None and class_names is not None
        num_classes, source = _check_num_classes(num_classes, labels, class_names, args)
        if from_names and labels.size and labels.max() >= num_classes:
            raise ValueError(
                f"{args.class_names}: expected at least {labels.max() + 1} names (one per "
                f"class; the labels go up to {labels.max()}); found {num_classes}"
            )
        labels = check_label_indices(labels, num_rows, num_classes, argument=args.y,
                                     source=source)
        class_names = _check_class_names(class_names, num_classes, args.class_names)

        tensors = {}
        for j, (name, array) in enumerate(arrays.items()):
            filled = np.array(array, dtype=np.float32)  # always a copy: never alias user memory
            filled[~mask[:, j]] = 0.0
            filled[np.isnan(filled)] = 0.0  # a missing cell: its value is never read
            tensors[name] = torch.from_numpy(filled)
        self._set(tensors, torch.from_numpy(mask), torch.from_numpy(labels), num_classes,
                  class_names, cells)

    # -- internal construction, without validation (inputs already satisfy the contract) -----

    def _set(self, x, mask, y, num_classes, class_names, cells=None):
        self.x = dict(x)
        self.mask = mask
        #: modality -> bool [N, n_j], True where a cell is observed, for the modalities with a
        #: partly observed row (the others observe every cell of their observed rows)
        self.cells = dict(cells or {})
        self.y = y
        self.num_classes = num_classes
        self.class_names = class_names
        self.modalities = tuple(self.x)
        self.dims = {name: int(t.shape[1]) for name, t in self.x.items()}

    @classmethod
    def _from_parts(cls, x, mask, y, num_classes, class_names, cells=None):
        dataset = cls.__new__(cls)
        dataset._set(x, mask, y, num_classes, class_names, cells)
        return dataset

    def _replace(self, *, x=None, mask=None, y=None, cells=None):
        return type(self)._from_parts(
            self.x if x is None else x,
            self.mask if mask is None else mask,
            self.y if y is None else y,
            self.num_classes,
            self.class_names,
            self.cells if cells is None else cells,
        )

    def _rows(self, index) -> np.ndarray:
        """Normalise any supported index to an int64 numpy array of row positions."""
        n = len(self)
        if isinstance(index, slice):
            return np.arange(n, dtype=np.int64)[index]
        if isinstance(index, numbers.Integral) and not isinstance(index, bool):
            index = [index]
        rows = _to_numpy(index)
        if rows.ndim == 0:  # a 0-d tensor or array: one row, like an int
            rows = rows.reshape(1)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise IndexError(
                    f"index: a boolean index must have shape ({n},); found {rows.shape}"
                )
            return np.flatnonzero(rows).astype(np.int64)
        if rows.size == 0:
            return np.zeros(0, dtype=np.int64)
        if rows.dtype.kind not in "iu" or rows.ndim != 1:
            raise TypeError(
                "index: expected an int, a slice, or a 1-D integer or boolean array/tensor; "
                f"found dtype {rows.dtype} with shape {rows.shape}"
            )
        rows = rows.astype(np.int64)
        out = np.flatnonzero((rows < -n) | (rows >= n))
        if out.size:
            raise IndexError(
                f"index: rows {rows[out[:5]].tolist()} are out of range for a data set of {n} rows"
            )
        return np.where(rows < 0, rows + n, rows)

    # -- sizes and views ----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, index) -> MultimodalDataset:
        """The subset of rows ``index`` (int, slice, integer or boolean array/tensor).

        Always returns a :class:`MultimodalDataset` (an int gives one row) with the same
        modalities, ``num_classes`` and ``class_names``.
        """
        rows = torch.from_numpy(self._rows(index))
        return self._replace(
            x={name: t[rows] for name, t in self.x.items()}, mask=self.mask[rows], y=self.y[rows],
            cells={name: c[rows] for name, c in self.cells.items()},
        )

    @property
    def is_labelled(self) -> torch.Tensor:
        """Bool tensor [N], True where y >= 0."""
        return self.y >= 0

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the ``x`` tensors."""
        return next(iter(self.x.values())).dtype

    def subsample(self, n: int, *, seed: int = 0) -> MultimodalDataset:
        """At most ``n`` rows at random, in data set order, keeping every labelled row when the
        data set also has unlabelled ones (a smaller problem of the same kind, e.g. for smoke
        runs); a fully labelled data set is sampled uniformly."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n: expected a positive integer; found {n!r}")
        rng = np.random.default_rng(seed)
        labelled = np.flatnonzero(self.is_labelled.numpy())
        unlabelled = rng.permutation(np.flatnonzero(~self.is_labelled.numpy()))
        if len(unlabelled) == 0:
            return self[np.sort(rng.permutation(len(self))[:n])]
        keep = unlabelled[: max(n - len(labelled), 0)]
        return self[np.sort(np.concatenate([labelled, keep]))]

    def labelled(self) -> MultimodalDataset:
        """The subset of labelled rows (possibly empty)."""
        return self[self.is_labelled]

    def unlabelled(self) -> MultimodalDataset:
        """The subset of unlabelled rows (possibly empty)."""
        return self[~self.is_labelled]

    def class_counts(self) -> np.ndarray:
        """Number of labelled rows per class, int64 numpy array [K]."""
        y = self.y.numpy()
        return np.bincount(y[y >= 0], minlength=self.num_classes).astype(np.int64)

    def with_labels(self, y) -> MultimodalDataset:
        """A copy with labels replaced by ``y`` ([N], -1 = unlabelled, values in [-1, K))."""
        labels = check_label_indices(y, len(self), self.num_classes)
        return self._replace(y=torch.from_numpy(labels))

    def select_modalities(self, names) -> MultimodalDataset:
        """A copy keeping only the modalities ``names``, in that order.

        Raises ``ValueError`` for an unknown or repeated name, or when some row observes none of
        the selected modalities (subset those rows out first, e.g. ``ds[ds.mask[:, j]]``).
        """
        names = check_modality_names(names, self.modalities, "names")
        columns = [self.modalities.index(name) for name in names]
        mask = self.mask[:, columns]
        empty = np.flatnonzero(~mask.any(dim=1).numpy())
        if empty.size:
            raise ValueError(
                f"names: rows {_first(empty)} ({empty.size} rows) observe none of the modalities "
                f"{list(names)}; expected every row to observe at least one (subset them out first)"
            )
        return self._replace(x={name: self.x[name] for name in names}, mask=mask.clone(),
                             cells={n: c for n, c in self.cells.items() if n in names})

    def to(self, dtype: torch.dtype) -> MultimodalDataset:
        """A copy whose ``x`` tensors have the floating dtype ``dtype`` (e.g. torch.float64)."""
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"dtype: expected a torch floating dtype {list(_FLOAT_DTYPES)}; found {dtype!r}"
            )
        return self._replace(x={name: t.to(dtype) for name, t in self.x.items()})

    def batch(self, index) -> Batch:
        """The rows ``index`` as a :class:`Batch` (all labelled, or all unlabelled).

        ``Batch.y`` is the labels when every selected row is labelled and ``None`` when none is;
        a batch mixing both raises ``ValueError`` (the M2 pattern scores labelled and unlabelled
        data with different terms, so batches are pure; see :class:`InterleavedLoader`).
        """
        rows = self._rows(index)
        if rows.size == 0:
            raise ValueError("index: expected at least one row for a batch; found none")
        rows = torch.from_numpy(rows)
        y = self.y[rows]
        labelled = y >= 0
        if bool(labelled.all()):
            labels = y
        elif not bool(labelled.any()):
            labels = None
        else:
            raise ValueError(
                f"index: the batch mixes {int(labelled.sum())} labelled and "
                f"{int((~labelled).sum())} unlabelled rows; expected a pure batch (all labelled "
                "or all unlabelled)"
            )
        return Batch(
            x={name: t[rows] for name, t in self.x.items()},
            mask=self.mask[rows],
            y=labels,
            index=rows,
            cells={name: c[rows] for name, c in self.cells.items()},
        )

    # -- numpy and disk -----------------------------------------------------------------------

    def to_numpy(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``(x, y)`` in the on-disk convention: float64 arrays with NaN rows where missing.

        Values are those stored (float32 unless :meth:`to` was used), widened to float64.
        """
        x = {}
        for j, (name, t) in enumerate(self.x.items()):
            array = t.detach().cpu().to(torch.float64).numpy().copy()
            array[~self.mask[:, j].numpy()] = np.nan
            if name in self.cells:
                array[~self.cells[name].numpy()] = np.nan
            x[name] = array
        return x, self.y.numpy().copy()

    def concatenated(self) -> np.ndarray:
        """All modalities side by side, float64 [N, sum_j n_j], NaN where missing."""
        x, _ = self.to_numpy()
        return np.concatenate(list(x.values()), axis=1)

    def to_npz(self, path: str | PathLike) -> None:
        """Save to a compressed ``.npz``: ``x_<modality>`` (NaN rows where missing), ``y``,
        ``class_names`` and ``modalities`` (unicode arrays). Load with :meth:`from_npz`.

        The ``x`` arrays keep the tensors' dtype (float32 by default; bfloat16 is saved as
        float32).
        """
        arrays = {}
        for j, (name, t) in enumerate(self.x.items()):
            if t.dtype in (torch.float16, torch.bfloat16):
                t = t.to(torch.float32)
            array = t.detach().cpu().numpy().copy()
            array[~self.mask[:, j].numpy()] = np.nan
            if name in self.cells:
                array[~self.cells[name].numpy()] = np.nan
            arrays[f"x_{name}"] = array
        arrays["y"] = self.y.numpy()
        arrays["class_names"] = np.array(self.class_names, dtype=np.str_)
        arrays["modalities"] = np.array(self.modalities, dtype=np.str_)
        np.savez_compressed(path, **arrays)

    @classmethod
    def from_npz(cls, path: str | PathLike, *, labels: str = "required", num_classes=None,
                 class_names=None, allow_unobserved_modalities=False) -> MultimodalDataset:
        """Load an ``.npz`` written by :meth:`to_npz` (or by hand: arrays ``x_<modality>`` and
        ``y``, optionally ``class_names`` and ``modalities``), without pickle.

        The modality order is the ``modalities`` array when present (it must list exactly the
        file's ``x_`` arrays), else the file's order. The number of classes is ``num_classes``
        when given, else the number of class names (the argument's or the file's), else
        ``max(y) + 1``. Every array of the file must be one of these: nothing in the file is
        ignored.

        :param path: the file.
        :param str labels: ``"required"`` (default): the file must hold ``y``. ``"optional"``:
            a file without ``y`` (features only, e.g. new data to predict) gives an
            all-unlabelled data set; its classes then come from ``num_classes``/``class_names``
            (e.g. a fitted model's) or from the file's ``class_names``.
        :param int num_classes: K, checked against the file's labels and class names.
        :param class_names: K names; when the file has ``class_names`` too they must agree.
        :param bool allow_unobserved_modalities: accept a modality that is NaN in every row
            (see the class docstring); for data that are only predicted on.
        :raises ValueError: when the file is not a readable ``.npz`` (not a zip archive of
            ``.npy`` arrays, e.g. truncated or another format), holds an object array (pickled
            Python objects are refused: the file is read with ``allow_pickle=False``), lacks
            ``x_<modality>`` arrays or (with ``labels="required"``) ``y``, holds other arrays,
            or when its contents break the data contract; messages name the file's array.
        """
        if labels not in ("required", "optional"):
            raise ValueError(f"labels: expected 'required' or 'optional'; found {labels!r}")
        where = os.fspath(path) if isinstance(path, str | PathLike) else repr(path)
        arrays = _read_npz(path, where)
        files = list(arrays)
        in_file = f"in {where}"
        if "modalities" in arrays:
            names = _class_name_list(arrays["modalities"], f"path: array 'modalities' {in_file}")
            listed = {f"x_{name}" for name in names}
            unlisted = [key for key in files if key.startswith("x_") and key not in listed]
            missing = [f"x_{name}" for name in names if f"x_{name}" not in arrays]
            if unlisted or missing:
                raise ValueError(
                    f"path: the array 'modalities' {in_file} lists {names}; expected exactly the "
                    f"file's 'x_<modality>' arrays; found arrays {files}"
                )
        else:
            names = [key[2:] for key in files if key.startswith("x_")]
        other = [key for key in files
                 if not key.startswith("x_") and key not in ("y", "class_names", "modalities")]
        if other:
            raise ValueError(
                f"path: {where} holds arrays {other} that are not part of a data set; expected "
                "only 'x_<modality>', 'y', 'class_names' and 'modalities'"
            )
        if not names:
            raise ValueError(f"path: expected arrays 'x_<modality>' in {where}; found {files}")
        if "y" not in arrays and labels == "required":
            raise ValueError(
                f"path: expected arrays 'x_<modality>' and 'y' in {where}; found {files} (no "
                "labels: pass labels='optional' to read features only, as unlabelled rows)"
            )
        file_names = arrays.get("class_names")
        if file_names is not None:
            file_names = _class_name_list(file_names, f"path: array 'class_names' {in_file}")
            if class_names is not None:
                given = _class_name_list(class_names, "class_names")
                if given != file_names:
                    raise ValueError(
                        f"class_names: {where} holds class_names {file_names}; found "
                        f"{given} (pass the file's names, or none)"
                    )
        names_from_file = class_names is None and file_names is not None
        no_labels = (f"{where} holds no labels ('y')" if "y" not in arrays
                     else f"no row of {where} is labelled")
        args = _Arguments(
            x=f"path: the arrays 'x_<modality>' {in_file}",
            y=f"path: array 'y' {in_file}",
            y_short="y",
            class_names=(f"path: array 'class_names' {in_file}" if names_from_file
                         else "class_names"),
            class_names_source=("the file's class_names" if names_from_file
                                else "class_names"),
            no_labels=no_labels,
            modality=lambda name: f"path: array 'x_{name}' {in_file}",
        )
        dataset = cls.__new__(cls)
        dataset._validate(
            {name: arrays[f"x_{name}"] for name in names}, arrays.get("y"), num_classes,
            class_names if class_names is not None else file_names,
            allow_unobserved_modalities, args,
        )
        return dataset

    @classmethod
    def from_dataframe(cls, frame, modalities=None, *, label=None, likelihood=None, ignore=(),
                       classes=None, categories=None) -> MultimodalDataset:
        """A data set from a table with one column per feature and a label column.

        The rules (modalities from ``modalities`` or from column prefixes
        ``<modality>__<feature>``; any labels, unlabelled as empty, NaN, None, ``pd.NA`` or
        -1; a modality missing where all its cells are empty; text columns coded as
        categories) are those of :class:`~pyro_mmt.data.tabular.TableSchema`, which this
        calls; use :meth:`TableSchema.encode <pyro_mmt.data.tabular.TableSchema.encode>`
        directly to keep the classes and category names for coding other tables the same way.

        :param frame: a pandas DataFrame.
        :param modalities: mapping modality name -> column names; ``None``: column prefixes.
        :param label: the label column; ``None``: every row is unlabelled (then ``classes``
            is required).
        :param likelihood: accepted for symmetry with the schema: mapping modality -> family,
            checked against the modalities (pass it on to the estimator's ``likelihood=``).
        :param ignore: columns to leave out.
        :param classes: the label values in class order (default: the sorted labelled values).
        :param categories: mapping text column -> category names (default: sorted values).
        :returns: the data set; ``class_names`` are ``str`` of the classes.

        Examples
        --------
        >>> import pandas as pd
        >>> frame = pd.DataFrame({"a__1": [0.5, 1.0, 2.0], "b__1": [1.0, None, 3.0],
        ...                       "label": ["no", None, "yes"]})
        >>> ds = MultimodalDataset.from_dataframe(frame, label="label")
        >>> ds.class_names, ds.y.tolist(), ds.mask[:, 1].tolist()
        (('no', 'yes'), [0, -1, 1], [True, False, True])
        """
        from pyro_mmt.data.tabular import TableSchema

        schema = TableSchema(modalities=modalities, label=label, likelihood=likelihood or {},
                             ignore=ignore, classes=classes, categories=categories or {})
        data, _ = schema.encode(frame, labels="required" if label is not None else "optional")
        return data

    # -- description --------------------------------------------------------------------------

    def summary(self) -> str:
        """A printable description: N, labelled count, each modality's dimension and missing
        fraction, and the labelled rows per class."""
        missing = 1.0 - self.mask.to(torch.float64).mean(dim=0).numpy()
        modalities = pd.DataFrame(
            {"dim": list(self.dims.values()), "missing_fraction": missing.round(4)},
            index=pd.Index(self.modalities, name="modality"),
        )
        classes = pd.DataFrame(
            {"labelled": self.class_counts()},
            index=pd.Index(self.class_names, name="class"),
        )
        n_lab = int(self.is_labelled.sum())
        return (
            f"MultimodalDataset: N = {len(self)}, labelled = {n_lab}, unlabelled = "
            f"{len(self) - n_lab}, K = {self.num_classes}, dtype = {self.dtype}\n\n"
            f"{modalities.to_string()}\n\n{classes.to_string()}"
        )

    def __repr__(self) -> str:
        missing = 1.0 - float(self.mask.to(torch.float64).mean()) if len(self) else 0.0
        return (
            f"MultimodalDataset(N={len(self)}, dims={self.dims}, num_classes={self.num_classes}, "
            f"labelled={int(self.is_labelled.sum())}, missing={missing:.1%})"
        )


# ----------------------------------------------------------------------------------------------
# InterleavedLoader
# ----------------------------------------------------------------------------------------------


def _check_positive_int(value, argument):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{argument}: expected a positive integer; found {value!r}")
    return int(value)


class InterleavedLoader:
    """Mini-batches for M2-style semi-supervised training: labelled and unlabelled batches
    interleaved, each with the size of the group it came from.

    One epoch is one pass over the unlabelled rows in batches of ``batch_size`` (the last one
    may be smaller); each unlabelled batch is preceded by a labelled batch of
    ``labelled_batch_size`` rows. Labelled rows are cycled: they are taken in order from a random
    permutation, and a new permutation starts when the current one runs out, so every labelled
    row is seen once per cycle and a labelled batch never repeats a row. With no unlabelled rows
    an epoch is one pass over the labelled rows (batches of ``labelled_batch_size``, the last
    one may be smaller); with no labelled rows it is the unlabelled pass alone.

    Iterating yields ``(batch, num_data)``: a :class:`Batch` and the size of its group (the
    number of labelled, or unlabelled, rows). Scaling a batch's summed loss by
    ``num_data / batch.size`` gives an unbiased estimate of the group's total, so

        loss = Σ_unlabelled L(x) + Σ_labelled L(x, y)

    is estimated without bias by summing the scaled losses of one epoch's batch pairs
    (divided by the number of pairs) — the usual subsampling in ``pyro.plate(subsample_size)``.

    Parameters
    ----------
    dataset : MultimodalDataset
        The training data (y = -1 for unlabelled rows).
    batch_size : int
        Rows per unlabelled batch.
    labelled_batch_size : int, optional
        Rows per labelled batch; default ``batch_size``. Capped at the number of labelled rows.
    shuffle : bool
        Shuffle rows each epoch. With ``False`` rows come in data set order and the labelled
        rows wrap around in order.
    seed : int
        Seed of the numpy generator; epoch e uses ``numpy.random.default_rng([seed, e])``, so
        every epoch is reproducible on its own and successive epochs differ.

    Attributes
    ----------
    epoch : int
        The epoch the next iteration will produce; incremented when iteration starts. Set it
        with :meth:`set_epoch`.
    labelled_batch_size : int
        The effective labelled batch size, ``min(labelled_batch_size, n_labelled)`` (0 when
        there are no labelled rows).
    """

    def __init__(self, dataset, batch_size=128, *, labelled_batch_size=None, shuffle=True,
                 seed=0):
        if not isinstance(dataset, MultimodalDataset):
            raise ValueError(
                f"dataset: expected a MultimodalDataset; found {type(dataset).__name__}"
            )
        if len(dataset) == 0:
            raise ValueError("dataset: expected at least one row; found an empty data set")
        self.dataset = dataset
        self.batch_size = _check_positive_int(batch_size, "batch_size")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed: expected a non-negative integer; found {seed!r}")
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        labelled = dataset.is_labelled.numpy()
        self._labelled_rows = np.flatnonzero(labelled)
        self._unlabelled_rows = np.flatnonzero(~labelled)
        requested = (
            self.batch_size
            if labelled_batch_size is None
            else _check_positive_int(labelled_batch_size, "labelled_batch_size")
        )
        self.labelled_batch_size = min(requested, self.num_labelled)
        self.epoch = 0

    @property
    def num_labelled(self) -> int:
        """Number of labelled rows."""
        return int(self._labelled_rows.size)

    @property
    def num_unlabelled(self) -> int:
        """Number of unlabelled rows."""
        return int(self._unlabelled_rows.size)

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration produce epoch ``epoch`` (a non-negative integer)."""
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral) or epoch < 0:
            raise ValueError(f"epoch: expected a non-negative integer; found {epoch!r}")
        self.epoch = int(epoch)

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.num_unlabelled:
            passes = -(-self.num_unlabelled // self.batch_size)
            return passes * (2 if self.num_labelled else 1)
        return -(-self.num_labelled // self.labelled_batch_size)

    def __iter__(self) -> Iterator[tuple[Batch, int]]:
        epoch = self.epoch
        self.epoch += 1
        return self._epoch(np.random.default_rng([self.seed, epoch]))

    def _order(self, rows, rng):
        return rng.permutation(rows) if self.shuffle else rows

    def _epoch(self, rng):
        n_lab, n_unl = self.num_labelled, self.num_unlabelled
        if n_unl == 0:
            order = self._order(self._labelled_rows, rng)
            for start in range(0, n_lab, self.labelled_batch_size):
                yield self.dataset.batch(order[start:start + self.labelled_batch_size]), n_lab
            return
        unlabelled = self._order(self._unlabelled_rows, rng)
        cycle, position = self._order(self._labelled_rows, rng), 0
        for start in range(0, n_unl, self.batch_size):
            if n_lab:
                rows, cycle, position = self._next_labelled(cycle, position, rng)
                yield self.dataset.batch(rows), n_lab
            yield self.dataset.batch(unlabelled[start:start + self.batch_size]), n_unl

    def _next_labelled(self, cycle, position, rng):
        """Take labelled_batch_size rows from the cycle, starting a new cycle when it runs out.

        A batch that straddles two cycles takes the new cycle's first rows that are not already
        in the batch; the rows it passes over stay (in order) at the front of the new cycle, so
        each row still appears once per cycle.
        """
        size = self.labelled_batch_size
        taken = cycle[position:position + size]
        if taken.size == size:
            return taken, cycle, position + size
        fresh = self._order(self._labelled_rows, rng)
        free = ~np.isin(fresh, taken)
        fill = fresh[free][: size - taken.size]
        rest = fresh[~np.isin(fresh, fill)]
        cycle = np.concatenate([fill, rest])
        return np.concatenate([taken, fill]), cycle, fill.size
