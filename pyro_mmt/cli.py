"""The ``pyro-mmt`` command line: train, evaluate, predict, tune, benchmark, report, diagnose,
demo.

Run ``pyro-mmt COMMAND --help`` for each command's options.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pyro_mmt.config import default, resumable_settings
from pyro_mmt.run_folder import (
    FINISHED,
    holds_files,
    partial_dir,
    publish,
    read_json,
    write_atomic,
    write_json,
    write_text_atomic,
)
from pyro_mmt.run_folder import changed_settings as _changed_settings
from pyro_mmt.run_folder import set_status as _set_file_status

__all__ = ["main", "build_parser"]

RUN_FILES = {
    "config": "config.json",
    "estimator": "estimator.pt",
    "history": "history.csv",
    "metrics": "metrics.csv",
    "train": "train.npz",
    "test": "test.npz",
    "schema": "schema.json",
    "predictions": "predictions.csv",
}

#: The plots ``pyro-mmt train`` writes to a run folder (the last two with a test split).
RUN_PLOTS = ("training_curves.png", "recall_vs_frequency.png", "confusion_matrix.png")

#: Exit status after Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

RUN_FOLDER_HELP = (
    "A run folder holds config.json (the settings, \"status\": \"finished\" and the decision "
    "rule its predictions use: decision_shift and reference_shares), train.npz "
    "(the rows trained on), test.npz (with a data set name: the held-out split), estimator.pt "
    "(load_estimator; torch.load(weights_only=True)), history.csv, metrics.csv (with a test "
    "split), schema.json (with a CSV or Parquet file: its modalities, label column, classes "
    "and categories, with which evaluate and predict read other files), predictions.csv "
    "(once `pyro-mmt predict` has run without --out) and the plots training_curves.png, "
    "recall_vs_frequency.png and confusion_matrix.png (the last two with a test split). It "
    "appears only when the run is complete: the run is written to the hidden folder "
    ".<name>.partial beside it and renamed into place at the end. "
    "An interrupted (Ctrl-C) or diverged run stays there with its checkpoints and "
    "\"status\": \"interrupted\"/\"diverged\"; continue it with --resume (--lr and --epochs "
    "may change). An existing run folder is replaced only with --overwrite, and only once the "
    "new run is complete."
)


# --------------------------------------------------------------------------------- helpers
def _read_config(folder: Path) -> dict | None:
    """A run folder's ``config.json`` (None when it has none)."""
    return read_json(Path(folder) / RUN_FILES["config"])


def _set_status(folder: Path, status: str, **extra) -> None:
    _set_file_status(Path(folder) / RUN_FILES["config"], status, **extra)


_write_json, _holds_files, _publish = write_json, holds_files, publish


#: The files that ``DATA`` may name besides a data set name.
DATA_FILES = ".npz, .csv or .parquet"


def _table_schema(args):
    """The modality schema of a CSV or Parquet file from ``--schema``, ``--modality``,
    ``--label`` and ``--ignore`` (default: column prefixes NAME__col, label column ``label``)."""
    from pyro_mmt.data import TableSchema

    schema = TableSchema.from_file(args.schema) if args.schema else TableSchema(label="label")
    changes = {}
    if args.modality:
        if args.schema and schema.modalities is not None:
            raise SystemExit("error: --modality: the --schema file lists the modalities "
                             "already; give them in one place")
        modalities = {}
        for text in args.modality:
            name, sep, columns = text.partition("=")
            columns = [c.strip() for c in columns.split(",") if c.strip()]
            if not sep or not name.strip() or not columns:
                raise SystemExit(f"error: --modality: expected NAME=col,col,...; found {text!r}")
            if name.strip() in modalities:
                raise SystemExit(f"error: --modality: {name.strip()!r} given twice")
            modalities[name.strip()] = columns
        changes["modalities"] = modalities
    if args.label:
        changes["label"] = args.label
    if args.ignore:
        changes["ignore"] = (*schema.ignore, *args.ignore)
    return TableSchema.from_dict({**schema.to_dict(), **changes}) if changes else schema


def _is_table(source) -> bool:
    from pyro_mmt.data.tabular import TABLE_SUFFIXES

    return Path(source).suffix.lower() in TABLE_SUFFIXES


def _load_data(source: str, args=None):
    """A data set name (``pyro_mmt.data.DATASETS``), an ``.npz`` file, or a CSV or Parquet
    file read with the schema of ``args``: ``(data, named, schema)``, ``schema`` None except
    for a CSV or Parquet file (then completed with the classes and categories it found)."""
    from pyro_mmt.data import DATASETS, MultimodalDataset, load_dataset, read_table

    if source in DATASETS:
        return load_dataset(source), True, None
    path = Path(source)
    if path.suffix == ".npz" or _is_table(path):
        if not path.is_file():
            raise SystemExit(f"error: DATA: no file at {path}")
        if path.suffix == ".npz":
            return MultimodalDataset.from_npz(path), False, None
        data, schema = read_table(path, _table_schema(args))
        return data, False, schema
    raise SystemExit(
        f"error: DATA: expected a data set name ({', '.join(DATASETS)}) or a {DATA_FILES} "
        f"path, found {source!r}"
    )


def _run_data(run: Path, path: Path, *, labels: str, num_classes: int, class_names=None):
    """A file given to ``evaluate`` or ``predict``: an ``.npz``, or a CSV or Parquet file read
    with the run's ``schema.json`` (its modalities, classes and categories)."""
    from pyro_mmt.data import MultimodalDataset, TableSchema, read_table

    if not path.is_file():
        raise SystemExit(f"error: DATA: no file at {path}")
    if _is_table(path):
        schema_path = run / RUN_FILES["schema"]
        if not schema_path.is_file():
            raise SystemExit(
                f"error: DATA: {path} is a table, but the run {run} was not trained on one (no "
                f"{RUN_FILES['schema']}): give an .npz with arrays x_<modality>, as trained on")
        data, _ = read_table(path, TableSchema.from_file(schema_path), labels=labels,
                             allow_unobserved_modalities=True)
        return data
    if path.suffix != ".npz":
        raise SystemExit(f"error: DATA: expected a {DATA_FILES} file; found {path}")
    return MultimodalDataset.from_npz(path, labels=labels, num_classes=num_classes,
                                      class_names=class_names,
                                      allow_unobserved_modalities=True)


def _resume_command(args, lr: float | None = None) -> str:
    """The command line that continues this run: the same arguments with ``--resume`` (and
    ``--lr lr`` when given)."""
    argv = list(getattr(args, "argv", None) or [])
    tokens, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        if lr is not None and token.startswith("--lr="):
            continue
        if lr is not None and token == "--lr":
            skip = True
            continue
        tokens.append(token)
    if lr is not None:
        tokens += ["--lr", f"{lr:g}"]
    if "--resume" not in tokens:
        tokens.append("--resume")
    return shlex.join(["pyro-mmt", *tokens])


def _check_resumable(partial: Path, config: dict, wanted: dict) -> None:
    """Refuse to resume ``partial`` with other data, split or model options than it was
    started with."""
    if config is None:
        raise SystemExit(f"error: --resume: {partial} holds no config.json; start over with "
                         "--overwrite")
    differ = [k for k in ("data", "rho", "beta", "seed") if config.get(k) != wanted.get(k)]
    old, new = config.get("estimator", {}), wanted["estimator"]
    differ += [f"--{k.replace('_', '-')}" if k in new else k
               for k in _changed_settings(old, new, resumable_settings())]
    if differ:
        raise SystemExit(
            f"error: --resume: the unfinished run in {partial} was started with other "
            f"{', '.join(map(str, differ))}; resume with the same options (only --lr and --epochs "
            "may change), or start over with --overwrite")


def _barrier(distributed: bool) -> None:
    if distributed:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def _n_threads(args) -> int | None:
    """The estimator's ``n_threads`` from the global ``--threads`` (0: torch's own choice)."""
    threads = getattr(args, "threads", 1)
    return int(threads) if threads else None


def _estimator_options(args) -> dict:
    """The estimator's parameters given on the command line (the others keep their declared
    defaults), plus the run's seed, threads and progress bar. A per-modality option
    (``--likelihood``, ``--sigma``) stays a list of (modality or None, value) until
    :func:`_resolve_per_modality` knows the data's modalities."""
    from pyro_mmt.estimator import PRESETS

    options = {}
    if args.imbalance is not None:
        options.update(PRESETS["imbalanced" if args.imbalance else "plain"])
    for name in _declared_options():
        value = getattr(args, name, None)
        if value is not None:
            options[name] = tuple(value) if name == "hidden" else value
    options.update(seed=args.seed, distributed=args.distributed, progress=not args.quiet,
                   n_threads=_n_threads(args))
    return options


def _check_options(options: dict) -> None:
    """Every option against its declaration, before anything is read or written (the
    per-modality values one by one)."""
    from pyro_mmt.config import check_setting
    from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier

    declared = _declared_options()
    plain = {k: v for k, v in options.items() if k not in PER_MODALITY}
    for name in PER_MODALITY:
        for _, value in options.get(name, []):
            check_setting(name, value, declared[name].metadata["constraint"])
    MultimodalSemiSupervisedClassifier(**plain)._check_params()


def _resolve_per_modality(options: dict, modalities, families: dict | None) -> dict:
    """``--likelihood`` and ``--sigma`` as the estimator takes them, now that the data's
    ``modalities`` are known: a value without a modality applies to every modality, then
    ``MODALITY=VALUE`` overrides one. The likelihood starts from ``families`` (a named data
    set's own families, :data:`~pyro_mmt.data.DATASETS`) when no value without a modality
    is given."""
    options = dict(options)
    for name in PER_MODALITY:
        given = options.pop(name, None)
        base = families if name == "likelihood" else None
        if not given:
            if base:  # as the data name them (the others keep the estimator's default)
                options[name] = dict(base)
            continue
        overall = [v for m, v in given if m is None]
        named = {m: v for m, v in given if m is not None}
        unknown = sorted(set(named) - set(modalities))
        if unknown:
            raise SystemExit(f"error: --{name}: unknown modalities {unknown}; the data have "
                             f"{list(modalities)}")
        if overall:
            base = {m: overall[-1] for m in modalities}
        if not named:
            options[name] = overall[-1] if overall else base
            continue
        start = base or {}
        options[name] = {m: named.get(m, start.get(m, _declared_default(name)))
                         for m in modalities}
    return options


def _write_plots(out: Path, estimator, test, train_class_counts, label: str) -> None:
    from pyro_mmt.evaluation.plots import (
        plot_confusion_matrix,
        plot_recall_vs_frequency,
        plot_training_curves,
    )

    plot_training_curves(estimator.history_, out / "training_curves.png")
    if test is not None:
        y_true = test.y.numpy()
        pred = estimator.predict(test)
        plot_recall_vs_frequency(y_true, {label: pred}, train_class_counts, test.class_names,
                                 out / "recall_vs_frequency.png")
        plot_confusion_matrix(y_true, pred, test.num_classes, test.class_names,
                              out / "confusion_matrix.png")


# -------------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from pyro_mmt.data import long_tailed_split
    from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier
    from pyro_mmt.training.svi import TrainingDivergedError, TrainingInterrupted

    options = _estimator_options(args)
    _check_options(options)  # every option is checked before anything is read or written
    data, named, schema = _load_data(args.data, args)
    # the families of a named data set, or of a table's columns (text columns are
    # categorical modalities), unless --likelihood says otherwise
    families = (dict(schema.likelihood) if schema is not None and schema.likelihood
                else _dataset_families(args.data))
    options = _resolve_per_modality(options, data.modalities, families)
    rank = 0
    if args.distributed:
        from pyro_mmt.training.distributed import init_from_env

        device = options.get("device") or _declared_default("device")
        rank, _ = init_from_env("nccl" if device.startswith("cuda") else "gloo")
    # under torchrun --distributed every process trains; only rank 0 writes the run folder
    writer = rank == 0
    out = Path(args.out)
    partial = partial_dir(out)
    test = None
    if named:
        split = long_tailed_split(data, args.rho, args.beta, args.seed)
        train, test = split.train, split.test
        train_counts = split.train_class_counts
    else:
        train = data
        train_counts = train.class_counts()
    # --rho and --beta make the split of a named data set; a file is trained on as it is
    split_options = {"rho": args.rho, "beta": args.beta} if named else {}
    config = {"data": args.data, **split_options, "seed": args.seed,
              "train_class_counts": [int(c) for c in train_counts],
              "estimator": {k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in options.items()}}
    config = json.loads(json.dumps(config, default=str))  # as config.json will hold it
    _check_run_folders(args, out, partial, config)
    _barrier(args.distributed)  # every rank has checked the folders before rank 0 writes
    if writer:
        if partial.exists() and not args.resume:
            shutil.rmtree(partial)  # --overwrite: an unfinished run is started over
        partial.mkdir(parents=True, exist_ok=True)
        if args.resume:
            before = _read_config(partial)
            resumes = before.get("resumes", []) + [
                {"epochs_done": before.get("epochs_done"), "lr": args.lr, "epochs": args.epochs}]
            config = dict(before, estimator=config["estimator"], resumes=resumes)
        else:
            if test is not None:
                test.to_npz(partial / RUN_FILES["test"])
            train.to_npz(partial / RUN_FILES["train"])
            if schema is not None:
                _write_json(partial / RUN_FILES["schema"], schema.to_dict())
        _write_json(partial / RUN_FILES["config"], dict(config, status="running"))
    _barrier(args.distributed)
    est = MultimodalSemiSupervisedClassifier(
        **options, checkpoint_dir=partial / "checkpoints", resume=args.resume)
    tic = time.perf_counter()
    try:
        est.fit(train)
    except TrainingInterrupted as error:
        if writer:
            _set_status(partial, "interrupted", epochs_done=error.epochs_done)
            where = (f"the {error.epochs_done} complete epoch(s) are saved in {error.checkpoint}"
                     if error.checkpoint is not None else "no epoch was complete")
            print(f"\ninterrupted: {where}; the unfinished run is in {partial}.\n"
                  f"Continue it with:\n  {_resume_command(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TrainingDivergedError as error:
        if writer:
            _set_status(partial, "diverged", epochs_done=error.epoch - 1, error=str(error))
            print(f"error: {error}\nThe unfinished run is in {partial}. Continue it from the "
                  f"last good checkpoint with a smaller learning rate, e.g.:\n  "
                  f"{_resume_command(args, lr=est.lr / 10)}", file=sys.stderr)
        return 1
    except BaseException as error:
        if writer:
            if not args.resume and not any(partial.glob("checkpoints/**/checkpoint.pt")):
                shutil.rmtree(partial, ignore_errors=True)  # nothing worth keeping
            elif partial.is_dir():
                _set_status(partial, "failed", error=f"{type(error).__name__}: {error}")
        raise
    seconds = time.perf_counter() - tic
    _barrier(args.distributed)  # every rank's last checkpoint is written
    if not writer:
        return 0
    _finish_run(est, partial, test, train_counts, args, seconds)
    _publish(partial, out, args.overwrite)
    print(f"trained in {seconds:.1f} s; run folder: {out}")
    return 0


def _check_run_folders(args, out: Path, partial: Path, config: dict) -> None:
    """Refuse to train into a folder holding another run (without --overwrite), to start over
    an unfinished run (without --overwrite) or to resume what is not there."""
    held = _read_config(out) if out.is_dir() else None
    if args.resume:
        if not partial.is_dir():
            finished = held is not None and held.get("status") == FINISHED
            raise SystemExit(
                f"error: --resume: there is no unfinished run of {out} to resume (expected the "
                f"folder {partial})" + ("; the run in it is finished" if finished else ""))
        _check_resumable(partial, _read_config(partial), config)
        if _holds_files(out) and not args.overwrite:
            raise SystemExit(f"error: --out: {out} already holds files; pass --overwrite with "
                             "--resume to replace them once the resumed run is complete")
        return
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out: {out} is a file, expected a folder for the run")
    if _holds_files(out) and not args.overwrite:
        what = (f"a {held.get('status', 'recorded')} run of {held.get('data')}"
                if held is not None else "files")
        raise SystemExit(
            f"error: --out: {out} already holds {what}; pass --overwrite to replace it (the old "
            "run is replaced only once the new one is complete) or choose another --out")
    if partial.is_dir() and not args.overwrite:
        status = (_read_config(partial) or {}).get("status", "unknown")
        raise SystemExit(
            f"error: --out: an unfinished run of {out} (status {status}) is in {partial}; "
            "continue it with --resume (the same options; --lr and --epochs may change) or "
            "start over with --overwrite")


def _finish_run(est, partial: Path, test, train_counts, args, seconds: float) -> None:
    """Write the estimator, history, metrics and plots to the unfinished run, drop its
    checkpoints and mark it finished."""
    from pyro_mmt.estimator import save_estimator
    from pyro_mmt.evaluation.metrics import classification_metrics

    est.set_params(checkpoint_dir=None, resume=False)  # the run folder moves: no stale path
    save_estimator(est, partial / RUN_FILES["estimator"])
    est.history_.to_csv(partial / RUN_FILES["history"], index=False)
    if test is not None:
        metrics = classification_metrics(test.y.numpy(), est.predict(test), train_counts)
        metrics.to_frame("value").to_csv(partial / RUN_FILES["metrics"])
        print(metrics.round(4).to_string())
    _write_plots(partial, est, test, train_counts, est.objective)
    shutil.rmtree(partial / "checkpoints", ignore_errors=True)
    # the decision rule the predictions use, learned after training (docs/imbalance.md)
    shares = [round(float(v), 6) for v in est.reference_shares_]
    print(f"decision shift δ = {est.decision_shift_:g} along the "
          f"{est.decision_reference} reference shares {shares}")
    _set_status(partial, FINISHED, epochs_done=int(len(est.history_)),
                seconds=round(seconds, 3), decision_shift=float(est.decision_shift_),
                reference_shares=shares)


def _load_run(args):
    """The run folder ``args.run_dir``, its config and its estimator (which predicts with this
    command's ``--threads``, not the training run's). An unfinished run is refused."""
    from pyro_mmt.estimator import load_estimator

    run = Path(args.run_dir)
    config = _read_config(run) if run.is_dir() else None
    if config is None:
        partial = partial_dir(run)
        if partial.is_dir():
            status = (_read_config(partial) or {}).get("status", "unknown")
            raise SystemExit(
                f"error: RUN_DIR: the run {run} is not finished (status {status}); its "
                f"unfinished run is in {partial}: continue it with `pyro-mmt train ... --out "
                f"{run} --resume`")
        raise SystemExit(f"error: RUN_DIR: {run} is not a run folder (no "
                         f"{RUN_FILES['config']}; make one with `pyro-mmt train`)")
    status = config.get("status")
    if status != FINISHED:
        found = f"status {status!r}" if status else "no status (written by an older pyro-mmt)"
        raise SystemExit(
            f"error: RUN_DIR: {run} does not hold a finished run (config.json: {found}, expected "
            f"\"status\": \"{FINISHED}\"); its files may not belong together. Train it again "
            "(`pyro-mmt train ... --overwrite`) or, for an interrupted run, `--resume`")
    if not (run / RUN_FILES["estimator"]).is_file():
        raise SystemExit(f"error: RUN_DIR: {run} holds no {RUN_FILES['estimator']} "
                         "(make one with `pyro-mmt train`)")
    est = load_estimator(run / RUN_FILES["estimator"])
    est.set_params(n_threads=_n_threads(args))
    return run, config, est


def cmd_evaluate(args) -> int:
    from pyro_mmt.evaluation.metrics import classification_metrics

    run, config, est = _load_run(args)
    if args.test:
        path = Path(args.test)
    else:
        path = run / RUN_FILES["test"]
        if not path.is_file() and config.get("data") is not None and \
                (str(config["data"]).endswith(".npz") or _is_table(config["data"])):
            raise SystemExit(
                f"error: TEST: the run {run} was trained on the file {config['data']}, which "
                "has no held-out split; pass a labelled file to score it on: `pyro-mmt "
                f"evaluate {run} TEST` (TEST: {DATA_FILES}, with the columns or arrays it was "
                "trained on)")
    if not path.is_file():
        raise SystemExit(f"error: TEST: no file at {path}")
    test = _run_data(run, path, labels="required", num_classes=est.n_classes_)
    labelled = test.labelled()
    if len(labelled) == 0:
        raise SystemExit(f"error: TEST: {path} has no labelled rows to evaluate on")
    metrics = classification_metrics(labelled.y.numpy(), est.predict(labelled),
                                     np.asarray(config["train_class_counts"]))
    print(metrics.round(4).to_string())
    if args.out:
        write_atomic(args.out, metrics.to_frame("value").to_csv)
    return 0


def cmd_predict(args) -> int:
    run, _, est = _load_run(args)
    names = _run_class_names(run) or [str(c) for c in range(est.n_classes_)]
    # features only (labels, if any, are ignored for prediction), any subset of the modalities
    data = _run_data(run, Path(args.data), labels="optional", num_classes=est.n_classes_,
                     class_names=_run_class_names(run))
    proba = est.predict_proba(data)
    frame = pd.DataFrame(proba, columns=[f"p_{name}" for name in names])
    frame.insert(0, "predicted", np.asarray(names, dtype=object)[proba.argmax(1)])
    out = Path(args.out) if args.out else run / RUN_FILES["predictions"]
    write_atomic(out, lambda tmp: frame.to_csv(tmp, index_label="row"))
    print(f"wrote {len(frame)} rows of class probabilities to {out}")
    return 0


def _run_class_names(run: Path) -> list[str] | None:
    """The class names of the run's training data (read from ``train.npz`` alone), if any."""
    path = run / RUN_FILES["train"]
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            if "class_names" not in arrays.files:
                return None
            return [str(c) for c in arrays["class_names"].tolist()]
    except (OSError, ValueError):
        return None


def cmd_benchmark(args) -> int:
    from pyro_mmt.experiments.benchmark import results_table, run_benchmark

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    if args.jobs < 1 and args.jobs != -1:
        raise SystemExit(f"error: --jobs: expected a positive number of processes or -1 (one "
                         f"per core), found {args.jobs}")
    results = run_benchmark(args.datasets, args.methods, rhos=args.rho, betas=args.beta,
                            seeds=args.seeds, epochs=args.epochs, jobs=args.jobs,
                            unlabelled=args.unlabelled)
    write_atomic(out / "results.csv", lambda tmp: results.to_csv(tmp, index=False))
    table = results_table(results)
    write_atomic(out / "table.csv", lambda tmp: table.to_csv(tmp, index=False))
    markdown = table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False)
    write_text_atomic(out / "table.md", markdown + "\n")
    print(markdown)
    print(f"{len(results)} runs in {time.perf_counter() - tic:.0f} s; wrote {out}/results.csv, "
          "table.csv, table.md")
    return 0


def _parse_grid(texts: list[str]) -> dict[str, list]:
    """``--grid NAME=V1,V2,...`` (repeatable) -> {parameter: [values]}, each value read as the
    matching command-line option reads it (``none`` -> None; ``hidden`` values are sizes joined
    by ``x``, e.g. ``256x128``; a yes/no option true or false)."""
    declared = _declared_options()
    grid: dict[str, list] = {}
    for text in texts:
        name, sep, values = text.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not values.strip():
            raise SystemExit(f"error: --grid: expected NAME=V1,V2,..., found {text!r}")
        if name not in declared or name in PER_MODALITY:
            choices = sorted(set(declared) - set(PER_MODALITY))
            raise SystemExit(f"error: --grid: expected one of the estimator's options "
                             f"{choices}; found {name!r}")
        if name in grid:
            raise SystemExit(f"error: --grid: {name!r} given twice")
        converted = []
        for value in (v.strip() for v in values.split(",")):
            try:
                converted.append(_read_value(name, declared[name], value))
            except (KeyError, ValueError) as error:
                raise SystemExit(f"error: --grid: {name}: cannot read {value!r} ({error})") \
                    from error
        grid[name] = converted
    if not grid:
        raise SystemExit("error: --grid: give at least one NAME=V1,V2,...")
    return grid


def _table_flags(args) -> str:
    """The schema options of ``args`` as ``pyro-mmt train`` flags (with a trailing space)."""
    flags = []
    if args.schema:
        flags += ["--schema", args.schema]
    for text in args.modality or []:
        flags += ["--modality", text]
    if args.label:
        flags += ["--label", args.label]
    if args.ignore:
        flags += ["--ignore", *args.ignore]
    return shlex.join(flags) + " " if flags else ""


def _option_flags(params: dict) -> list[str]:
    """``pyro-mmt train`` flags that set the estimator parameters ``params``."""
    declared = _declared_options()
    out = []
    for name, value in params.items():
        if name not in declared:
            raise SystemExit(f"error: {name!r} has no command-line option")
        flag = _flag(name)
        if isinstance(default(declared[name]), bool):
            out.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, Mapping):
            out += [f"{flag} {shlex.quote(f'{m}={v}')}" for m, v in value.items()]
        elif isinstance(value, tuple | list):
            out.append(f"{flag} {' '.join(map(str, value))}")
        else:
            out.append(f"{flag} {'none' if value is None else shlex.quote(str(value))}")
    return out


def cmd_tune(args) -> int:
    from sklearn.model_selection import ParameterGrid

    from pyro_mmt.data import long_tailed_split
    from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier
    from pyro_mmt.model_selection import FEW_LABELS, select_best, validation_scores

    grid = _parse_grid(args.grid)
    options = _estimator_options(args)
    _check_options(options)
    fixed = sorted(set(grid) & set(options) - {"seed", "progress", "n_threads", "distributed"})
    if fixed:
        raise SystemExit(f"error: --grid: {fixed} also given as an option; give each once")
    options["progress"] = False  # one bar over the fits instead
    estimator = MultimodalSemiSupervisedClassifier(
        **{k: v for k, v in options.items() if k not in PER_MODALITY})
    candidates = {",".join(f"{k}={v}" for k, v in params.items()): params
                  for params in ParameterGrid(grid)}
    for params in candidates.values():
        estimator.set_params(**params)._check_params()
    estimator.set_params(**{k: options.get(k, _declared_default(k)) for k in grid})
    out = Path(args.out)
    partial = partial_dir(out)
    if _holds_files(out) and not args.overwrite:
        raise SystemExit(f"error: --out: {out} already holds files; give --overwrite to "
                         "replace them once the new results are complete, or another --out")
    data, named, schema = _load_data(args.data, args)
    train_counts = None
    if named:  # only the training split is read; its test split plays no part
        split = long_tailed_split(data, args.rho, args.beta, args.seed)
        data, train_counts = split.train, split.train_class_counts
    # a named data set's families, or a table's (text columns are categorical modalities)
    families = (dict(schema.likelihood) if schema is not None and schema.likelihood
                else _dataset_families(args.data))
    options = _resolve_per_modality(options, data.modalities, families)
    estimator.set_params(**{k: options[k] for k in PER_MODALITY if k in options})
    if args.jobs < 1 and args.jobs != -1:
        raise SystemExit(f"error: --jobs: expected a positive number of processes or -1 (one "
                         f"per core), found {args.jobs}")
    counts = data.class_counts()
    few = np.flatnonzero(counts < FEW_LABELS)
    if few.size:
        shown = ", ".join(f"{data.class_names[k]}: {counts[k]}" for k in few[:5])
        way_out = ("raise --beta (the labelled fraction per class) or lower --rho" if named
                   else "label more rows of these classes in the file")
        print(f"note: classes with fewer than {FEW_LABELS} labelled rows ({shown}) have noisy "
              f"validation scores (one labelled row: never validated); {way_out}",
              file=sys.stderr)
    tic = time.perf_counter()
    try:
        with warnings.catch_warnings():  # said above, in the command line's terms
            warnings.filterwarnings("ignore", message="classes with fewer than")
            scores = validation_scores(
                estimator, candidates, data, n_splits=args.folds, n_repeats=args.repeats,
                seed=args.seed, n_jobs=args.jobs, train_class_counts=train_counts,
                progress=not args.quiet)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from error
    best, summary = select_best(scores, by=args.by)
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    scores.assign(params=scores["params"].map(json.dumps)).to_csv(
        partial / "scores.csv", index=False)
    summary.assign(params=summary["params"].map(json.dumps)).to_csv(partial / "summary.csv")
    fixed = {k: v for k, v in options.items()
             if k not in ("seed", "progress", "n_threads", "distributed", "likelihood")}
    flags = _option_flags({**fixed, **best})
    # --rho and --beta only for a named data set's split; a file's schema options as given
    data_flags = (f"--rho {args.rho} --beta {args.beta} " if named
                  else _table_flags(args) if schema is not None else "")
    train = (f"pyro-mmt train {shlex.quote(args.data)} {data_flags}"
             f"--seed {args.seed} " + " ".join(flags)).rstrip()
    split_options = {"rho": args.rho, "beta": args.beta} if named else {}
    _write_json(partial / "best.json", {
        "data": args.data, **split_options, "seed": args.seed,
        "folds": args.folds, "repeats": args.repeats, "by": args.by,
        "fixed": fixed,
        "best": best, "train_command": train, "status": FINISHED})
    _publish(partial, out, args.overwrite)
    shown = summary[["rank", "n_folds", "balanced_accuracy", "minority_recall"]]
    print(shown.to_string())
    print(f"{len(scores)} fits in {time.perf_counter() - tic:.0f} s; wrote {out}/scores.csv, "
          f"summary.csv, best.json\nbest: {best}\nfit it on the whole training split with:\n"
          f"  {train}")
    return 0


def cmd_report(args) -> int:
    from pyro_mmt.evaluation.paired import win_table
    from pyro_mmt.experiments.benchmark import headline_table, setting_count_spread, setting_counts
    from pyro_mmt.training.svi import shows_progress

    if args.resample < 0:
        raise SystemExit(f"error: --resample: expected a number of resamples >= 0, found "
                         f"{args.resample}")
    frames = []
    for path in args.results:
        if not Path(path).is_file():
            raise SystemExit(f"error: RESULTS: no file at {path}")
        try:
            frames.append(pd.read_csv(path))
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise SystemExit(f"error: RESULTS: {path} is not a results CSV ({error})") from error
    results = pd.concat(frames, ignore_index=True)
    if "method" not in results.columns:
        raise SystemExit(f"error: RESULTS: expected a 'method' column (results.csv of "
                         f"`pyro-mmt benchmark`), found columns {list(results.columns)}")
    found = sorted(str(m) for m in results["method"].dropna().unique())
    others = args.others
    if others is None:
        others = [m for m in ("gauss_kl",) if m in found]
    for option, names in (("--ours", [args.ours]), ("--others", others),
                          ("--rivals", args.rivals)):
        unknown = [n for n in names if n not in found]
        if unknown:
            raise SystemExit(f"error: {option}: no results for {unknown} in "
                             f"{', '.join(args.results)}; expected methods among {found}")
    table = headline_table(results, ours=args.ours, others=others, rivals=args.rivals)
    if table.empty:
        raise SystemExit(f"error: --ours: no setting (data set, rho, beta) has results for "
                         f"{args.ours!r}")
    compared = [m for m in found if m != args.ours]
    wins = win_table(results, args.ours, compared) if compared else None
    markdown = _markdown(table)
    print(markdown)
    if args.resample:
        counts = setting_count_spread(results, n_resamples=args.resample,
                                      progress=shows_progress(True),
                                      ours=args.ours, others=others, rivals=args.rivals)
        print(f"\nsettings where ours is at least the compared methods' mean (median, low, "
              f"high: the median and central 90% over {args.resample} resamples of the split "
              "seeds within each setting):\n")
    else:
        counts = setting_counts(table)
        print("\nsettings where ours is at least the compared methods' mean:\n")
    print(_markdown(counts))
    if wins is not None:
        wins = wins.sort_values("balanced_accuracy wins", ascending=True, kind="mergesort")
        print(f"\n{args.ours} against each method, paired split by split over every shared "
              "split (wins / ties / losses; p: two-sided Wilcoxon signed-rank test):\n")
        print(_markdown(wins.round(4)))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "headline.csv", lambda tmp: table.to_csv(tmp, index=False))
        write_text_atomic(out / "headline.md", markdown + "\n")
        write_atomic(out / "settings.csv", lambda tmp: counts.to_csv(tmp, index=False))
        write_text_atomic(out / "settings.md", _markdown(counts) + "\n")
        if wins is not None:
            write_atomic(out / "wins.csv", lambda tmp: wins.to_csv(tmp, index=False))
            write_text_atomic(out / "wins.md", _markdown(wins.round(4)) + "\n")
        print(f"\nwrote {out}/headline.csv, headline.md, settings.csv, settings.md" +
              (", wins.csv, wins.md" if wins is not None else ""))
    return 0


def _markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(index=False) if _has_tabulate() else table.to_string(index=False)


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


#: Modalities that are images, drawn as such by the diagnostics' reconstruction plot.
IMAGE_SHAPES = {
    "digits": {"top": (4, 8), "bottom": (4, 8)},
    "mfeat": {"pix": (16, 15)},
    "fmnist": {"top": (14, 28), "bottom": (14, 28)},
}


def cmd_diagnose(args) -> int:
    from pyro_mmt.data import MultimodalDataset
    from pyro_mmt.evaluation.diagnose import diagnose
    from pyro_mmt.evaluation.diagnostics import KHAT_MIN_DRAWS

    run, config, est = _load_run(args)
    part = args.split or ("test" if (run / RUN_FILES["test"]).is_file() else "train")
    path = run / RUN_FILES[part]
    if not path.is_file():
        raise SystemExit(f"error: --split: {path} does not exist")
    data = MultimodalDataset.from_npz(path, num_classes=est.n_classes_)
    out = Path(args.out) if args.out else run / "diagnostics"
    # the estimator standardises the data as predict does, and its model_ holds the guide;
    # held-out rows: hide the labels, so the weights estimate log p(x) (labels kept for the
    # calibration check)
    paths, summary = diagnose(
        est, data, out_dir=out, num_samples=args.num_samples, seed=args.seed,
        num_predictive=args.num_predictive, condition_on_labels=(part == "train"),
        image_shapes=IMAGE_SHAPES.get(config.get("data")),
        attrs={"run_dir": str(run), "split": part},
    )
    print(summary.to_string())
    if args.num_samples < KHAT_MIN_DRAWS:
        print(f"note: Pareto k̂ needs at least {KHAT_MIN_DRAWS} draws per datum; with "
              f"--num-samples {args.num_samples} it is not estimated (NaN)")
    print(f"wrote {len(paths)} files to {out}: " + ", ".join(sorted(p.name for p in paths.values())))
    return 0


def cmd_demo(args) -> int:
    from pyro_mmt.experiments.demo import run_demo

    run_demo(out=Path(args.out), epochs=args.epochs, seed=args.seed, dataset=args.dataset,
             rho=args.rho, beta=args.beta, methods=args.methods)
    return 0


# ---------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose ``help_hooks`` run before its help is formatted: help text
    that is read from a module too slow to import for every command (the demo's methods)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.help_hooks = []

    def format_help(self) -> str:
        for hook in self.help_hooks:
            hook(self)
        return super().format_help()


def _demo_help(parser: argparse.ArgumentParser) -> None:
    """The demo's --help: the methods and epochs it runs, from pyro_mmt.experiments.demo."""
    from pyro_mmt.experiments.demo import DEMO_METHODS

    for action in parser._actions:
        if action.dest == "methods":
            action.help = ("methods of pyro_mmt.experiments.benchmark.METHODS (default: "
                           f"{' '.join(DEMO_METHODS)})")
        elif action.dest == "epochs":
            action.help = ("override the deep models' epochs (default: the estimator's, "
                           f"{_declared_default('epochs')!r})")


#: The options that take one value per modality: ``--likelihood FAMILY`` for every modality,
#: ``--likelihood MODALITY=FAMILY`` for one (repeatable).
PER_MODALITY = ("likelihood", "sigma")


def _declared_options() -> dict:
    """The estimator's settings that ``pyro-mmt train`` offers as ``--<name>`` options, each
    with its declaration (:func:`pyro_mmt.config.estimator_settings`)."""
    from pyro_mmt.config import estimator_settings

    return {name: f for name, f in estimator_settings().items()
            if f.metadata["cli"] == "option"}


def _declared_default(name: str):
    from pyro_mmt.config import estimator_settings

    return default(estimator_settings()[name])


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _read_value(name: str, declared, text: str):
    """An option's value from its text, as its declaration reads it (its ``parse``, else the
    type of its default)."""
    parse = declared.metadata["parse"]
    if parse is not None:
        return parse(text)
    kind = type(default(declared))
    if kind is bool:
        return {"true": True, "false": False}[text.lower()]
    return kind(text)


def _per_modality_value(name: str, declared):
    """argparse's type of a per-modality option: ``VALUE`` or ``MODALITY=VALUE``."""
    def read(text: str):
        modality, sep, value = text.rpartition("=")
        return (modality if sep else None), _read_value(name, declared, value)
    read.__name__ = name
    return read


def _dataset_families(source: str) -> dict | None:
    """A named data set's own likelihood families (:data:`~pyro_mmt.data.DATASETS`)."""
    from pyro_mmt.data import DATASETS

    info = DATASETS.get(source)
    return dict(info.likelihood) if info is not None and info.likelihood else None


def _add_model_options(p: argparse.ArgumentParser, *, with_help_defaults: bool = True) -> None:
    """The estimator's options, generated from their declarations: each ``--<name>`` with its
    help text and default (None here means the declared default)."""
    g = p.add_argument_group("model and training (default: the estimator's defaults)")
    for name, declared in _declared_options().items():
        value = default(declared)
        text = declared.metadata["help"]
        if with_help_defaults:
            text += f" (default {value!r})"
        flags = [_flag(name), *declared.metadata["aliases"]]
        if isinstance(value, bool):
            g.add_argument(*flags, dest=name, action=argparse.BooleanOptionalAction,
                           default=None, help=text)
        elif name in PER_MODALITY:
            g.add_argument(*flags, dest=name, action="append", default=None,
                           type=_per_modality_value(name, declared),
                           metavar=f"[MODALITY=]{name.upper()}", help=text)
        elif name == "hidden":
            g.add_argument(*flags, dest=name, type=int, nargs="+", default=None, help=text)
        else:
            g.add_argument(*flags, dest=name, default=None, help=text,
                           type=functools.partial(_read_value, name, declared))
    g.add_argument("--imbalance", action=argparse.BooleanOptionalAction, default=None,
                   help="--imbalance: class-balanced weights, logit adjustment τ = 1, prior "
                        "shift τ' = 1 and no decision shift (PRESETS['imbalanced'], the "
                        "previous release's choice); --no-imbalance: none of them, δ = 0 "
                        "(PRESETS['plain']); default: the estimator's")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel over torchrun's processes (gloo on CPU, nccl on GPUs); "
                        "--batch-size is the global batch. Launch with: torchrun "
                        "--nproc_per_node=P -m pyro_mmt.cli train ... --distributed")
    g.add_argument("--quiet", action="store_true", help="no progress bar (progress=False)")
    g.add_argument("--threads", type=int, default=argparse.SUPPRESS,
                   help="torch threads (n_threads; as pyro-mmt --threads, which it overrides)")


def _add_table_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "CSV and Parquet files (docs/data.md)",
        "Without --schema or --modality the modalities come from column prefixes "
        "(NAME__col is the feature col of modality NAME). Labels: any values; empty, NaN, None "
        "or -1 = unlabelled. A modality is missing for a row whose cells are all empty; a text "
        "column is a categorical feature.")
    g.add_argument("--schema", metavar="FILE",
                   help="a .json or .toml schema: modalities (NAME: [columns]), label, ignore, "
                        "likelihood (NAME: family)")
    g.add_argument("--modality", action="append", metavar="NAME=COL,COL",
                   help="the columns of one modality (repeat for each)")
    g.add_argument("--label", metavar="COL", help="the label column (default: label)")
    g.add_argument("--ignore", nargs="+", metavar="COL",
                   help="columns to leave out (identifiers, free text)")


def _available_cores() -> int:
    """The cores this process may run on (as pyro_mmt.training.parallel.available_cores,
    without importing torch for ``--help``)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``pyro-mmt``."""
    parser = argparse.ArgumentParser(
        prog="pyro-mmt",
        description="Semi-supervised classification of class-imbalanced multimodal data with a "
                    "Student-t deep generative model and the γ-power divergence (Pyro).",
    )
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: the default networks are small, and on a "
             "2-core machine one thread is faster than two, far faster when the other core is "
             "busy; 0 keeps torch's own choice)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train on a data set name, an .npz, a CSV or a Parquet file; "
                       "writes a run folder",
                       description="Train the model. With a data set name the benchmark's "
                       "long-tailed split (docs/benchmark.md; --rho, --beta, --seed) is made and "
                       "the test part is scored; with a file every row is used: an .npz "
                       "(arrays x_<modality> and y, -1 = unlabelled) or a CSV or Parquet table "
                       "(see the table options; docs/data.md).",
                       epilog=RUN_FOLDER_HELP)
    p.add_argument("data", help="digits | breast | mfeat | pdspeech | pbc | fmnist | PATH.npz | "
                                "PATH.csv | PATH.parquet")
    p.add_argument("--rho", type=float, default=10.0,
                   help="imbalance ratio of the split (a data set name only)")
    p.add_argument("--beta", type=float, default=0.05,
                   help="labelled fraction per class (a data set name only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/latest", help="run folder (default runs/latest)")
    _add_table_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (once the new run is complete), and "
                        "start over an unfinished one")
    p.add_argument("--resume", action="store_true",
                   help="continue the unfinished (interrupted or diverged) run of --out from its "
                        "last complete epoch, with the same options; --lr and --epochs may "
                        "change (e.g. --resume --lr 3e-4 after a divergence)")
    _add_model_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a run on a labelled file (default: its test split)")
    p.add_argument("run_dir", help="a run folder written by `pyro-mmt train`")
    p.add_argument("test", nargs="?", help="a labelled .npz, or a CSV or Parquet file with the "
                   "columns the run was trained on (read with its schema.json); default "
                   "RUN_DIR/test.npz, the held-out split of a data set name")
    p.add_argument("--out", help="write the metrics to this CSV")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class probabilities for a file, written as CSV",
                       description="Write the class probabilities q(y | x) of every row of DATA "
                       "as a CSV: columns row, predicted (the most probable class, by name) "
                       "and p_<class name> for each class.")
    p.add_argument("run_dir", help="a run folder written by `pyro-mmt train`")
    p.add_argument("data", help="an .npz with arrays x_<modality> (NaN rows = missing), any "
                                "subset of the run's modalities, or a CSV or Parquet file with "
                                "the columns the run was trained on (read with its "
                                "schema.json; empty cells of a modality, or all its columns "
                                "left out = missing); labels are not needed")
    p.add_argument("--out", help="the CSV to write (default RUN_DIR/predictions.csv)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("benchmark", help="the benchmark's grid (docs/benchmark.md): results "
                       "table with mean ± std")
    p.add_argument("--datasets", nargs="+", default=["digits", "breast", "mfeat", "pdspeech"])
    p.add_argument("--methods", nargs="+",
                   default=["t_gamma", "gauss_kl", "lr", "labelspread", "selftrain", "smote_lr"])
    p.add_argument("--rho", type=float, nargs="+", help="override the grid's ρ values")
    p.add_argument("--beta", type=float, nargs="+", help="override the grid's β values")
    p.add_argument("--seeds", type=int, nargs="+", help="override the grid's seeds")
    p.add_argument("--epochs", type=int, help="override the deep models' epochs (smoke runs)")
    p.add_argument("--unlabelled", default="same", choices=["same", "uniform", "reversed"],
                   help="class mix of the unlabelled rows: the labelled rows' long tail "
                        "(same), class-balanced (uniform) or the tail reversed (reversed)")
    p.add_argument("--jobs", type=int, default=_available_cores(),
                   help="fits run at once, each in its own process with one torch thread "
                        "(default: the cores available, here %(default)s; 1 runs them in this "
                        "process with --threads; -1 one per core). The results do not depend "
                        "on it, only the seconds column does")
    p.add_argument("--out", default="runs/benchmark")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser(
        "tune", help="choose settings on validation folds of the training data",
        description="Fit every combination of the --grid values on stratified validation folds "
        "of the training data (with a data set name: the training part of the long-tailed "
        "split; its test part is never read), rank them by mean validation score and write "
        "scores.csv (one row per candidate and fold), summary.csv (best first) and best.json "
        "(the winner and the `pyro-mmt train` command that fits it) to --out. Options not in "
        "--grid keep their value (or the estimator's default) for every candidate.")
    p.add_argument("data", help="digits | breast | mfeat | pdspeech | pbc | fmnist | PATH.npz | "
                                "PATH.csv | PATH.parquet")
    p.add_argument("--grid", action="append", required=True, metavar="NAME=V1,V2",
                   help="an estimator parameter and its candidate values (repeat for a grid), "
                        "e.g. --grid alpha=100,1000 --grid averaging=0,0.5")
    p.add_argument("--rho", type=float, default=10.0,
                   help="imbalance ratio of the split (a data set name only)")
    p.add_argument("--beta", type=float, default=0.05,
                   help="labelled fraction per class (a data set name only)")
    p.add_argument("--seed", type=int, default=0, help="split, folds and fits")
    _add_table_options(p)
    p.add_argument("--folds", type=int, default=3, help="validation folds per repeat")
    p.add_argument("--repeats", type=int, default=1, help="repeats of the K-fold split")
    p.add_argument("--by", default="balanced_accuracy",
                   choices=["balanced_accuracy", "minority_recall"], help="score to maximise")
    p.add_argument("--jobs", type=int, default=1, help="fits at once (processes; -1: a core "
                   "each)")
    p.add_argument("--out", default="runs/tune")
    p.add_argument("--overwrite", action="store_true", help="replace the results in --out")
    _add_model_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="headline table from benchmark results.csv files: ours "
                       "against the best classical baseline (balanced accuracy / minority recall)")
    p.add_argument("results", nargs="+", help="results.csv files written by `benchmark`")
    p.add_argument("--ours", default="t_gamma", help="our method (default t_gamma); it must "
                   "have results in RESULTS")
    p.add_argument("--others", nargs="*", default=None,
                   help="other deep methods with results in RESULTS to show beside ours "
                        "(default: gauss_kl when present)")
    p.add_argument("--rivals", nargs="*", default=[],
                   help="methods with results in RESULTS shown beside ours and compared with it "
                        "setting by setting: 'ours ≥ rivals' is ours at least each of them")
    p.add_argument("--resample", type=int, default=0, metavar="N",
                   help="also give each per-setting count's median and central 90%% over N "
                   "resamples of the split seeds within each setting (about 0.15 s each; "
                   "default 0: none)")
    p.add_argument("--out", help="also write headline.csv/.md, settings.csv/.md (the "
                   "per-setting counts) and wins.csv/.md to this folder")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("diagnose", help="ArviZ diagnostics of a run: netCDF, summary, plots")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=["test", "train"],
                   help="which part of the run to diagnose (default: test when the run has one)")
    p.add_argument("--num-samples", type=int, default=100,
                   help="draws per datum (default 100; Pareto k̂ needs at least 30)")
    p.add_argument("--num-predictive", type=int, help="posterior predictive draws kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (default RUN_DIR/diagnostics)")
    p.set_defaults(func=cmd_diagnose)

    p = sub.add_parser("demo", help="the README's demo: mfeat, ρ = 10, β = 0.05",
                       description="Train the demo's methods (see --methods) on one long-tailed "
                       "split, print the metrics table and write the plots (recall against "
                       "class frequency, confusion matrix of the first method).")
    p.help_hooks.append(_demo_help)
    p.add_argument("--epochs", type=int, default=None, help="override the demo's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dataset", default="mfeat", help="data set name (default mfeat)")
    p.add_argument("--rho", type=float, default=10.0, help="imbalance ratio (default 10)")
    p.add_argument("--beta", type=float, default=0.05, help="labelled fraction (default 0.05)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="methods of pyro_mmt.experiments.benchmark.METHODS (default: the "
                        "demo's, pyro_mmt.experiments.demo.DEMO_METHODS)")
    p.add_argument("--out", default="runs/demo")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pyro-mmt`` console script. An invalid value (a ``ValueError``
    naming the argument) ends the command with ``error: <message>`` and exit status 1 (set the
    environment variable ``PYRO_MMT_TRACEBACK=1`` to see the traceback instead)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.threads < 0:
        raise SystemExit(f"error: --threads: expected >= 0, found {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        return int(args.func(args) or 0)
    except ValueError as error:
        if os.environ.get("PYRO_MMT_TRACEBACK"):
            raise
        raise SystemExit(f"error: {error}") from error


if __name__ == "__main__":
    sys.exit(main())
