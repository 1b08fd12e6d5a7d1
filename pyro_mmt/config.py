"""Every setting of the model and its guide, held once and checked once: :class:`ModelConfig`.

:class:`~pyro_mmt.models.MultimodalM2` is built from one :class:`ModelConfig`; its model, its
guide, its networks, the objective's power norm and the saved estimator all read the settings
from there, so they cannot disagree. The config is immutable and round-trips through plain
JSON (:meth:`ModelConfig.to_dict`, :meth:`ModelConfig.from_dict`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

__all__ = ["ModelConfig", "CLASS_PRIORS", "ALPHA_UNITS"]

#: What ``class_prior`` may name: a uniform π, or π estimated from the unlabelled rows
#: (the class proportions of the unlabelled data, by the EM update of
#: :meth:`~pyro_mmt.models.MultimodalM2.update_class_prior`).
CLASS_PRIORS = ("uniform", "learned")

#: What the classification weight α is counted per (``ModelConfig.alpha_unit``).
ALPHA_UNITS = ("datum", "dimension")


def _positive_int(value, name, minimum=1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, found {value!r}")
    return int(value)


def _real(value, name, *, low=None, high=None, low_open=False, allow_inf=False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name}: expected a real number, found {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name}: expected a finite number, found {value}")
    if low is not None and (value < low or (low_open and value == low)):
        bound = ">" if low_open else ">="
        raise ValueError(f"{name}: expected a number {bound} {low}, found {value}")
    if high is not None and value > high:
        raise ValueError(f"{name}: expected a number <= {high}, found {value}")
    return value


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


@dataclass(frozen=True)
class ModelConfig:
    r"""The settings of the multimodal M2 model and its product-of-experts guide.

    Shapes and families:

    :param dims: modality name -> n_j, in the order of the data's modalities (at least one,
        each n_j >= 1).
    :param int num_classes: K >= 2.
    :param int latent_dim: d >= 1.
    :param hidden: hidden layer sizes of every network (a non-empty sequence of positive
        integers).
    :param likelihood: the family of p(x_j | y, z): one name for every modality or a mapping
        modality -> name (modalities left out are ``"student_t"``), from :data:`pyro_mmt.likelihoods.LIKELIHOODS` (``"student_t"``,
        ``"gaussian"``, ``"bernoulli"``, ``"poisson"``, ``"categorical"``, or a family
        registered with :func:`~pyro_mmt.likelihoods.register_likelihood`). The Student-t
        modalities form ONE multivariate t with z (the power form of ``docs/derivation.md``
        §2); every other modality is independent given (y, z).
    :param num_categories: modality -> number of categories C_j, for the categorical
        modalities (each of their n_j columns holds a code in 0..C_j − 1).
    :param nu: degrees of freedom ν > 2 of the t prior, decoder and encoder, or ``inf`` for the
        Gaussian model (then ``"student_t"`` modalities are Gaussian).
    :param bool learn_nu: learn ν with the other parameters (ν = 2 + softplus(θ) > 2, starting
        at ``nu``); one ν is shared by the prior, the decoder, the encoder and τ_0.
    :param sigma: the decoder scales σ_j > 0 of the continuous modalities (one value or a
        mapping modality -> σ_j; ignored for the discrete families).

    The semi-supervised and class-imbalance terms (``docs/imbalance.md``):

    :param class_prior: π of p(y): ``"uniform"``, ``"learned"`` (the class proportions of the
        unlabelled rows, estimated during training by an EM update with a Dirichlet prior of
        concentration ``prior_concentration``) or K positive probabilities summing to 1.
    :param float prior_concentration: a >= 1, the Dirichlet(a, ..., a) prior of a learned π
        (a − 1 pseudo-counts per class). The default 2 adds one pseudo-count per class: the
        estimate of π stays away from 0 (with a = 1, the maximum-likelihood estimate, a class
        the classifier never predicts gets π = 0 and log π = −∞).
    :param float alpha: weight α >= 0 of the classification term α Σ_labelled w_y log q(y|x),
        in the units of the loss.
    :param str alpha_unit: what α is counted per: ``"datum"`` (α per labelled datum) or
        ``"dimension"`` (α per observed dimension of a labelled datum: the term of datum i is
        α n_i w_y log q(y|x), n_i its observed dimension). The generative part of the loss
        grows with n_i, so per dimension the balance between the two parts carries over from
        data of a few features to data of hundreds.
    :param class_weight: ``None``, ``"balanced"`` (w_y = N_L/(K n_y)) or K weights >= 0.
    :param float logit_adjustment: τ >= 0: the classification term uses logits
        f(x) + τ log π̂ (π̂ the labelled class frequencies).
    :param float unlabelled_prior_shift: τ' >= 0: for unlabelled data the enumerated q(y | x)
        uses logits f(x) + τ' log π_u, π_u the learned π when ``class_prior="learned"``, else
        the labelled class frequencies.
    :param label_counts: labelled rows per class (K positive integers); needed by
        ``class_weight="balanced"``, ``logit_adjustment`` and ``unlabelled_prior_shift``.
    :param bool joint_head: add a head on the concatenated modalities to the classifier.
    :param float latent_weight: β > 0 scaling the z sites' log-densities (a β-VAE under
        ``TraceEnum_ELBO``; :class:`~pyro_mmt.infer.GammaPowerELBO` refuses β ≠ 1).
    """

    dims: Mapping[str, int]
    num_classes: int
    latent_dim: int = 16
    hidden: Sequence[int] = (128,)
    likelihood: str | Mapping[str, str] = "student_t"
    num_categories: Mapping[str, int] = field(default_factory=dict)
    nu: float = 5.0
    learn_nu: bool = False
    sigma: float | Mapping[str, float] = 1.0
    class_prior: str | Sequence[float] = "uniform"
    prior_concentration: float = 2.0
    alpha: float = 0.0
    alpha_unit: str = "datum"
    class_weight: str | Sequence[float] | None = None
    logit_adjustment: float = 0.0
    unlabelled_prior_shift: float = 0.0
    label_counts: Sequence[int] | None = None
    joint_head: bool = False
    latent_weight: float = 1.0

    def __post_init__(self):
        from pyro_mmt.likelihoods import LIKELIHOODS

        def put(name, value):
            object.__setattr__(self, name, value)

        if not isinstance(self.dims, Mapping) or not self.dims:
            raise ValueError(f"dims: expected a non-empty mapping modality -> n_j, found {self.dims!r}")
        for m in self.dims:
            if not isinstance(m, str) or not m:
                raise ValueError(f"dims: expected modality names as non-empty strings, found {m!r}")
        put("dims", {m: _positive_int(n, f"dims[{m!r}]") for m, n in self.dims.items()})
        modalities = tuple(self.dims)
        put("num_classes", _positive_int(self.num_classes, "num_classes", minimum=2))
        put("latent_dim", _positive_int(self.latent_dim, "latent_dim"))
        if isinstance(self.hidden, str | bytes) or not isinstance(self.hidden, Sequence) \
                or not self.hidden:
            raise ValueError(
                f"hidden: expected a non-empty sequence of layer sizes, e.g. (128,), found "
                f"{self.hidden!r}"
            )
        put("hidden", tuple(_positive_int(h, "hidden") for h in self.hidden))

        def family(value, name):
            if value not in LIKELIHOODS:
                raise ValueError(f"{name}: expected one of {sorted(LIKELIHOODS)}, found {value!r}")
            return value

        likelihood = self.likelihood
        if isinstance(likelihood, Mapping):  # modalities left out are Student-t
            likelihood = {m: likelihood.get(m, "student_t") for m in modalities} | {
                m: v for m, v in likelihood.items() if m not in modalities}
        put("likelihood", _per_modality(likelihood, modalities, "likelihood", family))
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
        nu = _real(self.nu, "nu", allow_inf=True)
        if not nu > 2:
            raise ValueError(f"nu: expected nu > 2 (the power norm and E‖z‖² need it) or inf, "
                             f"found {nu}")
        put("nu", nu)
        put("learn_nu", bool(self.learn_nu))
        if self.learn_nu and math.isinf(nu):
            raise ValueError("learn_nu: the Gaussian model (nu = inf) has no nu to learn; pass a "
                             "finite starting nu > 2")
        put("sigma", _per_modality(self.sigma, modalities, "sigma",
                                   lambda v, n: _real(v, n, low=0.0, low_open=True)))

        prior = self.class_prior
        if isinstance(prior, str):
            if prior not in CLASS_PRIORS:
                raise ValueError(f"class_prior: expected one of {list(CLASS_PRIORS)} or "
                                 f"{self.num_classes} probabilities, found {prior!r}")
        else:
            values = tuple(_real(p, "class_prior", low=0.0, low_open=True) for p in prior)
            if len(values) != self.num_classes or abs(sum(values) - 1.0) > 1e-6:
                raise ValueError(
                    f"class_prior: expected {self.num_classes} positive probabilities summing "
                    f"to 1, found {list(values)}"
                )
            put("class_prior", values)
        put("prior_concentration", _real(self.prior_concentration, "prior_concentration", low=1.0))
        put("alpha", _real(self.alpha, "alpha", low=0.0))
        if self.alpha_unit not in ALPHA_UNITS:
            raise ValueError(f"alpha_unit: expected one of {list(ALPHA_UNITS)}, found "
                             f"{self.alpha_unit!r}")
        if self.label_counts is not None:
            counts = tuple(_positive_int(c, "label_counts", minimum=0) for c in self.label_counts)
            if len(counts) != self.num_classes:
                raise ValueError(f"label_counts: expected {self.num_classes} counts, found "
                                 f"{len(counts)}")
            empty = [k for k, c in enumerate(counts) if c == 0]
            if empty:
                raise ValueError(f"label_counts: every class needs a labelled row, found none "
                                 f"for classes {empty}")
            put("label_counts", counts)
        weight = self.class_weight
        if isinstance(weight, str):
            if weight != "balanced":
                raise ValueError(f"class_weight: expected None, 'balanced' or "
                                 f"{self.num_classes} weights, found {weight!r}")
            if self.label_counts is None:
                raise ValueError("label_counts: class_weight='balanced' needs the labelled "
                                 "class counts, found None")
        elif weight is not None:
            values = tuple(_real(w, "class_weight", low=0.0) for w in weight)
            if len(values) != self.num_classes:
                raise ValueError(f"class_weight: expected {self.num_classes} weights, found "
                                 f"{len(values)}")
            put("class_weight", values)
        put("logit_adjustment", _real(self.logit_adjustment, "logit_adjustment", low=0.0))
        put("unlabelled_prior_shift",
            _real(self.unlabelled_prior_shift, "unlabelled_prior_shift", low=0.0))
        for name in ("logit_adjustment", "unlabelled_prior_shift"):
            if getattr(self, name) > 0 and self.label_counts is None \
                    and not (name == "unlabelled_prior_shift" and prior == "learned"):
                raise ValueError(f"label_counts: {name} > 0 needs the labelled class counts, "
                                 "found None")
        put("joint_head", bool(self.joint_head))
        put("latent_weight", _real(self.latent_weight, "latent_weight", low=0.0, low_open=True))

    # ---------------------------------------------------------------------------- derived
    @property
    def modalities(self) -> tuple[str, ...]:
        """The modality names, in order."""
        return tuple(self.dims)

    @property
    def gaussian(self) -> bool:
        """True for the ν = ∞ (Gaussian) model."""
        return math.isinf(self.nu)

    # ------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (``inf`` stays a float)."""
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
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """The inverse of :meth:`to_dict` (unknown keys are refused)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"values: unknown settings {unknown}; expected some of "
                             f"{sorted(names)}")
        return cls(**values)

    def replace(self, **changes) -> ModelConfig:
        """A copy with some settings changed (checked again)."""
        return dataclasses.replace(self, **changes)
