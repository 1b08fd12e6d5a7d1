"""Data as statisticians hold it: a table (a DataFrame, a CSV or a Parquet file) with one
column of labels and the feature columns grouped into modalities.

A :class:`TableSchema` says which columns make up each modality, which column holds the labels
and which columns to leave out; :meth:`TableSchema.encode` turns a table into a
:class:`~pyro_mmt.data.MultimodalDataset` and returns the schema completed with what it learnt
(the classes and the categories of string columns), so that new tables (data to predict on, a
test file) are coded the same way. :func:`read_table` does the same for a file.

The conventions:

- **Modalities**: ``modalities={"size": ["radius", "area"], ...}``, or, without one, column
  prefixes: a column ``size__radius`` is the feature ``radius`` of modality ``size``.
- **Labels**: any values (strings, integers, a pandas categorical); a row is *unlabelled*
  when its label is empty, NaN, None, ``pd.NA`` or -1 (also the text ``"-1"``). The classes
  are the sorted labelled values; class ``k`` of the data set is the k-th of them, and its
  name is ``str(value)``.
- **Missing modalities and cells**: a modality is missing for a row when every one of its
  cells is empty (NaN); an empty cell in a row whose other cells of that modality are filled
  is a missing cell, which the model leaves out of the row's density (and
  ``estimator.impute`` fills).
- **Strings**: a column of text (not numbers) is a categorical feature: its values are coded
  0..C-1 in sorted order (a pandas categorical: in its categories' order) and its modality gets
  the ``"categorical"`` likelihood; the category names are kept in ``schema.categories``. A
  modality may not mix text and numeric columns.

Every column of the table must be a feature, the label or listed in ``ignore``: nothing is
dropped silently. Errors are ``ValueError`` naming the file (or ``frame``), the column and the
row (with the line of a CSV file), what was found and what was expected.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from pyro_mmt.data.dataset import MultimodalDataset

__all__ = ["PREFIX_SEPARATOR", "TABLE_SUFFIXES", "TableSchema", "read_table", "read_frame"]

#: Without a modality mapping, ``<modality>__<feature>`` names a modality's column.
PREFIX_SEPARATOR = "__"

#: File suffixes :func:`read_table` reads (CSV; Parquet through pyarrow).
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")

#: How many offending values or rows an error message lists.
_SHOW = 5


def _is_unlabelled(value) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    if isinstance(value, str):
        return value.strip() in ("", "-1")
    if isinstance(value, float | np.floating) and np.isnan(value):
        return True
    try:
        return bool(value == -1) and not isinstance(value, bool | np.bool_)
    except (TypeError, ValueError):
        return False


def _plain(value):
    """A label value as a plain Python scalar (integer-valued floats as ints), for JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class TableSchema:
    """How a table's columns become a :class:`~pyro_mmt.data.MultimodalDataset`.

    :param modalities: mapping modality name -> its column names, in order; ``None`` (default)
        reads the modalities from column prefixes ``<modality>__<feature>``.
    :param label: the label column (``None``: the table has no labels).
    :param likelihood: mapping modality -> family (``"student_t"``, ``"gaussian"``,
        ``"bernoulli"``, ``"poisson"``, ``"categorical"``), for the estimator's
        ``likelihood=``; modalities of text columns are ``"categorical"`` without being listed.
    :param ignore: columns to leave out (identifiers, free text).
    :param classes: the label values, in class order; learnt by :meth:`encode` (the sorted
        labelled values) when ``None``, else fixed (a table with other labels is refused).
    :param categories: mapping column -> its category names (code = position), for text
        columns; learnt by :meth:`encode` for the columns not listed.

    A schema file (:meth:`from_file`) is JSON or TOML with the same keys, e.g. in TOML::

        label = "diagnosis"
        ignore = ["id"]
        [modalities]
        size = ["radius", "area", "perimeter"]
        texture = ["smoothness", "symmetry"]
        site = ["site"]
        [likelihood]
        site = "categorical"
    """

    modalities: Mapping[str, Sequence[str]] | None = None
    label: str | None = None
    likelihood: Mapping[str, str] = field(default_factory=dict)
    ignore: Sequence[str] = ()
    classes: Sequence | None = None
    categories: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def __post_init__(self):
        if self.modalities is not None:
            if not isinstance(self.modalities, Mapping) or not self.modalities:
                raise ValueError(f"modalities: expected a non-empty mapping modality name -> "
                                 f"column names; found {self.modalities!r}"[:300])
            checked = {}
            for name, columns in self.modalities.items():
                if not isinstance(name, str) or not name:
                    raise ValueError(f"modalities: modality names must be non-empty strings; "
                                     f"found {name!r}")
                if isinstance(columns, str) or not isinstance(columns, Sequence) or not columns:
                    raise ValueError(
                        f"modalities[{name!r}]: expected a non-empty list of column names; "
                        f"found {columns!r} (write [{columns!r}] for a single column)")
                checked[name] = tuple(columns)
            object.__setattr__(self, "modalities", checked)
        if self.label is not None and not isinstance(self.label, str):
            raise ValueError(f"label: expected a column name; found {self.label!r}")
        if not isinstance(self.likelihood, Mapping):
            raise ValueError(f"likelihood: expected a mapping modality -> family; found "
                             f"{self.likelihood!r}")
        object.__setattr__(self, "likelihood", dict(self.likelihood))
        if isinstance(self.ignore, str):
            raise ValueError(f"ignore: expected a list of column names; found the string "
                             f"{self.ignore!r} (write [{self.ignore!r}])")
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(_plain(c) for c in self.classes))
        object.__setattr__(self, "categories",
                           {str(k): tuple(str(v) for v in vs) for k, vs in self.categories.items()})

    # ------------------------------------------------------------------------- files
    @classmethod
    def from_dict(cls, values: Mapping, where: str = "schema") -> TableSchema:
        """A schema from a mapping with the keys ``modalities``, ``label``, ``likelihood``,
        ``ignore``, ``classes`` and ``categories`` (any may be absent)."""
        if not isinstance(values, Mapping):
            raise ValueError(f"{where}: expected a mapping (a JSON object or TOML table); found "
                             f"{type(values).__name__}")
        known = ("modalities", "label", "likelihood", "ignore", "classes", "categories")
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; expected keys among "
                             f"{list(known)}")
        try:
            return cls(**{k: values[k] for k in known if k in values})
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error

    @classmethod
    def from_file(cls, path: str | PathLike) -> TableSchema:
        """Read a schema from a ``.json`` or ``.toml`` file."""
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"schema: no file at {path}")
        try:
            if path.suffix == ".toml":
                values = tomllib.loads(path.read_text())
            elif path.suffix == ".json":
                values = json.loads(path.read_text())
            else:
                raise ValueError(f"schema: expected a .json or .toml file; found {path}")
        except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"schema: {path} is not readable {path.suffix[1:].upper()} "
                             f"({error})") from error
        return cls.from_dict(values, f"schema: {path}")

    def to_dict(self) -> dict:
        """The schema as JSON can hold it (read back with :meth:`from_dict`)."""
        return {
            "modalities": None if self.modalities is None
            else {k: list(v) for k, v in self.modalities.items()},
            "label": self.label, "likelihood": dict(self.likelihood),
            "ignore": list(self.ignore),
            "classes": None if self.classes is None else list(self.classes),
            "categories": {k: list(v) for k, v in self.categories.items()},
        }

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """``str`` of each class value (the data set's ``class_names``), once known."""
        return None if self.classes is None else tuple(str(c) for c in self.classes)

    # ------------------------------------------------------------------------ encoding
    def encode(self, frame: pd.DataFrame, *, where: str = "frame", labels: str = "required",
               allow_unobserved_modalities: bool = False,
               csv_lines: bool = False) -> tuple[MultimodalDataset, TableSchema]:
        """The data set of ``frame``, and this schema completed with the classes, the
        categories and the likelihood of text columns it learnt.

        :param where: how messages name the table (a file path, or ``frame``).
        :param labels: ``"required"``: the label column must be there; ``"optional"``: a
            table without it (data to predict on) gives unlabelled rows; its classes come from
            the schema's ``classes``.
        :param allow_unobserved_modalities: accept a modality empty in every row, or whose
            columns are all absent (data only predicted on).
        :param csv_lines: rows are lines of a CSV file with a header (messages give the line).
        """
        if not isinstance(frame, pd.DataFrame):
            raise ValueError(f"{where}: expected a pandas DataFrame; found "
                             f"{type(frame).__name__}")
        if labels not in ("required", "optional"):
            raise ValueError(f"labels: expected 'required' or 'optional'; found {labels!r}")
        columns = [str(c) for c in frame.columns]
        if len(set(columns)) != len(columns):
            repeated = sorted({c for c in columns if columns.count(c) > 1})
            raise ValueError(f"{where}: columns {repeated[:_SHOW]} appear more than once; "
                             "expected unique column names")
        frame = frame.set_axis(columns, axis=1)
        rows = _RowNames(frame.index, csv_lines)
        has_label = self.label is not None and self.label in columns
        if self.label is not None and not has_label and labels == "required":
            raise ValueError(f"{where}: no label column {self.label!r}; expected it among the "
                             f"columns {_show(columns)} (name the label column with label=: "
                             "--label COL, or label = \"COL\" in a schema file)")
        if self.label is None and labels == "required":
            raise ValueError(f"{where}: no label column was named; pass label= (or --label, or "
                             "\"label\" in the schema file), the column holding the classes")
        if allow_unobserved_modalities and self.modalities is not None:
            # data to predict on may lack a modality's columns altogether: missing everywhere
            absent = [c for cols in self.modalities.values() if not set(cols) & set(columns)
                      for c in cols]
            frame = frame.assign(**dict.fromkeys(absent, np.nan))
            columns = [*columns, *absent]
        modalities = self._modalities(columns, where)
        unknown = [c for c in self.ignore if c not in columns]
        if unknown:
            raise ValueError(f"{where}: ignore lists columns {unknown[:_SHOW]} that the table "
                             f"lacks; expected columns among {_show(columns)}")
        claimed = {c for cs in modalities.values() for c in cs} | set(self.ignore)
        if has_label:
            claimed.add(self.label)
        unclaimed = [c for c in columns if c not in claimed]
        if unclaimed:
            raise ValueError(
                f"{where}: columns {_show(unclaimed)} belong to no modality; expected every "
                "column in a modality, the label column or ignore (list it under ignore to "
                "leave it out)")
        unknown_families = sorted(set(self.likelihood) - set(modalities))
        if unknown_families:
            raise ValueError(f"{where}: likelihood names modalities {unknown_families} that the "
                             f"table lacks; expected names among {list(modalities)}")

        categories = dict(self.categories)
        likelihood = dict(self.likelihood)
        x = {}
        for name, cols in modalities.items():
            x[name], text = self._modality(frame, name, cols, categories, where, rows)
            if text:
                family = likelihood.setdefault(name, "categorical")
                if family != "categorical":
                    raise ValueError(
                        f"{where}: modality {name!r} holds text columns "
                        f"{[c for c in cols if c in text]}, which are coded as categories; "
                        f"expected likelihood 'categorical' for it, found {family!r}")
        y, classes = None, self.classes
        if has_label:
            y, classes = self._labels(frame[self.label], where, rows)
        if classes is None or len(classes) == 0:
            raise ValueError(
                f"{where}: no row of column {self.label!r} is labelled (empty, NaN, None and -1 "
                "mark unlabelled rows); expected some labelled rows to learn the classes from")
        observed = np.stack([~np.isnan(a).all(axis=1) for a in x.values()], axis=1)
        empty = np.flatnonzero(~observed.any(axis=1))
        if empty.size:
            raise ValueError(
                f"{where}: every feature cell is empty in {rows.names(empty)} ({empty.size} "
                "rows); expected each row to observe at least one modality (drop those rows)")
        unobserved = [m for j, m in enumerate(x) if not observed[:, j].any()]
        if unobserved and not allow_unobserved_modalities:
            raise ValueError(
                f"{where}: modalities {unobserved} are empty in every row; expected each "
                "modality observed in some row (leave its columns out, or under ignore)")
        schema = replace(self, modalities=modalities, likelihood=likelihood, classes=classes,
                         categories=categories)
        try:
            data = MultimodalDataset(x, y, num_classes=len(classes),
                                     class_names=schema.class_names,
                                     allow_unobserved_modalities=allow_unobserved_modalities)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from error
        return data, schema

    def _modalities(self, columns, where):
        if self.modalities is not None:
            for name, cols in self.modalities.items():
                unknown = [c for c in cols if c not in columns]
                if unknown:
                    raise ValueError(
                        f"{where}: modality {name!r} names columns {unknown[:_SHOW]} that the "
                        f"table lacks; expected columns among {_show(columns)}")
            seen = {}
            for name, cols in self.modalities.items():
                for c in cols:
                    if c in seen:
                        raise ValueError(f"{where}: column {c!r} is in both modality "
                                         f"{seen[c]!r} and {name!r}; expected each column in "
                                         "one modality")
                    seen[c] = name
            if self.label in seen:
                raise ValueError(f"{where}: the label column {self.label!r} is also a feature "
                                 f"of modality {seen[self.label]!r}")
            return dict(self.modalities)
        modalities = {}
        for c in columns:
            if c == self.label or c in self.ignore:
                continue
            name, sep, feature = c.partition(PREFIX_SEPARATOR)
            if not sep or not name or not feature:
                raise ValueError(
                    f"{where}: column {c!r} has no modality prefix; expected columns named "
                    f"<modality>{PREFIX_SEPARATOR}<feature> (e.g. size{PREFIX_SEPARATOR}radius), "
                    "or a schema that lists each modality's columns (modalities=, --schema or "
                    "--modality NAME=col,col), or the column under ignore")
            modalities.setdefault(name, []).append(c)
        if not modalities:
            raise ValueError(f"{where}: no feature columns; found only {_show(columns)}")
        return {k: tuple(v) for k, v in modalities.items()}

    def _modality(self, frame, name, cols, categories, where, rows):
        """One modality as a float array [N, n_j] (NaN rows = missing) and its text columns."""
        values, text = [], set()
        for c in cols:
            column = frame[c]
            if column.isna().all() and c not in categories:  # an empty column: no values
                values.append(np.full(len(column), np.nan))
            elif c in categories or _is_text(column):
                text.add(c)
                values.append(_codes(column, c, categories, where, rows))
            elif _is_numbers_as_text(column):  # e.g. a string-typed column of "0.1", "2"
                values.append(pd.to_numeric(column, errors="raise").to_numpy(
                    dtype=np.float64, na_value=np.nan))
            elif pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
                if pd.api.types.is_complex_dtype(column):
                    raise ValueError(f"{where}: column {c!r} holds complex numbers; expected "
                                     "real numbers")
                values.append(column.to_numpy(dtype=np.float64, na_value=np.nan))
            else:
                bad = _first_non_number(column)
                raise ValueError(
                    f"{where}: column {c!r}, {rows.name(bad)}: found {column.iloc[bad]!r}, not a "
                    "number, among numbers; expected numbers (or only text, for a categorical "
                    "column)")
        if text and len(text) != len(cols):
            raise ValueError(
                f"{where}: modality {name!r} mixes text columns {sorted(text)} and numeric "
                f"columns {[c for c in cols if c not in text]}; expected one kind per modality "
                "(give the text columns their own modality)")
        array = np.stack(values, axis=1)
        infinite = np.flatnonzero(np.isinf(array).any(axis=1))
        if infinite.size:
            r = infinite[0]
            c = cols[int(np.flatnonzero(np.isinf(array[r]))[0])]
            raise ValueError(f"{where}: column {c!r}, {rows.name(r)}: found {array[r, cols.index(c)]}; "
                             "expected finite numbers")
        return array, text

    def _labels(self, column, where, rows):
        """Class codes [N] (-1 = unlabelled) and the classes (learnt, or the schema's)."""
        values = column.astype(object).to_numpy()
        labelled = np.array([not _is_unlabelled(v) for v in values], dtype=bool)
        plain = np.array([_plain(v) for v in values], dtype=object)
        if self.classes is None:
            try:
                classes = tuple(sorted(set(plain[labelled].tolist())))
            except TypeError as error:
                kinds = sorted({type(v).__name__ for v in plain[labelled]})
                raise ValueError(
                    f"{where}: column {self.label!r} mixes label types {kinds}; expected one kind "
                    "of label (text or numbers)") from error
        else:
            classes = self.classes
        index = {c: k for k, c in enumerate(classes)}
        codes = np.full(len(values), -1, dtype=np.int64)
        for r in np.flatnonzero(labelled):
            code = index.get(plain[r])
            if code is None:
                code = index.get(str(plain[r]))  # e.g. "3" read as text against a class 3
            if code is None:
                for k, c in enumerate(classes):
                    if str(c) == str(plain[r]):
                        code = k
                if code is None:
                    raise ValueError(
                        f"{where}: column {self.label!r}, {rows.name(r)}: found the label "
                        f"{plain[r]!r}; expected one of the classes {list(classes)} (or an "
                        "empty cell, NaN or -1 for an unlabelled row)")
            codes[r] = code
        return codes, classes


def _is_text(column: pd.Series) -> bool:
    """A column of text (strings, or a pandas categorical of strings), every filled cell not a
    number."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return True
    if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
        return False
    filled = column.dropna()
    if filled.empty:
        return False
    return all(isinstance(v, str) and not _is_number(v) for v in filled)


def _is_numbers_as_text(column: pd.Series) -> bool:
    """A text-typed column whose every filled cell is a number written as text."""
    if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
        return False
    filled = column.dropna()
    return not filled.empty and all(isinstance(v, str) and _is_number(v) for v in filled)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _first_non_number(column: pd.Series) -> int:
    for r, v in enumerate(column.to_numpy()):
        if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
            continue
        if isinstance(v, str) and not _is_number(v):
            return r
        if not isinstance(v, str | int | float | np.number | bool):
            return r
    return 0


def _codes(column, name, categories, where, rows):
    """A text column's codes 0..C-1 (NaN where empty); its categories are learnt (sorted) into
    ``categories`` unless listed there already."""
    values = column.astype(object).to_numpy()
    empty = np.array([v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v))
                      for v in values], dtype=bool)
    text = np.array([str(v) for v in values], dtype=object)
    if name not in categories:
        if isinstance(column.dtype, pd.CategoricalDtype):
            known = [str(c) for c in column.cat.categories]
        else:
            known = sorted(set(text[~empty].tolist()))
        categories[name] = tuple(known)
    index = {c: k for k, c in enumerate(categories[name])}
    codes = np.full(len(values), np.nan)
    for r in np.flatnonzero(~empty):
        code = index.get(text[r])
        if code is None:
            raise ValueError(
                f"{where}: column {name!r}, {rows.name(r)}: found the category {text[r]!r}; "
                f"expected one of {_show(categories[name])} (the categories the model was "
                "trained on)")
        codes[r] = code
    return codes


class _RowNames:
    """How messages name rows: position, with the index label or the line of a CSV file."""

    def __init__(self, index, csv_lines):
        self.index = index
        self.csv_lines = csv_lines
        self.default = isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1

    def name(self, r) -> str:
        r = int(r)
        if self.csv_lines:
            return f"row {r} (line {r + 2})"
        if self.default:
            return f"row {r}"
        return f"row {r} (index {self.index[r]!r})"

    def names(self, positions) -> str:
        return ", ".join(self.name(r) for r in positions[:3]) + (", ..." if len(positions) > 3
                                                                  else "")


def _show(values):
    values = list(values)
    text = repr(values[:_SHOW])
    return text[:-1] + f", ... ({len(values)} in all)]" if len(values) > _SHOW else text


# ---------------------------------------------------------------------------------- files
def read_frame(path: str | PathLike) -> pd.DataFrame:
    """The table of a CSV or Parquet file (empty CSV cells as NaN); ``ValueError`` naming the
    file when it is not one."""
    path = Path(path)
    where = os.fspath(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise ValueError(f"path: expected a {', '.join(TABLE_SUFFIXES)} file; found {where}")
    if not path.is_file():
        raise ValueError(f"path: no file at {where}")
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path)
        return pd.read_parquet(path)
    except ImportError as error:
        raise ValueError(f"path: reading {where} needs pyarrow ({error}); pip install "
                         "pyarrow") from error
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as error:
        kind = "CSV" if path.suffix.lower() == ".csv" else "Parquet"
        raise ValueError(f"path: {where} is not a readable {kind} file ({error})") from error


def read_table(path: str | PathLike, schema: TableSchema | None = None, *,
               labels: str = "required", allow_unobserved_modalities: bool = False
               ) -> tuple[MultimodalDataset, TableSchema]:
    """Read a CSV or Parquet file as a data set with ``schema`` (default: modalities from
    column prefixes ``<modality>__<feature>`` and the label column ``label``).

    :returns: the data set and the schema completed with the classes, categories and
        likelihoods it learnt (pass it back to read other files the same way, and its
        ``likelihood`` to the estimator).
    :raises ValueError: naming the file, the column and the row (a CSV row with its line).
    """
    schema = TableSchema(label="label") if schema is None else schema
    frame = read_frame(path)
    csv = Path(path).suffix.lower() == ".csv"
    return schema.encode(frame, where=os.fspath(path), labels=labels,
                         allow_unobserved_modalities=allow_unobserved_modalities, csv_lines=csv)
