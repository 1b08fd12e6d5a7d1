"""Every setting, declared once: its default, its constraint and its help text.

- :class:`ModelConfig`: the model p(x, y, z) and its guide q(y, z | x) (families, ν, σ, α, the
  class-imbalance devices); :class:`~pyro_mmt.models.MultimodalM2` is built from one.
- :class:`TrainingConfig`: how they are trained (objective, epochs, batch sizes, learning rate,
  optimiser, averaging, warm-up, initialisations, seed).
- :class:`EstimatorOptions`: what only the estimator has (how a flat X is read, your own
  networks, and where and how it runs: device, threads, jobs, checkpoints).

Each field is declared with :func:`setting`, which records its default, its
:class:`Constraint` and its help text in the field's metadata. Everything else is derived from
these declarations: the defaults of ``ModelConfig(dims, K)`` are the estimator's (so a model
built and trained by hand with SVI is the estimator's model), the parameters of
:class:`~pyro_mmt.estimator.MultimodalSemiSupervisedClassifier` and their documentation
(:func:`estimator_settings`), its checks (:func:`check_setting`, one kind of message, in the
spirit of scikit-learn's ``_parameter_constraints``), the options of ``pyro-mmt train`` and
the list of settings a resumed fit may change (:func:`resumable_settings`). Adding a setting
is one declaration plus its use.

The configs are immutable and round-trip through plain JSON (``to_dict``/``from_dict``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field
from numbers import Integral, Real
from typing import Any, Self

import numpy as np

from pyro_mmt.decision import DECISION_REFERENCES
from pyro_mmt.infer.gamma_power_elbo import LABEL_DIVERGENCES

__all__ = [
    "ModelConfig",
    "TrainingConfig",
    "EstimatorOptions",
    "Constraint",
    "setting",
    "check_setting",
    "estimator_settings",
    "resumable_settings",
    "CLASS_PRIORS",
    "ALPHA_UNITS",
    "MISSING_CELLS",
    "OBJECTIVES",
    "LABEL_DIVERGENCES",
    "OPTIMIZERS",
]

#: What ``class_prior`` may name: a uniform π, or π estimated from the unlabelled rows
#: (the class proportions of the unlabelled data, by the EM update of
#: :meth:`~pyro_mmt.models.MultimodalM2.update_class_prior`).
CLASS_PRIORS = ("uniform", "learned")

#: What the classification weight α is counted per (``ModelConfig.alpha_unit``).
ALPHA_UNITS = ("datum", "dimension")

#: ``ModelConfig.missing_cells``: how the guide's networks see a missing cell.
MISSING_CELLS = ("auto", "indicator", "zero")

#: ``TrainingConfig.objective``: the γ-power divergence or the M2 ELBO (KL).
OBJECTIVES = ("gamma_power", "kl")


#: ``TrainingConfig.optimizer``.
OPTIMIZERS = ("fused_adam", "clipped_adam")


# ----------------------------------------------------------------------------- constraints
@dataclass(frozen=True)
class Constraint:
    """What a setting may be: ``check(value)`` is True for a valid value; ``expected`` says
    what is expected (a string, or a function returning one when it depends on a registry)."""

    check: Callable[[Any], bool]
    expected: str | Callable[[], str]

    def __call__(self, value) -> bool:
        try:
            return bool(self.check(value))
        except (TypeError, ValueError):
            return False

    def describe(self) -> str:
        return self.expected() if callable(self.expected) else self.expected


#: The model computes in float32: a setting beyond its range would overflow to inf.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and not math.isnan(value)


def _finite32(value) -> bool:
    return math.isfinite(value) and abs(value) <= _FLOAT32_MAX


def _is_int(value, low=1) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= low


def _is_probabilities(value) -> bool:
    if isinstance(value, str | bytes | Mapping):
        return False
    p = np.asarray(value, dtype=float)
    return p.ndim == 1 and p.size >= 2 and bool(np.isfinite(p).all() and (p > 0).all())


def _is_gamma(value) -> bool:
    if isinstance(value, str):
        from pyro_mmt.infer import GammaPowerELBO

        GammaPowerELBO(value)  # a ValueError: not a form of "auto"
        return True
    return _is_number(value) and _finite32(value) and value > -1 and value != 0


def _is_family(value) -> bool:
    from pyro_mmt.likelihoods import LIKELIHOODS

    return isinstance(value, str) and value in LIKELIHOODS


def _families() -> str:
    from pyro_mmt.likelihoods import LIKELIHOODS

    return f"one of {sorted(LIKELIHOODS)}, or a mapping modality -> one of them"


def _is_networks(value) -> bool:
    from torch import nn

    return value is None or (isinstance(value, Mapping) and all(
        isinstance(v, nn.Module) or callable(v) for v in value.values()))


def one_of(*values) -> Constraint:
    """One of ``values``."""
    return Constraint(lambda v: isinstance(v, str | type(None)) and v in values,
                      f"one of {list(values)}")


BOOLEAN = Constraint(lambda v: isinstance(v, bool | np.bool_), "True or False")
COUNT = Constraint(_is_int, "an integer >= 1")
POSITIVE = Constraint(lambda v: _is_number(v) and _finite32(v) and v > 0,
                      "a finite number > 0 (at most 3.4e38, float32)")
NON_NEGATIVE = Constraint(lambda v: _is_number(v) and _finite32(v) and v >= 0,
                          "a finite number >= 0 (at most 3.4e38, float32)")
#: σ² must be a positive float32 too (the model stores log σ²).
_SIGMA = Constraint(lambda v: _is_number(v) and 1e-18 <= v <= 1e18, "a number in [1e-18, 1e18]")


def check_setting(name: str, value, constraint: Constraint | None) -> None:
    """Raise ``ValueError("<name>: expected <what>, found <value>")`` unless ``value`` meets
    ``constraint`` (None: anything goes). The one check of every declared setting."""
    if constraint is not None and not constraint(value):
        raise ValueError(f"{name}: expected {constraint.describe()}, found {value!r}")


# ---------------------------------------------------------------------------- declarations
def setting(default=MISSING, constraint: Constraint | None = None, help: str = "", *,
            default_factory=MISSING, cli: str | None = "option", parse=None,
            aliases: Sequence[str] = (), resumable: bool = False, data: bool = False):
    """Declare a setting: a dataclass field whose metadata holds its constraint and help.

    :param default: the default (the one place it is written).
    :param constraint: what the value may be (:class:`Constraint`), checked by
        :func:`check_setting`.
    :param str help: one sentence for ``--help`` and the estimator's documentation.
    :param cli: ``"option"``: ``pyro-mmt train`` gets the option ``--<name-with-dashes>``;
        a flag such as ``"--quiet"``: the command sets it through that (hand-written) flag;
        None: a Python object that no command line can give (e.g. a network).
    :param parse: ``parse(text)``: the value of the option's text (default: the default's
        type).
    :param aliases: other flags of the same option (kept for older command lines).
    :param bool resumable: a resumed fit may change it (every other setting must be the
        checkpointed fit's).
    :param bool data: read from the data by ``fit`` (dimensions, classes, counts), not a
        parameter of the estimator.
    """
    metadata = {"constraint": constraint, "help": help, "cli": cli, "parse": parse,
                "aliases": tuple(aliases), "resumable": resumable, "data": data}
    return field(default=default, default_factory=default_factory, metadata=metadata)


def _number_or_auto(text: str):
    return text if "auto" in text else float(text)


def _int_or_auto(text: str):
    return text if text == "auto" else int(text)


def _none_or(convert):
    def parse(text: str):
        return None if text.lower() == "none" else convert(text)
    return parse


# ------------------------------------------------------------------------- model and guide
def _positive_int(value, name, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, found {value!r}")
    return int(value)


def _per_modality(value, modalities, name, convert) -> dict:
    """One value per modality from a scalar or a mapping (checked by ``convert``)."""
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(modalities))
        missing = [m for m in modalities if m not in value]
        if unknown or missing:
            raise ValueError(
                f"{name}: expected one value per modality {list(modalities)}, found unknown "
                f"{unknown} and missing {missing}"
            )
        return {m: convert(value[m], f"{name}[{m!r}]") for m in modalities}
    return {m: convert(value, name) for m in modalities}


def _hidden(text: str) -> tuple[int, ...]:
    return tuple(int(h) for h in text.replace("x", " ").split())


class _Settings:
    """What a frozen dataclass of settings offers besides its fields: JSON-able values and
    back, and a checked copy with changes."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (mappings as dicts, tuples as lists; ``inf`` stays a float)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Self:
        """The inverse of :meth:`to_dict` (unknown keys are refused)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"values: unknown settings {unknown}; expected some of "
                             f"{sorted(names)}")
        return cls(**values)

    def replace(self, **changes) -> Self:
        """A copy with some settings changed (checked again)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelConfig(_Settings):
    r"""The settings of the multimodal M2 model and its product-of-experts guide, with the
    estimator's validated defaults (``docs/benchmark.md``): ``ModelConfig(dims, K,
    label_counts=counts)`` is the model that ``MultimodalSemiSupervisedClassifier()`` fits.

    ``dims``, ``num_classes``, ``num_categories`` and ``label_counts`` describe the data (the
    estimator reads them from ``X`` and ``y``); every other field is a setting, declared with
    its default, constraint and help below (``docs/imbalance.md`` for the class-imbalance
    terms). The Student-t modalities form ONE multivariate t with z (the power form of
    ``docs/derivation.md`` §2); every other modality is independent given (y, z).

    :param dims: modality name -> n_j, in the order of the data's modalities (at least one,
        each n_j >= 1).
    :param int num_classes: K >= 2.
    :param num_categories: modality -> number of categories C_j, for the categorical
        modalities (each of their n_j columns holds a code in 0..C_j − 1).
    :param label_counts: labelled rows per class (K positive integers): π̂ of the logit
        adjustment and the prior shift, and the counts of ``class_weight="balanced"``.
        Without them (None) π̂ is uniform, so those two devices have no effect, and
        ``class_weight="balanced"`` is refused.
    """

    dims: Mapping[str, int] = setting(data=True, help="modality name -> n_j")
    num_classes: int = setting(data=True, help="K >= 2")
    latent_dim: int = setting(16, COUNT, "dimension d of the latent z")
    hidden: Sequence[int] = setting(
        (128,), Constraint(lambda v: isinstance(v, Sequence) and not isinstance(v, str)
                           and len(v) > 0 and all(_is_int(h) for h in v),
                           "a non-empty sequence of positive integers, e.g. (128,)"),
        "hidden layer sizes of every network (on the command line: one or more sizes)",
        parse=_hidden)
    likelihood: str | Mapping[str, str] = setting(
        "student_t", Constraint(lambda v: _is_family(v) or (isinstance(v, Mapping) and all(
            _is_family(f) for f in v.values())), _families),
        "the family of p(x_j | y, z): one name for every modality or a mapping modality -> "
        "name (modalities left out are student_t): student_t, gaussian, bernoulli, poisson, "
        "categorical or a family registered with pyro_mmt.likelihoods.register_likelihood "
        "(on the command line: FAMILY for every modality, MODALITY=FAMILY for one; repeat)")
    num_categories: Mapping[str, int] = setting(default_factory=dict, data=True,
                                                help="modality -> C_j (categorical)")
    nu: float = setting(
        5.0, Constraint(lambda v: _is_number(v) and v > 2 and (math.isinf(v) or v <= _FLOAT32_MAX),
                        "a number > 2 (at most 3.4e38, float32), or inf for the Gaussian model"),
        "degrees of freedom ν > 2 of the t prior, decoder and encoder (the start when "
        "learn_nu), or inf for the Gaussian model")
    learn_nu: bool = setting(
        False, BOOLEAN, "learn ν with the other parameters (ν = 2 + softplus(θ) > 2, from nu); "
        "one ν for the prior, the decoder, the encoder and τ_0")
    sigma: float | Mapping[str, float] = setting(
        1.0, Constraint(lambda v: _SIGMA(v) or (isinstance(v, Mapping) and all(
            _SIGMA(s) for s in v.values())), "a number in [1e-18, 1e18] or a mapping modality "
            "-> such numbers"),
        "decoder scale σ_j of the continuous modalities (one value or a mapping modality -> "
        "σ_j; standardised data: 1 is the natural unit)")
    class_prior: str | Sequence[float] = setting(
        "uniform", Constraint(lambda v: v in CLASS_PRIORS if isinstance(v, str)
                              else _is_probabilities(v),
                              f"one of {list(CLASS_PRIORS)} or one probability per class"),
        "π of p(y): uniform, learned (the class proportions of the unlabelled rows, by an EM "
        "update with a Dirichlet prior) or K probabilities summing to 1")
    prior_concentration: float = setting(
        2.0, Constraint(lambda v: _is_number(v) and _finite32(v) and v >= 1,
                        "a finite number >= 1 (at most 3.4e38, float32)"),
        "Dirichlet concentration a >= 1 of a learned π (a − 1 pseudo-counts per class; 2 keeps "
        "every π_k > 0)")
    alpha: float = setting(
        1.5, NON_NEGATIVE, "weight α >= 0 of the classification term α Σ_labelled w_y log "
        "q(y | x), per labelled datum or per observed dimension of one (alpha_unit)")
    alpha_unit: str = setting(
        "dimension", one_of(*ALPHA_UNITS),
        "what alpha is counted per: datum, or dimension (α n_i per labelled datum, n_i its "
        "observed dimension, so the balance with the generative part carries over from a few "
        "features to hundreds)")
    class_weight: str | Sequence[float] | Mapping[Any, float] | None = setting(
        None, Constraint(lambda v: v is None or v == "balanced" or (
            isinstance(v, Sequence | Mapping | np.ndarray) and not isinstance(v, str)
            and len(v) > 0 and all(NON_NEGATIVE(w) for w in (
                v.values() if isinstance(v, Mapping) else v))),
            "None, 'balanced', one weight >= 0 per class or a dict {label: weight >= 0}"),
        "weights w_y of the classification term: none, balanced (N_L/(K n_y)), one weight per "
        "class (in classes_ order) or a dict {label: weight} (labels it leaves out weigh 1; "
        "for ModelConfig the labels are the class indices)", parse=_none_or(str))
    logit_adjustment: float = setting(
        1.0, NON_NEGATIVE, "τ >= 0: the classification term uses the logits f(x) + τ log π̂ "
        "(π̂ the labelled class frequencies)")
    unlabelled_prior_shift: float = setting(
        1.0, NON_NEGATIVE, "τ' >= 0: the enumerated q(y | x) of unlabelled rows uses the logits "
        "f(x) + τ' log π_u (π_u the learned π, else the labelled class frequencies)",
        aliases=("--prior-shift",))
    decision_shift: float | str = setting(
        1.5, Constraint(lambda v: v == "auto" or (_is_number(v) and _finite32(v)),
                         "'auto' or a finite number"),
        "δ of the prediction: predict and predict_proba use the logits f(x) − δ log r (r the "
        "reference shares, decision_reference); 0 is the class-balanced classifier as trained, "
        "δ > 0 moves the boundary towards the classes with the smaller share (more minority "
        "recall for some balanced accuracy; 1.5 with the predicted shares chosen on "
        "development seeds, for one initialisation and for three), δ < 0 the other way; auto: "
        "chosen after training from the predictions on the unlabelled training rows "
        "(decision_shares; docs/imbalance.md)", parse=_number_or_auto, resumable=True)
    decision_reference: str = setting(
        "predicted", one_of(*DECISION_REFERENCES),
        "the reference shares r of decision_shift: predicted (the classifier's mean q(y | x) "
        "over the unlabelled training rows with one pseudo-count per class, computed after "
        "training: the shift corrects the model's own lean; uniform, so no shift, without "
        "unlabelled rows) or labelled (the labelled class frequencies π̂, the post-hoc logit "
        "adjustment)", resumable=True)
    decision_shares: float = setting(
        0.5, Constraint(lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
        "λ of decision_shift='auto': δ is where the classes predicted for the unlabelled "
        "training rows are spread most like π^λ (normalised; π their class proportions): 1 "
        "their own proportions, 0 equal shares (unused by a numeric decision_shift)",
        resumable=True)
    label_counts: Sequence[int] | None = setting(None, data=True, help="labelled rows per class")
    joint_head: bool = setting(False, BOOLEAN, "add a head on the concatenated modalities to "
                               "the classifier")
    missing_cells: str = setting(
        "auto", one_of(*MISSING_CELLS),
        "how the guide's networks see a missing cell (a NaN in a row with other values): "
        "indicator (the values, missing ones 0, next to the cell mask), zero (the values, "
        "missing ones 0: the training mean of standardised data) or auto (indicator when the "
        "training data have a missing cell, else zero; a ModelConfig built by hand: zero); the "
        "model scores the observed cells only in every case")
    latent_weight: float = setting(
        1.0, POSITIVE, "β > 0 scaling the z sites' log-densities (a β-VAE; the kl objective "
        "only: gamma_power refuses β ≠ 1)")

    def __post_init__(self):
        from pyro_mmt.likelihoods import LIKELIHOODS

        def put(name, value):
            object.__setattr__(self, name, value)

        for f in dataclasses.fields(self):  # every setting's own constraint
            check_setting(f.name, getattr(self, f.name), f.metadata.get("constraint"))
        # the data's shapes
        if not isinstance(self.dims, Mapping) or not self.dims:
            raise ValueError(f"dims: expected a non-empty mapping modality -> n_j, found {self.dims!r}")
        for m in self.dims:
            if not isinstance(m, str) or not m:
                raise ValueError(f"dims: expected modality names as non-empty strings, found {m!r}")
        put("dims", {m: _positive_int(n, f"dims[{m!r}]") for m, n in self.dims.items()})
        modalities = tuple(self.dims)
        put("num_classes", _positive_int(self.num_classes, "num_classes", minimum=2))
        put("latent_dim", int(self.latent_dim))
        put("hidden", tuple(int(h) for h in self.hidden))

        # one family, σ per modality
        likelihood = self.likelihood
        if isinstance(likelihood, Mapping):  # modalities left out are Student-t
            likelihood = {m: likelihood.get(m, "student_t") for m in modalities} | {
                m: v for m, v in likelihood.items() if m not in modalities}
        put("likelihood", _per_modality(likelihood, modalities, "likelihood", lambda v, n: v))
        categorical = [m for m in modalities if LIKELIHOODS[self.likelihood[m]].needs_categories]
        if not isinstance(self.num_categories, Mapping):
            raise ValueError(f"num_categories: expected a mapping modality -> C_j, found "
                             f"{self.num_categories!r}")
        extra = sorted(set(self.num_categories) - set(categorical))
        missing = [m for m in categorical if m not in self.num_categories]
        if extra or missing:
            raise ValueError(
                f"num_categories: expected a count for each categorical modality {categorical}, "
                f"found extra {extra} and missing {missing}"
            )
        put("num_categories", {m: _positive_int(self.num_categories[m], f"num_categories[{m!r}]",
                                                minimum=2) for m in categorical})
        put("nu", float(self.nu))
        put("learn_nu", bool(self.learn_nu))
        check_combination(self)
        put("sigma", _per_modality(self.sigma, modalities, "sigma", lambda v, n: float(v)))

        # the class terms: K values where K are given
        K = self.num_classes
        if not isinstance(self.class_prior, str):
            values = tuple(float(p) for p in self.class_prior)
            if len(values) != K or abs(sum(values) - 1.0) > 1e-6:
                raise ValueError(f"class_prior: expected {K} positive probabilities summing "
                                 f"to 1, found {list(values)}")
            put("class_prior", values)
        for name in ("prior_concentration", "alpha", "logit_adjustment",
                     "unlabelled_prior_shift", "decision_shares", "latent_weight"):
            put(name, float(getattr(self, name)))
        if self.decision_shift != "auto":
            put("decision_shift", float(self.decision_shift))
        if self.label_counts is not None:
            if isinstance(self.label_counts, str) or not isinstance(
                    self.label_counts, Sequence | np.ndarray):
                raise ValueError(f"label_counts: expected {K} counts, found "
                                 f"{self.label_counts!r}")
            counts = tuple(_positive_int(c, "label_counts", minimum=0) for c in self.label_counts)
            if len(counts) != K:
                raise ValueError(f"label_counts: expected {K} counts, found {len(counts)}")
            empty = [k for k, c in enumerate(counts) if c == 0]
            if empty:
                raise ValueError(f"label_counts: every class needs a labelled row, found none "
                                 f"for classes {empty}")
            put("label_counts", counts)
        weight = self.class_weight
        if weight == "balanced" and self.label_counts is None:
            raise ValueError("label_counts: class_weight='balanced' needs the labelled class "
                             "counts, found None")
        if isinstance(weight, Mapping):  # {class index: weight}, the others 1
            unknown = sorted(k for k in weight if k not in range(K))
            if unknown:
                raise ValueError(f"class_weight: expected class indices 0..{K - 1} as keys, "
                                 f"found {unknown}")
            weight = [weight.get(k, 1.0) for k in range(K)]
        if weight is not None and not isinstance(weight, str):
            values = tuple(float(w) for w in weight)
            if len(values) != K:
                raise ValueError(f"class_weight: expected {K} weights, found {len(values)}")
            put("class_weight", values)
        put("joint_head", bool(self.joint_head))

    # ---------------------------------------------------------------------------- derived
    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality names, in order."""
        return tuple(self.dims)

    @property
    def cell_indicators(self) -> bool:
        """Whether the guide's networks take the cell mask next to the values
        (``missing_cells="indicator"``; "auto" is "zero" here: the estimator turns it into
        "indicator" when its training data miss a cell)."""
        return self.missing_cells == "indicator"

    @property
    def gaussian(self) -> bool:
        """True for the ν = ∞ (Gaussian) model."""
        return math.isinf(self.nu)

    @property
    def learned_decision(self) -> bool:
        """Whether the decision rule has something to learn after training: δ for
        ``decision_shift="auto"``, or the reference shares r for
        ``decision_reference="predicted"``."""
        return self.decision_shift == "auto" or self.decision_reference == "predicted"



def check_combination(settings) -> None:
    """What the model's settings cannot be together (read as attributes of ``settings``: a
    :class:`ModelConfig` or the estimator): ν is learned only when finite."""
    if settings.learn_nu and math.isinf(settings.nu):
        raise ValueError("learn_nu: the Gaussian model (nu = inf) has no nu to learn; pass a "
                         "finite starting nu > 2")


# -------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainingConfig(_Settings):
    """How the model and its guide are trained, with the estimator's validated defaults.

    The estimator's training parameters are these fields; :func:`~pyro_mmt.training.train`
    takes the same names in the same units (``unlabelled_warmup`` is a fraction of the epochs
    in both).
    """

    objective: str = setting(
        "gamma_power", one_of(*OBJECTIVES),
        "gamma_power (the γ-power divergence) or kl (the M2 ELBO)")
    gamma: float | str = setting(
        "auto", Constraint(_is_gamma, "'auto', '<k>x auto' (k > 0) or a finite float > -1 "
                                      "other than 0"),
        "γ of the γ-power objective: auto (−2/(ν+n+d) per datum), '<k>x auto' or a number",
        parse=_number_or_auto)
    label_divergence: str = setting(
        "kl", one_of(*LABEL_DIVERGENCES),
        "the gamma_power objective's label: kl (the γ-power divergence for (x, z) given y and "
        "M2's label terms; docs/derivation.md §10; chosen on development seeds) or gamma (one "
        "γ-power divergence over (x, y, z), the paper's objective; unused by the kl objective)")
    label_weight: float | str = setting(
        1.0, Constraint(lambda v: v == "auto" or (_is_number(v) and _finite32(v) and v > 0),
                        "'auto' or a number > 0"),
        "weight w of the label terms under label_divergence=kl: a number, or auto (the γ-loss's "
        "own slope in −log p, per datum)", parse=_number_or_auto)
    epochs: int | str = setting(
        "auto", Constraint(lambda v: v == "auto" or _is_int(v), "'auto' or an integer >= 1"),
        "passes over the unlabelled data, or auto: about 300 unlabelled mini-batches (at least "
        "10 epochs, at most 500)", parse=_int_or_auto, resumable=True)
    batch_size: int = setting(128, COUNT, "unlabelled batch size")
    labelled_batch_size: int | None = setting(
        None, Constraint(lambda v: v is None or _is_int(v), "None or an integer >= 1"),
        "labelled batch size (none: batch_size)", parse=_none_or(int))
    lr: float = setting(1e-3, POSITIVE, "Adam's learning rate (may change on resume, e.g. "
                        "smaller after a divergence)", resumable=True)
    num_particles: int = setting(1, COUNT, "particles per step")
    optimizer: str = setting(
        "fused_adam", one_of(*OPTIMIZERS),
        "fused_adam (one fused Adam with ClippedAdam's clamp of ±10) or clipped_adam (Pyro's "
        "ClippedAdam, one Adam per tensor)")
    averaging: float = setting(
        0.5, Constraint(lambda v: _is_number(v) and 0 <= v < 1, "a fraction in [0, 1)"),
        "average the parameters over the end-of-epoch states of this last fraction of the "
        "epochs and predict with the mean (0: off)")
    unlabelled_warmup: float = setting(
        0.0, Constraint(lambda v: _is_number(v) and 0 <= v <= 1, "a fraction in [0, 1]"),
        "ramp the unlabelled rows' term up (from exp(−5) to 1) over this fraction of the "
        "epochs; labelled rows at full weight throughout (0: off)")
    standardise: bool = setting(True, BOOLEAN, "standardise each continuous modality on the "
                                "training rows")
    n_init: int = setting(5, COUNT, "independent initialisations (seeds seed + 1000 i), each a "
                          "full model; predictions average their q(y | x), then shift the "
                          "average by decision_shift (5 chosen on development seeds; 1: a single "
                          "model, five times faster)")
    seed: int = setting(0, Constraint(lambda v: _is_int(v, low=0), "an integer >= 0"),
                        "random seed (initial weights, draws, batch order)", cli="--seed")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check_setting(f.name, getattr(self, f.name), f.metadata["constraint"])
        check_objective(self)



def check_objective(settings) -> None:
    """What the objective's settings cannot be together (attributes of ``settings``, a
    :class:`TrainingConfig` or the estimator; ``latent_weight`` where it has one)."""
    if settings.objective == "kl" and settings.gamma != "auto":
        raise ValueError(f"gamma: the kl objective has no gamma; expected 'auto' (unused), "
                         f"found {settings.gamma!r}")
    label = getattr(settings, "label_divergence", "kl")
    label_weight = getattr(settings, "label_weight", 1.0)
    if (label == "gamma" or settings.objective == "kl") and label_weight != 1.0:
        raise ValueError(f"label_weight: weighs the label terms of the gamma_power objective "
                         f"with label_divergence='kl'; expected 1.0 (unused) with "
                         f"objective={settings.objective!r}, label_divergence={label!r}, found "
                         f"{label_weight!r}")
    weight = getattr(settings, "latent_weight", 1.0)
    if settings.objective == "gamma_power" and weight != 1.0:
        raise ValueError(
            f"latent_weight: the gamma_power objective raises the whole density to the "
            f"power gamma and cannot weight the z sites; expected 1.0, found "
            f"{weight} (latent_weight is a KL-objective option)")


# ------------------------------------------------------------------- the estimator's own
@dataclass(frozen=True)
class EstimatorOptions:
    """What only the estimator has: how a flat ``X`` is read, your own networks, and where
    and how it runs (device, threads, jobs, progress, distributed training, checkpoints).
    None of them changes what a fit computes, bar ``modalities``, ``decoders`` and
    ``encoders``, which say what the data and networks are."""

    modalities: Mapping[str, Sequence] | None = setting(
        None, Constraint(lambda v: v is None or (isinstance(v, Mapping) and len(v) > 0),
                         "None or a mapping modality -> its columns of a flat X"),
        "for a flat X (a 2-D array or an ordinary DataFrame, what scikit-learn's "
        "cross_val_score, GridSearchCV and Pipeline pass on): a mapping modality -> its "
        "columns (names for a DataFrame; indices, a slice or a range for an array)", cli=None)
    decoders: Mapping[str, Any] | None = setting(
        None, Constraint(_is_networks, "None or a mapping modality -> nn.Module or make(config)"),
        "None or modality -> your decoder network: an nn.Module (deep-copied for every fit) or "
        "a factory make(config) -> nn.Module (called once per member); see "
        "pyro_mmt.models.MultimodalM2 for the interface", cli=None, resumable=True)
    encoders: Mapping[str, Any] | None = setting(
        None, Constraint(_is_networks, "None or a mapping modality -> nn.Module or make(config)"),
        "the same for the encoder experts", cli=None, resumable=True)
    device: str = setting(
        "cpu", Constraint(lambda v: isinstance(v, str) and v.split(":")[0] in ("cpu", "cuda"),
                          "'cpu', 'cuda' or 'cuda:<index>'"), "cpu, cuda or cuda:<index>")
    n_threads: int | None = setting(
        1, Constraint(lambda v: v is None or _is_int(v), "None or an integer >= 1"),
        "torch threads while fitting and predicting (restored afterwards); None leaves "
        "torch's setting. 1: for networks this small one thread per process is fastest",
        cli="--threads", resumable=True)
    n_jobs: int = setting(
        1, Constraint(lambda v: v == -1 or _is_int(v), "an integer >= 1, or -1 (one per core)"),
        "members of n_init trained at once, each in its own process with n_threads torch "
        "threads (-1: one per core); the fitted members do not depend on it", resumable=True)
    progress: bool = setting(False, BOOLEAN, "show progress bars",
                             cli="--quiet", resumable=True)
    distributed: bool = setting(
        False, BOOLEAN, "data-parallel training over the processes of a torchrun launch",
        cli="--distributed")
    checkpoint_dir: str | os.PathLike | None = setting(
        None, Constraint(lambda v: v is None or (isinstance(v, str | os.PathLike)
                                                 and str(v) != ""), "None or a folder path"),
        "a folder for checkpoints (None: none): checkpoint.pt after every epoch (in init_<i>/ "
        "for member i when n_init > 1) and fit.json, the settings and a fingerprint of the data",
        cli="--out", resumable=True)
    resume: bool = setting(
        False, BOOLEAN, "with checkpoint_dir, continue from its checkpoints; the result equals "
        "an uninterrupted fit with the same seed. Only the resumable settings may differ from "
        "the checkpointed fit's", cli="--resume", resumable=True)


def estimator_settings() -> dict[str, dataclasses.Field]:
    """The estimator's parameters, in order, each with its declaration: the settings of
    :class:`ModelConfig` (less the data's shapes and counts), of :class:`TrainingConfig` and
    of :class:`EstimatorOptions`."""
    out = {}
    for cls in (ModelConfig, TrainingConfig, EstimatorOptions):
        for f in dataclasses.fields(cls):
            if not f.metadata["data"]:
                out[f.name] = f
    return out


def resumable_settings() -> tuple[str, ...]:
    """The estimator's parameters that a resumed fit may change (every other one, and the
    data, must be the checkpointed fit's)."""
    return tuple(name for name, f in estimator_settings().items() if f.metadata["resumable"])


def default(f: dataclasses.Field):
    """A declared field's default value."""
    return f.default_factory() if f.default is MISSING else f.default
