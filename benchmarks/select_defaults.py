"""Choose the estimator's defaults on validation folds of the public TRAINING splits.

Every candidate setting is fitted on the training part of each validation fold (its remaining
labelled rows and every unlabelled row) and scored on the fold's held-out labelled rows
(:func:`pyro_mmt.model_selection.validation_scores`), for several data sets, settings (ρ, β) and
split seeds. No test row is ever read. The summary ranks the candidates by their mean
validation balanced accuracy over all (setting, seed, fold) and counts paired wins against a
reference candidate; ``docs/benchmark.md`` reports what was chosen and why.

    python -m benchmarks.select_defaults --round alpha --out benchmarks/results/select_alpha.csv
    python -m benchmarks.select_defaults --candidates base alpha_n1 --settings digits:10:0.05 \\
        --seeds 0 --folds 3 --epochs 2 --out /tmp/smoke.csv                      # smoke run

``--jobs`` fits in parallel processes (one torch thread each).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pyro_mmt.data import DATASETS, load_dataset, long_tailed_split, validation_folds
from pyro_mmt.estimator import IMBALANCE_OPTIONS, MultimodalSemiSupervisedClassifier
from pyro_mmt.evaluation.paired import paired_comparison
from pyro_mmt.experiments.benchmark import TRAINING_EPOCHS
from pyro_mmt.model_selection import validation_scores

#: The estimator's defaults when the rounds ran (before this selection changed them): every
#: candidate starts from these, so the rounds mean the same whatever the defaults are now.
BEFORE = {"alpha_unit": "datum", "class_weight": None, "logit_adjustment": 0.0,
          "unlabelled_prior_shift": 0.0, "averaging": 0.0, "label_divergence": "gamma",
          "n_init": 1, "decision_shift": 0.0}

#: Candidate settings (estimator parameters over :data:`BEFORE`). "base" is the configuration
#: the previous release reported as ``t_gamma`` (chosen on test splits); the others change one
#: lever at a time, and the "final" round combines the levers that helped.
CANDIDATES: dict[str, dict] = {
    "base": {"alpha": 1000.0, **IMBALANCE_OPTIONS},
    "plain": {"alpha": 1000.0},
    "gauss_kl": {"objective": "kl", "nu": float("inf"), "alpha": 1000.0, **IMBALANCE_OPTIONS},
    "t_kl": {"objective": "kl", "alpha": 1000.0, **IMBALANCE_OPTIONS},
    "alpha_100": {"alpha": 100.0, **IMBALANCE_OPTIONS},
    "alpha_10": {"alpha": 10.0, **IMBALANCE_OPTIONS},
    "alpha_10000": {"alpha": 10000.0, **IMBALANCE_OPTIONS},
    "gamma_2x": {"alpha": 1000.0, "gamma": "2x auto", **IMBALANCE_OPTIONS},
    "learned_pi": {"alpha": 1000.0, "class_prior": "learned", **IMBALANCE_OPTIONS},
    "learn_nu": {"alpha": 1000.0, "learn_nu": True, **IMBALANCE_OPTIONS},
    "swa": {"alpha": 1000.0, "averaging": 0.5, **IMBALANCE_OPTIONS},
    "alpha_100_swa": {"alpha": 100.0, "averaging": 0.5, **IMBALANCE_OPTIONS},
    "epochs_auto": {"alpha": 1000.0, "epochs": "auto", **IMBALANCE_OPTIONS},
    "ens3": {"alpha": 1000.0, "n_init": 3, **IMBALANCE_OPTIONS},
    "la_only": {"alpha": 1000.0, "logit_adjustment": 1.0, "unlabelled_prior_shift": 1.0},
    "la_only_swa": {"alpha": 1000.0, "logit_adjustment": 1.0, "unlabelled_prior_shift": 1.0,
                    "averaging": 0.5},
    "dim_0.5_swa": {"alpha": 0.5, "alpha_unit": "dimension", "averaging": 0.5,
                    **IMBALANCE_OPTIONS},
    "dim_1.5_swa": {"alpha": 1.5, "alpha_unit": "dimension", "averaging": 0.5,
                    **IMBALANCE_OPTIONS},
    "dim_5_swa": {"alpha": 5.0, "alpha_unit": "dimension", "averaging": 0.5,
                  **IMBALANCE_OPTIONS},
    "la_dim_1.5_swa": {"alpha": 1.5, "alpha_unit": "dimension", "averaging": 0.5,
                       "logit_adjustment": 1.0, "unlabelled_prior_shift": 1.0},
    "dim_1.5_swa_ens3": {"alpha": 1.5, "alpha_unit": "dimension", "averaging": 0.5,
                         "n_init": 3, **IMBALANCE_OPTIONS},
    "la_100_swa_auto": {"alpha": 100.0, "averaging": 0.5, "epochs": "auto",
                        "logit_adjustment": 1.0, "unlabelled_prior_shift": 1.0},
    "la_dim_1.5_swa_auto": {"alpha": 1.5, "alpha_unit": "dimension", "averaging": 0.5,
                            "epochs": "auto", "logit_adjustment": 1.0,
                            "unlabelled_prior_shift": 1.0},
    "gauss_kl_alpha_100": {"objective": "kl", "nu": float("inf"), "alpha": 100.0,
                           **IMBALANCE_OPTIONS},
}
#: The defaults the "final" round chose; the rounds "minority", "warmup" and "ensemble" change
#: one thing at a time from them.
CHOSEN = CANDIDATES["la_dim_1.5_swa_auto"]
CANDIDATES.update({
    "chosen": CHOSEN,
    "chosen_gauss_kl": {**CHOSEN, "objective": "kl", "nu": float("inf")},
    "chosen_t_kl": {**CHOSEN, "objective": "kl"},
    "chosen_gamma_half": {**CHOSEN, "gamma": "0.5x auto"},
    "chosen_shift_0.5": {**CHOSEN, "unlabelled_prior_shift": 0.5},
    "chosen_la_1.5": {**CHOSEN, "logit_adjustment": 1.5},
    "chosen_warmup": {**CHOSEN, "unlabelled_warmup": 0.5},
    "chosen_ens5": {**CHOSEN, "n_init": 5},
})

#: The settings (data set:ρ:β) of every round from "stability" on.
SEVEN_SETTINGS = ["digits:10:0.05", "digits:10:0.2", "breast:10:0.2", "mfeat:10:0.05",
                  "mfeat:10:0.2", "pdspeech:10:0.2", "pbc:10:0.2"]

#: Named rounds: the settings and candidates of one comparison.
ROUNDS = {
    "alpha": {
        "settings": ["digits:10:0.05", "digits:10:0.2", "breast:10:0.05", "breast:50:0.2",
                     "mfeat:10:0.05", "pdspeech:10:0.05"],
        "candidates": ["base", "alpha_10", "alpha_100", "alpha_10000"],
    },
    "stability": {
        "settings": SEVEN_SETTINGS,
        "candidates": ["base", "alpha_100", "swa", "alpha_100_swa", "epochs_auto",
                       "gauss_kl_alpha_100", "la_only", "la_only_swa", "plain"],
    },
    "units": {
        "settings": SEVEN_SETTINGS,
        "candidates": ["swa", "dim_0.5_swa", "dim_1.5_swa", "dim_5_swa", "la_dim_1.5_swa"],
    },
    "final": {
        "settings": SEVEN_SETTINGS,
        "candidates": ["la_100_swa_auto", "la_dim_1.5_swa_auto"],
    },
    "minority": {
        "settings": SEVEN_SETTINGS,
        "candidates": ["chosen", "chosen_gauss_kl", "chosen_gamma_half", "chosen_shift_0.5",
                       "chosen_la_1.5", "chosen_t_kl"],
    },
    "warmup": {
        "settings": SEVEN_SETTINGS,
        "candidates": ["chosen", "chosen_warmup"],
    },
    "ensemble": {"settings": SEVEN_SETTINGS, "candidates": ["chosen", "chosen_ens5"]},
    "levers": {
        "settings": ["digits:10:0.05", "digits:10:0.2", "breast:10:0.2", "breast:50:0.2",
                     "mfeat:10:0.05", "pdspeech:10:0.2"],
        "candidates": ["base", "plain", "gauss_kl", "t_kl", "alpha_10", "alpha_100",
                       "alpha_10000", "gamma_2x", "learned_pi", "learn_nu"],
    },
}


def parse_setting(text: str) -> tuple[str, float, float]:
    try:
        name, rho, beta = text.split(":")
        return name, float(rho), float(beta)
    except ValueError as error:
        raise SystemExit(f"error: --settings: expected NAME:RHO:BETA, found {text!r}") from error


def main(args) -> pd.DataFrame:
    if args.round:
        round_ = ROUNDS[args.round]
        settings = args.settings or round_["settings"]
        names = args.candidates or round_["candidates"]
    else:
        settings, names = args.settings, args.candidates
    if not settings or not names:
        raise SystemExit("error: give --round, or --settings and --candidates")
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"error: --candidates: unknown {unknown}; known: {sorted(CANDIDATES)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    frames = []
    if out.exists() and args.resume:
        frames.append(pd.read_csv(out))
    done = set()
    if frames:
        done = set(zip(frames[0]["dataset"], frames[0]["rho"], frames[0]["beta"],
                       frames[0]["seed"], frames[0]["candidate"], strict=True))
    for text in settings:
        name, rho, beta = parse_setting(text)
        data = load_dataset(name)
        for seed in args.seeds:
            todo = [c for c in names if (name, rho, beta, seed, c) not in done]
            if not todo:
                continue
            split = long_tailed_split(data, rho, beta, seed)
            epochs = args.epochs or TRAINING_EPOCHS.get(name, 40)
            families = DATASETS[name].likelihood  # e.g. PBC's binary and categorical modalities
            extra = {"likelihood": dict(families)} if families else {}
            candidates = {c: {**BEFORE, "epochs": epochs, "seed": seed, **extra,
                              **CANDIDATES[c]}
                          for c in todo}
            # a candidate's own epochs rule (e.g. "auto") wins over the per-data-set epochs
            tic = time.perf_counter()
            try:
                validation_folds(split.train, n_splits=args.folds, seed=seed)
            except ValueError as error:  # e.g. a single labelled row in the minority class
                print(f"skip {name} rho={rho} beta={beta} seed={seed}: {error}", flush=True)
                continue
            scores = validation_scores(
                MultimodalSemiSupervisedClassifier(), candidates, split.train,
                n_splits=args.folds, seed=seed, n_jobs=args.jobs,
                train_class_counts=split.train_class_counts, error_score=np.nan)
            if "error" in scores:
                for _, row in scores[scores["error"].notna()].iterrows():
                    print(f"  {row['candidate']} fold {row['fold']} failed: {row['error']}")
            scores.insert(0, "seed", seed)
            scores.insert(0, "beta", beta)
            scores.insert(0, "rho", rho)
            scores.insert(0, "dataset", name)
            frames.append(scores.drop(columns=["params"]))
            pd.concat(frames).to_csv(out, index=False)
            print(f"{name} rho={rho} beta={beta} seed={seed}: {len(todo)} candidates x "
                  f"{args.folds} folds in {time.perf_counter() - tic:.0f}s", flush=True)
    results = pd.concat(frames)
    print(summarise(results, reference=args.reference))
    return results


def summarise(results: pd.DataFrame, reference: str = "base") -> str:
    """Mean validation scores per candidate (overall and per setting) and paired wins."""
    metrics = ["balanced_accuracy", "minority_recall"]
    lines = []
    per_setting = results.groupby(["dataset", "rho", "beta", "candidate"])[metrics].mean()
    lines.append(per_setting.round(3).to_string())
    overall = results.groupby("candidate")[metrics].agg(["mean", "count"]).round(4)
    lines.append("\nmean over every (setting, seed, fold):\n" + overall.to_string())
    if reference in set(results["candidate"]):
        # pair by (setting, split seed, fold): the fold plays the role of the seed
        paired = results.rename(columns={"candidate": "method"}).copy()
        paired["seed"] = paired["seed"] * 100 + paired["fold"]
        for other in sorted(set(results["candidate"]) - {reference}):
            for metric in metrics:
                table = paired_comparison(paired, other, reference, metric)
                row = table.iloc[-1]
                lines.append(f"{other} vs {reference} ({metric}): {int(row['wins'])} wins, "
                             f"{int(row['ties'])} ties, {int(row['losses'])} losses, mean "
                             f"difference {row['mean_diff']:+.4f}, p = {row['p_value']:.3g}")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Choose defaults on validation folds of the "
                                                 "public training splits.")
    parser.add_argument("--round", choices=sorted(ROUNDS), help="a named comparison")
    parser.add_argument("--settings", nargs="+", help="NAME:RHO:BETA, e.g. mfeat:10:0.05")
    parser.add_argument("--candidates", nargs="+", help=f"some of {sorted(CANDIDATES)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--folds", type=int, default=3, help="validation folds per split")
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the per-data-set epochs (smoke runs)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel fits")
    parser.add_argument("--reference", default="base", help="candidate the others are paired with")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in --out and run only what is missing")
    parser.add_argument("--out", required=True, help="CSV of per-fold validation scores")
    main(parser.parse_args())
