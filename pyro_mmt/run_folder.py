"""Run folders: where a fit's files are written, how an unfinished run is kept, published and
resumed. Used by the estimator (``checkpoint_dir``: ``fit.json`` and the checkpoints) and by
``pyro-mmt train``/``tune`` (the run folder and its hidden partial folder).

- :func:`partial_dir`: the hidden sibling ``.<name>.partial`` in which a run is written until
  it is complete; :func:`publish` renames it into place, so the run folder is at every instant
  the old run, absent, or the new run, never parts of both.
- :func:`write_atomic`/:func:`write_text_atomic`: a file written to a temporary sibling and
  renamed into place (the outputs of ``evaluate``, ``predict``, ``benchmark`` and ``report``).
- :func:`read_json`/:func:`write_json` (atomic: a temporary file renamed into place) and
  :func:`set_status` (``config.json``'s ``"status"``: ``running``, ``interrupted``,
  ``diverged``, ``failed`` or :data:`FINISHED`).
- :func:`fingerprint` of the data and :func:`changed_settings`, against the one list of
  settings a resume may change, :func:`~pyro_mmt.config.resumable_settings`.

Errors are ``ValueError`` naming what was found and what was expected.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "FINISHED",
    "partial_dir",
    "read_json",
    "write_atomic",
    "write_json",
    "write_text_atomic",
    "set_status",
    "holds_files",
    "publish",
    "fingerprint",
    "changed_settings",
]

#: ``config.json``'s ``status`` of a complete run; an unfinished one has ``running``,
#: ``interrupted``, ``diverged`` or ``failed`` and lives in the hidden folder of
#: :func:`partial_dir` until it finishes.
FINISHED = "finished"


def partial_dir(out) -> Path:
    """The hidden sibling folder in which the run for ``out`` is written until it finishes."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def read_json(path) -> dict | None:
    """The JSON object in ``path``; None when there is no such file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a readable {path.name} ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(f"{path} is not a run's {path.name} (expected a JSON object)")
    return value


def write_atomic(path, write: Callable[[Path], object]) -> None:
    """Write the file ``path`` atomically: ``write(tmp)`` writes a temporary sibling, which is
    then renamed into place, so ``path`` holds either its old content or the whole new one. A
    failed ``write`` leaves ``path`` as it was and removes the temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`write_atomic`)."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path, value: Mapping) -> None:
    """Write ``value`` as JSON atomically (a temporary file renamed into place)."""
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True, default=str))


def set_status(path, status: str, **extra) -> None:
    """Set the ``status`` (and ``extra`` entries) of the JSON file ``path``."""
    value = read_json(path) or {}
    value.update(status=status, **extra)
    write_json(path, value)


def holds_files(folder) -> bool:
    """Whether ``folder`` is a folder holding anything."""
    folder = Path(folder)
    return folder.is_dir() and any(folder.iterdir())


def publish(partial, out, overwrite: bool) -> None:
    """Move the finished run ``partial`` to ``out``. An old run at ``out`` (with
    ``overwrite``) is first renamed aside and removed afterwards, so ``out`` is at every
    instant the old run, absent, or the new run, never parts of both."""
    partial, out = Path(partial), Path(out)
    old = None
    if out.exists():
        if holds_files(out):
            if not overwrite:
                raise ValueError(
                    f"--out: {out} was filled by someone else while this run trained; the "
                    f"finished run is kept in {partial} (move it yourself, or run again with "
                    "--overwrite)")
            old = out.parent / f".{out.name}.replaced-{os.getpid()}"
            out.rename(old)
        else:
            out.rmdir()
    partial.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def fingerprint(data) -> str:
    """SHA-256 of a :class:`~pyro_mmt.data.MultimodalDataset`'s values, mask and labels (what
    a resumed fit must see again)."""
    digest = hashlib.sha256()
    for m in data.modalities:
        digest.update(m.encode())
        digest.update(np.ascontiguousarray(data.x[m].numpy()).tobytes())
    digest.update(np.ascontiguousarray(data.mask.numpy()).tobytes())
    for m, cells in data.cells.items():  # (none for data without missing cells)
        digest.update(f"cells {m}".encode())
        digest.update(np.ascontiguousarray(cells.numpy()).tobytes())
    digest.update(np.ascontiguousarray(data.y.numpy()).tobytes())
    return digest.hexdigest()[:16]


def changed_settings(old: Mapping, new: Mapping, resumable: Iterable[str]) -> list[str]:
    """The names, sorted, whose values differ between the settings ``old`` (those of the
    checkpointed run) and ``new``, leaving out the ``resumable`` ones."""
    resumable = set(resumable)
    return sorted(k for k in set(old) | set(new)
                  if k not in resumable and old.get(k) != new.get(k))
