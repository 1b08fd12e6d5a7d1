"""From what a user (or scikit-learn's model selection) passes as X and y to the data contract.

:func:`as_modality_mapping` turns the accepted forms of X into a mapping modality name ->
array [N, n_j]; :func:`check_labels` checks a label vector. Both refuse bad input with a
``ValueError`` that names the argument, what was found and what was expected, and neither
drops, truncates nor merges anything silently.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np
import pandas as pd

from pyro_mmt.data.dataset import (
    MultimodalDataset,
    check_aligned,
    check_label_indices,
    check_modality,
    modality_values,
)

__all__ = ["as_modality_mapping", "check_labels", "encode_labels"]

#: How many offending names or positions an error message lists.
_SHOW = 5


def _show(values):
    values = list(values)
    text = repr(values[:_SHOW])
    return text[:-1] + ", ...]" if len(values) > _SHOW else text


def _check_name(name, argument):
    if not isinstance(name, str) or not name:
        raise ValueError(f"{argument}: modality names must be non-empty strings; found {name!r}")


def as_modality_mapping(X, modalities=None) -> dict[str, np.ndarray]:
    """The mapping modality name -> array [N, n_j] behind ``X``, every array checked.

    ``X`` may be

    - a mapping modality name -> numpy array, tensor or DataFrame [N, n_j] (``modalities``
      must then be ``None``);
    - a DataFrame whose columns are a two-level MultiIndex (modality, feature), e.g.
      ``pandas.concat({"top": top, "bottom": bottom}, axis=1)``; each modality's columns must
      be side by side and appear once (a modality split into two blocks, or a repeated
      (modality, feature) column, is refused rather than merged);
    - a flat 2-D DataFrame or array (what scikit-learn's ``cross_val_score``,
      ``GridSearchCV`` or a ``Pipeline`` ending in a ``ColumnTransformer`` pass on) together
      with ``modalities``, a mapping modality name -> the columns that make it up: a list of
      column names (or a ``slice`` of positions) for a DataFrame; a list of column indices, a
      ``slice``, a ``range`` or a boolean mask for an array. A modality's columns are taken in
      the order given. Every column must belong to exactly one modality: a column claimed
      twice, an unknown column (or an index out of range), and a column claimed by none are
      refused, naming them.

    Each modality must be 2-D, of a real numeric or bool dtype (complex, string and object
    values are refused, naming the modality), finite or NaN in whole rows (a row of NaN marks
    the modality missing for that datum), within float32's range, and all modalities must
    have the same number of rows (and, for pandas inputs, the same row index: rows are
    matched by position). A modality that is NaN in every row is accepted here (prediction
    data may lack a modality); :class:`~pyro_mmt.data.MultimodalDataset` refuses it for
    training data.

    :param X: the data, in one of the forms above.
    :param modalities: for a flat ``X`` only: mapping modality name -> columns.
    :returns: dict modality name -> float numpy array [N, n_j], in the order of the mapping,
        of the first column level, or of ``modalities``. The arrays may share memory with
        ``X`` (float input is not copied); integer and bool input is converted to float64.
    :raises ValueError: for any input outside these forms; the message names the argument
        (``X``, ``X[<modality>]`` or ``modalities[<modality>]``).

    Examples
    --------
    >>> import numpy as np
    >>> flat = np.arange(12.0).reshape(3, 4)
    >>> x = as_modality_mapping(flat, modalities={"a": [0, 1], "b": slice(2, 4)})
    >>> {name: array.shape for name, array in x.items()}
    {'a': (3, 2), 'b': (3, 2)}
    """
    if isinstance(X, MultimodalDataset):
        raise ValueError(
            "X: expected a mapping, a DataFrame or a 2-D array; found a MultimodalDataset, which "
            "is already converted (pass it on as it is, or use X.to_numpy()[0] for its arrays)"
        )
    if isinstance(X, Mapping):
        if modalities is not None:
            raise ValueError(
                "modalities: only used with a flat 2-D DataFrame or array; found a mapping X, "
                "whose keys already name the modalities (pass modalities=None)"
            )
        if len(X) == 0:
            raise ValueError("X: expected at least one modality; found an empty mapping")
        for name in X:
            _check_name(name, "X")
        parts = {name: (value, f"X[{name!r}]") for name, value in X.items()}
        check_aligned({label: value for value, label in parts.values()}, "X")
    elif isinstance(X, pd.DataFrame) and X.columns.nlevels > 1:
        if modalities is not None:
            raise ValueError(
                "modalities: only used with a flat 2-D DataFrame or array; found a DataFrame "
                "with (modality, feature) columns, whose first level already names the "
                "modalities (pass modalities=None)"
            )
        parts = _split_multiindex(X)
    else:
        if modalities is None:
            raise ValueError(
                "X: expected a mapping modality name -> array [N, n_j], a DataFrame with "
                "(modality, feature) columns, or a flat 2-D DataFrame or array with "
                "modalities= (mapping modality name -> its columns); found a "
                f"{type(X).__name__} without modalities"
            )
        if isinstance(X, pd.DataFrame):
            parts = _split_flat_frame(X, modalities)
        else:
            parts = _split_flat_array(X, modalities)

    arrays = {}
    for name, (value, label) in parts.items():
        arrays[name], _, _ = check_modality(name, value, label)
    rows = {name: array.shape[0] for name, array in arrays.items()}
    if len(set(rows.values())) != 1:
        raise ValueError(f"X: expected the same number of rows N in every modality; found {rows}")
    return arrays


def _split_multiindex(frame):
    columns = frame.columns
    if columns.nlevels != 2:
        raise ValueError(
            "X: a DataFrame needs two column levels (modality, feature), e.g. "
            f"pandas.concat({{'a': Xa, 'b': Xb}}, axis=1); found {columns.nlevels} levels"
        )
    duplicated = columns[columns.duplicated()].unique()
    if len(duplicated):
        raise ValueError(
            f"X: columns {_show(duplicated)} appear more than once; expected each (modality, "
            "feature) column once"
        )
    level = np.asarray(columns.get_level_values(0), dtype=object)
    for name in pd.unique(level):
        _check_name(name, "X (the first column level)")
    starts = np.flatnonzero(np.r_[True, level[1:] != level[:-1]])
    stops = np.r_[starts[1:], level.size]
    parts = {}
    for start, stop in zip(starts, stops, strict=True):
        name = level[start]
        if name in parts:
            positions = np.flatnonzero(level == name)
            raise ValueError(
                f"X: the columns of modality {name!r} are not side by side (column positions "
                f"{_show(positions.tolist())}); expected each modality's columns in one block, "
                "e.g. pandas.concat({'a': Xa, 'b': Xb}, axis=1)"
            )
        parts[name] = (frame.iloc[:, start:stop], f"X[{name!r}]")
    return parts


def _check_modalities_argument(modalities):
    if not isinstance(modalities, Mapping) or len(modalities) == 0:
        raise ValueError(
            "modalities: expected a non-empty mapping modality name -> columns; found "
            f"{modalities!r}"[:300]
        )
    for name in modalities:
        _check_name(name, "modalities")


def _claim(claims, column, name, shown):
    if column in claims:
        raise ValueError(
            f"modalities: column {shown!r} is claimed by both {claims[column]!r} and {name!r}; "
            "expected each column in exactly one modality"
        )
    claims[column] = name


def _split_flat_frame(frame, modalities):
    _check_modalities_argument(modalities)
    columns = frame.columns
    duplicated = columns[columns.duplicated()].unique()
    if len(duplicated):
        raise ValueError(
            f"X: column names {_show(duplicated)} appear more than once; expected unique column "
            "names"
        )
    claims, parts = {}, {}
    for name, selection in modalities.items():
        argument = f"modalities[{name!r}]"
        if isinstance(selection, slice):  # positions: unambiguous for any column names
            selection = list(columns[_positions(selection, len(columns), argument)])
        if isinstance(selection, str | bytes) or not _is_list_like(selection):
            raise ValueError(
                f"{argument}: expected a list of column names of X; found {selection!r} "
                f"(write [{selection!r}] for a single column)"
            )
        selection = list(selection)
        if not selection:
            raise ValueError(f"{argument}: expected at least one column; found none")
        unknown = [c for c in selection if not _hashable(c) or c not in columns]
        if unknown:
            raise ValueError(
                f"{argument}: unknown columns {_show(unknown)}; expected column names of X "
                f"(X has {len(columns)} columns: {_show(columns)})"
            )
        for column in selection:
            _claim(claims, column, name, column)
        parts[name] = (frame.loc[:, selection], argument)
    unclaimed = [c for c in columns if c not in claims]
    if unclaimed:
        raise ValueError(
            f"X: columns {_show(unclaimed)} ({len(unclaimed)} columns) belong to no modality; "
            "expected every column in one modality of modalities= (drop unused columns first)"
        )
    return parts


def _split_flat_array(X, modalities):
    _check_modalities_argument(modalities)
    array = modality_values(X, "X")
    if array.ndim != 2:
        raise ValueError(
            f"X: expected a 2-D array [N, p] to split into modalities; found shape {array.shape}"
        )
    width = array.shape[1]
    claims, parts = {}, {}
    for name, selection in modalities.items():
        argument = f"modalities[{name!r}]"
        positions = _positions(selection, width, argument)
        for position in positions:
            _claim(claims, int(position), name, int(position))
        parts[name] = (array[:, positions], argument)
    unclaimed = [p for p in range(width) if p not in claims]
    if unclaimed:
        raise ValueError(
            f"X: columns {_show(unclaimed)} ({len(unclaimed)} of {width} columns) belong to no "
            "modality; expected every column in one modality of modalities= (drop unused "
            "columns first)"
        )
    return parts


def _positions(selection, width, argument):
    """Column positions (0..width-1, in the given order) of one modality of a flat array."""
    if isinstance(selection, slice):
        for bound in (selection.start, selection.stop):
            if bound is not None and not (isinstance(bound, numbers.Integral)
                                          and -width <= bound <= width):
                raise ValueError(
                    f"{argument}: slice bound {bound!r} is outside the {width} columns of X; "
                    f"expected integer bounds in [-{width}, {width}]"
                )
        positions = np.arange(width)[selection]
    else:
        if isinstance(selection, str | bytes) or not _is_list_like(selection):
            raise ValueError(
                f"{argument}: expected a list of column indices, a slice, a range or a boolean "
                f"mask; found {selection!r} (write [{selection!r}] for a single column)"
            )
        values = np.asarray(list(selection))
        if values.dtype.kind == "b":
            if values.shape != (width,):
                raise ValueError(
                    f"{argument}: a boolean mask must have one entry per column of X, "
                    f"{width}; found shape {values.shape}"
                )
            positions = np.flatnonzero(values)
        elif values.size and values.dtype.kind not in "iu":
            hint = ""
            if values.dtype.kind in "USO":
                hint = ("; X is an array without column names (a scikit-learn transformer, e.g. "
                        "StandardScaler in a Pipeline, returns one): keep the DataFrame with "
                        "make_pipeline(...).set_output(transform=\"pandas\"), or give column "
                        "positions")
            raise ValueError(
                f"{argument}: expected integer column indices of X; found {_show(values.tolist())} "
                f"(dtype {values.dtype}){hint}"
            )
        else:
            values = values.astype(np.int64).reshape(-1)
            outside = values[(values < -width) | (values >= width)]
            if outside.size:
                raise ValueError(
                    f"{argument}: unknown columns {_show(outside.tolist())}; expected indices "
                    f"in [-{width}, {width}) (X has {width} columns)"
                )
            positions = np.where(values < 0, values + width, values)
    if positions.size == 0:
        raise ValueError(f"{argument}: expected at least one column; found none")
    repeated = np.unique(positions[pd.Index(positions).duplicated()])
    if repeated.size:
        raise ValueError(
            f"{argument}: columns {_show(repeated.tolist())} are listed more than once; "
            "expected each column once"
        )
    return positions


def _is_list_like(value):
    return pd.api.types.is_list_like(value)


def _hashable(value):
    try:
        hash(value)
    except TypeError:
        return False
    return True


def check_labels(y, n_rows, num_classes=None, *, require_labelled=False,
                 require_every_class=False, class_names=None, argument="y") -> np.ndarray:
    """Check a label vector in the semi-supervised convention (class index, -1 = unlabelled).

    Refused: a length other than ``n_rows`` or more than one dimension; non-integer floats
    (2.5), NaN and infinities; strings, ``None`` and other objects; bools; values below -1;
    values >= ``num_classes`` when it is given. Integer-valued floats (1.0) are accepted.

    :param y: labels [N], array-like (list, numpy array, pandas Series, tensor).
    :param int n_rows: the number of rows N they must label.
    :param int num_classes: K, when known (e.g. a fitted model's); labels must be < K.
    :param bool require_labelled: refuse labels with no labelled row (every label -1).
    :param bool require_every_class: refuse labels where some class 0..K-1 has no labelled
        row (K = ``num_classes``, else max(y) + 1); implies ``require_labelled``.
    :param class_names: K names, used in messages only.
    :param str argument: how messages name the labels (default ``"y"``).
    :returns: int64 numpy array [N].
    :raises ValueError: naming ``argument``, what was found and what was expected.

    Examples
    --------
    >>> check_labels([0, 1.0, -1], 3).tolist()
    [0, 1, -1]
    """
    if isinstance(n_rows, bool) or not isinstance(n_rows, numbers.Integral) or n_rows < 0:
        raise ValueError(f"n_rows: expected a non-negative integer; found {n_rows!r}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(
            num_classes, numbers.Integral) or num_classes < 1):
        raise ValueError(f"num_classes: expected a positive integer; found {num_classes!r}")
    labels = check_label_indices(y, int(n_rows), num_classes, argument=argument)
    if not (require_labelled or require_every_class):
        return labels
    labelled = labels[labels >= 0]
    if labelled.size == 0:
        raise ValueError(
            f"{argument}: no row is labelled (all {labels.size} labels are -1); expected at least "
            "one labelled row (y >= 0) to learn the classes from"
        )
    if require_every_class:
        inferred = num_classes is None
        num_classes = int(labelled.max()) + 1 if inferred else int(num_classes)
        present = np.unique(labelled)
        if present.size < num_classes:
            # the first few absent classes lie below present.size + _SHOW + 1
            span = min(num_classes, present.size + _SHOW + 1)
            absent = np.setdiff1d(np.arange(span), present)[:_SHOW].tolist()
            more = num_classes - present.size - len(absent)
            shown = str(absent)[:-1] + (f", ... ({more} more)]" if more else "]")
            if class_names is not None:
                names = [str(n) for n in class_names]
                shown += " (" + ", ".join(repr(names[k]) for k in absent if k < len(names)) + ")"
            where = (f"the classes are 0..{num_classes - 1}, K = max({argument}) + 1"
                     if inferred else f"num_classes={num_classes}")
            counts = ""
            if num_classes <= 50:
                counts = (f"; labelled rows per class: "
                          f"{np.bincount(labelled, minlength=num_classes).tolist()}")
            raise ValueError(
                f"{argument}: classes {shown} have no labelled row ({where}{counts}); expected "
                "at least one labelled row per class"
            )
    return labels


def _unlabelled_mask(values: np.ndarray) -> np.ndarray:
    """True where an object array holds an unlabelled marker: None, NaN, pd.NA, -1."""
    out = np.zeros(values.shape, dtype=bool)
    for i, v in enumerate(values):
        if v is None or v is pd.NA or v is pd.NaT:
            out[i] = True
        elif isinstance(v, float | np.floating) and np.isnan(v):
            out[i] = True
        elif isinstance(v, numbers.Number) and not isinstance(v, bool | np.bool_) and v == -1:
            out[i] = True
    return out


def encode_labels(y, classes=None, *, argument="y") -> tuple[np.ndarray, np.ndarray]:
    """Labels as users hold them, as class codes: ``(codes, classes)``.

    ``y`` may hold any labels (strings, integers such as {3, 7}, bools, a pandas categorical);
    a row is unlabelled when its label is -1, NaN, None or ``pd.NA``. The classes are the
    sorted labelled values (or ``classes`` when given: a fitted model's), and ``codes[i]`` is
    the position of ``y[i]`` among them, -1 for an unlabelled row. Integer labels 0..K-1 are
    their own codes, so ``classes`` is then ``arange(K)``. Integer-valued floats count as
    integers (1.0 is the class 1).

    A column vector [N, 1] is raveled with a ``DataConversionWarning`` (as scikit-learn does).

    :raises ValueError: naming ``argument``: for non-integer float labels ("Unknown label type:
        continuous"), infinities, complex numbers, labels of mixed types (text and numbers),
        more than one column, or (with ``classes``) a label outside them.

    Examples
    --------
    >>> codes, classes = encode_labels(["b", None, "a", -1, "b"])
    >>> codes.tolist(), classes.tolist()
    ([1, -1, 0, -1, 1], ['a', 'b'])
    """
    import warnings

    from sklearn.exceptions import DataConversionWarning

    if isinstance(y, pd.DataFrame):
        y = y.to_numpy()
    if isinstance(y, pd.Series | pd.Index):
        values = y.astype(object).to_numpy() if isinstance(y.dtype, pd.CategoricalDtype) \
            or pd.api.types.is_extension_array_dtype(y.dtype) else y.to_numpy()
    elif hasattr(y, "detach"):  # a torch tensor
        values = y.detach().cpu().numpy()
    else:
        values = np.asarray(y)
    if values.ndim == 2 and values.shape[1] == 1:
        warnings.warn("A column-vector y was passed when a 1d array was expected. Please "
                      f"change the shape of {argument} to (n_samples, ), for example using "
                      "ravel().", DataConversionWarning, stacklevel=3)
        values = values.ravel()
    if values.ndim != 1:
        raise ValueError(f"{argument}: expected a 1-D array of labels; found shape "
                         f"{values.shape}")
    kind = values.dtype.kind
    if kind == "c":
        raise ValueError(f"{argument}: expected class labels; found complex values (dtype "
                         f"{values.dtype})")
    if kind == "f":
        filled = values[~np.isnan(values)]
        if not np.isfinite(filled).all():
            raise ValueError(f"{argument}: expected class labels (NaN or -1 = unlabelled); found "
                             "infinite values")
        if (filled != np.round(filled)).any():
            bad = np.flatnonzero(~np.isnan(values) & (values != np.round(values)))
            raise ValueError(
                f"{argument}: Unknown label type: continuous; expected class labels (strings or "
                f"integers, -1 or NaN = unlabelled); found non-integer values "
                f"{values[bad[:_SHOW]].tolist()} at rows {bad[:_SHOW].tolist()}")
        unlabelled = np.isnan(values) | (values == -1)
        values = np.where(unlabelled, -1, values).astype(np.int64)
        kind = "i"
    if kind in "iu":
        unlabelled = values == -1
        plain = values
    else:
        values = values.astype(object)
        unlabelled = _unlabelled_mask(values)
        plain = np.array([v.item() if isinstance(v, np.generic) else v for v in values],
                         dtype=object)
        for i in np.flatnonzero(~unlabelled):  # integer-valued floats count as integers
            v = plain[i]
            if isinstance(v, float):
                if not np.isfinite(v) or not v.is_integer():
                    raise ValueError(
                        f"{argument}: Unknown label type: continuous; expected class labels "
                        f"(strings or integers, -1 or NaN = unlabelled); found {v!r} at row {i}")
                plain[i] = int(v)
    labelled = plain[~unlabelled]
    if classes is None:
        try:
            found = sorted(set(labelled.tolist()))
        except TypeError as error:
            kinds = sorted({type(v).__name__ for v in labelled.tolist()})
            raise ValueError(f"{argument}: expected labels of one kind; found a mix of {kinds} "
                             "(e.g. text and numbers)") from error
        classes = np.array(found) if found else np.zeros(0, dtype=np.int64)
    classes = np.asarray(classes)
    codes = np.full(values.shape[0], -1, dtype=np.int64)
    if classes.dtype.kind in "iu" and plain.dtype.kind in "iu" and classes.size:
        given = plain[~unlabelled]  # classes are sorted: look them up by bisection
        position = np.minimum(np.searchsorted(classes, given), classes.size - 1)
        codes[~unlabelled] = np.where(classes[position] == given, position, -2)
    else:
        index = {}
        for k, c in enumerate(classes.tolist()):
            index.setdefault(c, k)
        rows = np.flatnonzero(~unlabelled)
        codes[rows] = [index.get(v, -2) for v in plain[rows].tolist()]
    unknown = np.flatnonzero(codes == -2)
    if unknown.size:
        shown = sorted({str(v) for v in plain[unknown].tolist()})[:_SHOW]
        raise ValueError(
            f"{argument}: labels {shown} at rows {unknown[:_SHOW].tolist()} are not among the "
            f"classes {classes.tolist()[:20]}; expected those classes (or -1, NaN, None for "
            "unlabelled rows)")
    return codes, classes
