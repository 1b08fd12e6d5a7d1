"""The multimodal Student-t M2 model: its decoder chain is the power form, sites and shapes are
as documented, it runs with missing modalities and unlabelled batches, and it trains with
Pyro's own TraceEnum_ELBO."""

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from pyro.infer.enum import get_importance_trace
from pyro.poutine.enum_messenger import EnumMessenger
from scipy import stats

from pyro_mmt.config import ModelConfig
from pyro_mmt.data import Standardiser, load_digits, long_tailed_split
from pyro_mmt.distributions import power_form_log_constant
from pyro_mmt.estimator import build_model
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.training.svi import predict_proba, train

DIMS = {"a": 3, "b": 2, "c": 4}
SIGMA = {"a": 0.7, "b": 1.3, "c": 0.9}
K, D, NU = 3, 2, 5.0


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)


def _data(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(n, d, generator=g) for m, d in DIMS.items()}
    mask = torch.ones(n, len(DIMS), dtype=torch.bool)
    mask[0, 1] = False  # datum 0 misses "b"
    mask[1, 0] = False  # datum 1 misses "a"
    mask[2, [0, 2]] = False  # datum 2 has "b" only
    for j, m in enumerate(DIMS):
        x[m][~mask[:, j]] = 0.0
    y = torch.randint(0, K, (n,), generator=g)
    return x, mask, y


def _joint_log_prob(model, x, mask, y, z):
    """log p(x, y, z) from the model's own trace, z fixed."""
    trace = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x, mask, y)
    trace.compute_log_prob()
    return sum(
        site["log_prob"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and name in {"y", "z", *(f"x_{m}" for m in DIMS)}
    )


def test_decoder_chain_is_the_power_form(float64):
    """Σ of the chain's log-densities = log π_y + log K − (ν+n+d)/2 log(1 + Q/ν), n the observed
    dimension of each datum (docs/derivation.md §2, F2), for random networks and missing modalities."""
    model = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA,
                        class_prior=[0.5, 0.3, 0.2])
    x, mask, y = _data()
    z = torch.randn(len(y), D)
    got = _joint_log_prob(model, x, mask, y, z)

    quad = z.pow(2).sum(-1)
    obs_dim = torch.zeros(len(y))
    log_det = torch.zeros(len(y))
    for j, m in enumerate(DIMS):
        resid = (x[m] - model.decoders[m](z, y)).div(SIGMA[m]).pow(2).sum(-1)
        quad = quad + mask[:, j] * resid
        obs_dim = obs_dim + mask[:, j] * DIMS[m]
        log_det = log_det + mask[:, j] * DIMS[m] * 2 * math.log(SIGMA[m])
    log_k = power_form_log_constant(NU, obs_dim, D, log_det)
    log_pi = torch.log(torch.tensor([0.5, 0.3, 0.2]))[y]
    expected = log_pi + log_k - (NU + obs_dim + D) / 2 * torch.log1p(quad / NU)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


def test_decoder_is_one_multivariate_t_over_the_present_modalities(float64):
    """Given z, the chain of x sites equals scipy's multivariate t over the concatenated present
    modalities: t_n(μ, (ν+‖z‖²)/(ν+d) Λ, ν + d)."""
    model = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA)
    x, mask, y = _data()
    z = torch.randn(len(y), D)
    trace = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x, mask, y)
    trace.compute_log_prob()
    got = sum(trace.nodes[f"x_{m}"]["log_prob"] for m in DIMS)
    for i in range(len(y)):
        present = [m for j, m in enumerate(DIMS) if mask[i, j]]
        value = torch.cat([x[m][i] for m in present]).numpy()
        loc = torch.cat([model.decoders[m](z[i:i + 1], y[i:i + 1])[0] for m in present])
        scale2 = torch.cat([torch.full((DIMS[m],), SIGMA[m] ** 2) for m in present])
        s2 = (NU + z[i].pow(2).sum()) / (NU + D)
        ref = stats.multivariate_t(loc=loc.detach().numpy(),
                                   shape=np.diag((s2 * scale2).numpy()), df=NU + D).logpdf(value)
        assert float(got[i].detach()) == pytest.approx(ref, rel=1e-10)


def test_gaussian_model_decoder_is_independent_normals(float64):
    model = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=math.inf, sigma=SIGMA)
    x, mask, y = _data()
    z = torch.randn(len(y), D)
    got = _joint_log_prob(model, x, mask, y, z)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1) - math.log(K)
    for j, m in enumerate(DIMS):
        lp = torch.distributions.Normal(model.decoders[m](z, y), SIGMA[m]).log_prob(x[m]).sum(-1)
        expected = expected + mask[:, j] * lp
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-10)


def test_sites_and_enumerated_shapes(float64):
    model = guide = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA)
    x, mask, _ = _data(n=7)
    enum_guide = EnumMessenger(first_available_dim=-2)(guide.guide)
    model_trace, guide_trace = get_importance_trace("flat", 1, model.model, enum_guide,
                                                    (x, mask, None), {})
    assert guide_trace.nodes["y"]["value"].shape == (K, 1)
    assert guide_trace.nodes["z"]["value"].shape == (K, 7, D)
    for m in DIMS:
        site = model_trace.nodes[f"x_{m}"]
        assert site["is_observed"] and site["log_prob"].shape == (K, 7)
    assert model_trace.nodes["z"]["log_prob"].shape == (K, 7)
    assert "classification" not in model_trace.nodes  # only labelled batches carry it


@pytest.mark.parametrize("nu", [NU, math.inf])
@pytest.mark.parametrize("case", ["all present", "one missing per datum", "unlabelled only"])
def test_runs_with_missing_modalities_and_unlabelled_batches(nu, case, float64):
    model = guide = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=nu, sigma=SIGMA,
                                alpha=1.0)
    x, _, y = _data(n=9)
    mask = torch.ones(9, len(DIMS), dtype=torch.bool)
    if case == "one missing per datum":
        mask[torch.arange(9), torch.arange(9) % len(DIMS)] = False
        for j, m in enumerate(DIMS):
            x[m][~mask[:, j]] = 0.0
    labels = None if case == "unlabelled only" else y
    elbo = TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)
    loss = elbo.differentiable_loss(model.model, guide.guide, x, mask, labels)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_classification_term_is_alpha_weighted_log_q(float64):
    model = build_model(DIMS, K, latent_dim=D, hidden=(5,), alpha=2.5, alpha_unit="datum",
                        class_weight=[1.0, 2.0, 0.5], label_counts=[3, 2, 1],
                        logit_adjustment=1.0)
    x, mask, y = _data()
    trace = poutine.trace(model.model).get_trace(x, mask, y)
    site = trace.nodes["classification"]
    assert site["infer"]["is_auxiliary"]
    log_freq = torch.log(torch.tensor([3.0, 2.0, 1.0]) / 6.0)
    logits = model.classifier(x, mask) + log_freq
    expected = 2.5 * torch.tensor([1.0, 2.0, 0.5])[y] * torch.log_softmax(logits, -1)[
        torch.arange(len(y)), y]
    torch.testing.assert_close(site["fn"].log_prob(site["value"]), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"nu": 2.0}, "nu"),
        ({"nu": 1.5}, "nu"),
        ({"hidden": ()}, "hidden"),
        ({"hidden": (0,)}, "hidden"),
        ({"hidden": 128}, "hidden"),
        ({"latent_dim": 2.5}, "latent_dim"),
        ({"nu": "abc"}, "nu"),
        ({"alpha": math.nan}, "alpha"),
        ({"likelihood": "beta"}, "likelihood"),
        ({"likelihood": {"a": "categorical", "b": "student_t", "c": "student_t"}},
         "num_categories"),
        ({"class_prior": "balanced"}, "class_prior"),
        ({"learn_nu": True, "nu": math.inf}, "learn_nu"),
        ({"alpha": -1.0}, "alpha"),
        ({"class_prior": [0.5, 0.5]}, "class_prior"),
        ({"class_prior": [0.5, 0.3, 0.3]}, "class_prior"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": {"a": 1.0}}, "sigma"),
        ({"class_weight": "balanced"}, "label_counts"),
        ({"class_weight": "balanced", "label_counts": [3, 0, 1]}, "label_counts"),
        ({"latent_dim": 0}, "latent_dim"),
    ],
)
def test_bad_configuration_names_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(DIMS, K, **kwargs)


def test_empty_modality_and_bad_mask_are_refused():
    with pytest.raises(ValueError, match="dims"):
        ModelConfig({"a": 3, "b": 0}, K)
    model = build_model(DIMS, K)
    x, _, y = _data()
    with pytest.raises(ValueError, match="mask"):
        model.model(x, torch.ones(len(y), 2, dtype=torch.bool), y)


def test_short_svi_run_with_trace_enum_elbo_learns_digits():
    """The model and guide fit Pyro's own machinery: TraceEnum_ELBO under SVI lowers the loss
    and classifies digits (ρ = 10, β = 0.2) far above chance (0.1)."""
    split = long_tailed_split(load_digits(), rho=10, beta=0.2, seed=0)
    scaler = Standardiser().fit(split.train)
    train_set, test_set = scaler.transform(split.train), scaler.transform(split.test)
    m2 = build_model(train_set.dims, train_set.num_classes, latent_dim=4, hidden=(32,),
                     nu=math.inf, alpha=50.0)
    history = train(m2.model, m2.guide, train_set,
                    objective=TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False),
                    optimizer=pyro.optim.Adam({"lr": 3e-3}), epochs=8, seed=0, progress=False)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    pred = predict_proba(m2, test_set).argmax(1)
    metrics = classification_metrics(test_set.y.numpy(), pred)
    assert metrics["balanced_accuracy"] > 0.6


# ------------------------------------------------------------------ generative semantics
def test_model_generates_every_modality_with_predictive():
    """With x absent the model samples every site; Predictive gives x_<m> of shape [S, N, n_m]
    and y of shape [S, N] (sampled) or the given labels."""
    from pyro.infer import Predictive

    m2 = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA)
    draws = Predictive(m2.model, num_samples=4)(None, batch_size=6)
    for m, n in DIMS.items():
        assert draws[f"x_{m}"].shape == (4, 6, n)
        assert torch.isfinite(draws[f"x_{m}"]).all()
    assert draws["y"].shape == (4, 6) and draws["z"].shape == (4, 6, D)
    y = torch.tensor([0, 1, 2, 0])
    given = Predictive(m2.model, num_samples=3)(None, None, y)
    assert (given["y"] == y).all() and given["x_a"].shape == (3, 4, DIMS["a"])
    gaussian = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=math.inf)
    assert Predictive(gaussian.model, num_samples=2)(batch_size=5)["x_c"].shape == (2, 5, 4)


def test_prior_draws_do_not_depend_on_placeholders_of_another_modality():
    """Under poutine.uncondition every site is drawn and the chain uses the drawn values: what
    was passed for one modality cannot change the draws of another."""
    m2 = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA)
    y = torch.zeros(500, dtype=torch.long)
    draws = []
    for fill in (0.0, 100.0):
        x = {m: torch.full((500, n), fill) for m, n in DIMS.items()}
        pyro.set_rng_seed(1)
        trace = poutine.trace(poutine.uncondition(m2.model)).get_trace(x, None, y)
        draws.append(trace.nodes["x_c"]["value"].detach())
    torch.testing.assert_close(draws[0], draws[1])
    assert float(draws[0].std()) < 20  # the prior scale, not the placeholder


def test_draws_of_the_chain_are_one_multivariate_t(float64):
    """Given (y, z), the chain's draws are jointly t_n(μ, s(z)²Λ, ν + d): the statistic
    Q/n = Σ_j ‖x_j − μ_j‖²/(s²σ_j² n) follows F(n, ν + d). Independent per-modality t's would
    not (their Q has another law), so this checks the dependence through the shared scale."""
    m2 = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA)
    num = 4000
    z = torch.full((num, D), 0.7)
    y = torch.ones(num, dtype=torch.long)
    trace = poutine.trace(poutine.condition(m2.model, data={"z": z})).get_trace(None, None, y)
    s2 = (NU + z[0].pow(2).sum()) / (NU + D)
    n = sum(DIMS.values())
    quad = sum((trace.nodes[f"x_{m}"]["value"] - m2.decoders[m](z, y)).pow(2).sum(-1)
               / (SIGMA[m] ** 2 * s2) for m in DIMS).detach()
    result = stats.kstest((quad / n).numpy(), stats.f(n, NU + D).cdf)
    assert result.pvalue > 1e-3
    # the same statistic for independent per-modality t's: a law the draws do not follow
    rng = np.random.default_rng(0)
    independent = sum(DIMS[m] * stats.f(DIMS[m], NU + D).rvs(num, random_state=rng)
                      for m in DIMS)
    assert stats.ks_2samp((quad / n).numpy(), independent / n).pvalue < 1e-3


def test_cross_modal_imputation_through_predictive():
    """Given modality "a" only, Predictive(model, guide) draws z from q(z | x_a) and the
    other modalities from the model: x_b and x_c come back, x_a is the data."""
    from pyro.infer import Predictive

    m2 = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA)
    x, _, _ = _data(n=5)
    given = {"a": x["a"]}
    draws = Predictive(m2.model, guide=m2.guide, num_samples=7,
                       return_sites=["x_b", "x_c", "z", "y"])(given)
    assert draws["x_b"].shape == (7, 5, DIMS["b"]) and draws["x_c"].shape == (7, 5, DIMS["c"])
    assert draws["y"].shape == (7, 5)
    # the guide used only "a": with "a" removed q(z | x) is the prior expert alone
    present = m2.present(given, torch.ones(5, 3, dtype=torch.bool))
    assert present.tolist() == [[True, False, False]] * 5


def test_minus_one_is_an_unobserved_label_for_model_and_guide():
    """Predictive(model, guide)(x, mask, y) with y = -1 rows: the labelled rows keep their
    label, the others draw it from q(y | x); y = -1 everywhere is the unlabelled case."""
    from pyro.infer import Predictive

    m2 = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, sigma=SIGMA)
    x, mask, y = _data(n=6)
    partly = y.clone()
    partly[::2] = -1
    draws = Predictive(m2.model, guide=m2.guide, num_samples=20,
                       return_sites=["y", "x_a"])(x, mask, partly)
    assert draws["y"].shape == (20, 6)
    assert (draws["y"][:, 1::2] == y[1::2]).all()
    assert ((draws["y"][:, ::2] >= 0) & (draws["y"][:, ::2] < K)).all()
    none = Predictive(m2.model, guide=m2.guide, num_samples=3,
                      return_sites=["y"])(x, mask, torch.full_like(y, -1))
    assert none["y"].shape == (3, 6) and (none["y"] >= 0).all()


def test_a_decoder_on_cat_z_one_hot_is_pointed_to_label_concat():
    """A decoder written the usual way, cat([z, one_hot(y)]), fails on the enumerated label
    with an error that names LabelConcat (and LabelConcat makes it work)."""
    from torch import nn
    from torch.nn import functional as F

    from pyro_mmt.infer import GammaPowerELBO
    from pyro_mmt.nn import LabelConcat

    class CatDecoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(D + K, DIMS["a"])

        def forward(self, z, y):
            return self.linear(torch.cat([z, F.one_hot(y, K).to(z.dtype)], -1))

    x, mask, _ = _data(n=6)
    for objective in (TraceEnum_ELBO(max_plate_nesting=1), GammaPowerELBO(max_plate_nesting=1)):
        m2 = build_model(DIMS, K, latent_dim=D, hidden=(5,), decoders={"a": CatDecoder()})
        with pytest.raises(RuntimeError, match=r"decoders\['a'\]: .*wrap it as "
                                               r"pyro_mmt.nn.LabelConcat\(net, num_classes\)"):
            objective.loss(m2.model, m2.guide, x, mask, None)
    wrapped = LabelConcat(nn.Linear(D + K, DIMS["a"]), K)
    m2 = build_model(DIMS, K, latent_dim=D, hidden=(5,), decoders={"a": wrapped})
    assert math.isfinite(TraceEnum_ELBO(max_plate_nesting=1).loss(m2.model, m2.guide, x, mask,
                                                                  None))


def test_model_needs_some_way_to_know_the_batch_size():
    m2 = build_model(DIMS, K, latent_dim=D, hidden=(5,))
    with pytest.raises(ValueError, match="batch_size"):
        m2.model()
    x, mask, y = _data()
    with pytest.raises(ValueError, match="batch_size"):
        m2.model(x, mask, y, batch_size=len(y) + 1)
    with pytest.raises(ValueError, match=r"unknown modalities \['d'\]"):
        m2.model({"d": x["a"]})
    with pytest.raises(ValueError, match=r"x\['a'\]"):
        m2.model({"a": x["a"][:, :2]})


# --------------------------------------------------------------------- one owner, one config
def test_one_module_owns_every_network_and_setting(tmp_path):
    """state_dict holds the classifier, encoders, decoders and a learned ν; .to() moves them;
    a state_dict loaded into a model built from the same config gives the same model."""
    config = ModelConfig(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, learn_nu=True,
                         class_prior="learned", label_counts=(3, 2, 1), alpha=2.0)
    from pyro_mmt.models import MultimodalM2

    m2 = MultimodalM2(config)
    keys = m2.state_dict().keys()
    for prefix in ("q.classifier.", "q.encoders.", "decoders."):  # q: the guide module
        assert any(k.startswith(prefix) for k in keys)
    assert "nu_unconstrained" in keys and "class_log_prior" in keys
    assert float(m2.nu.detach()) == pytest.approx(NU)
    with torch.no_grad():
        m2.nu_unconstrained.add_(0.3)
    m2.class_log_prior.copy_(torch.log(torch.tensor([0.2, 0.3, 0.5])))
    x, mask, _ = _data()
    m2.calibrate_decision_shift(m2.classifier_logits(x, mask))  # the predicted shares: state
    torch.save(m2.state_dict(), tmp_path / "m2.pt")
    again = MultimodalM2(ModelConfig.from_dict(config.to_dict()))
    again.load_state_dict(torch.load(tmp_path / "m2.pt", weights_only=True))
    assert float(again.nu.detach()) == float(m2.nu.detach())
    np.testing.assert_allclose(again.class_prior(), [0.2, 0.3, 0.5], rtol=1e-6)
    torch.testing.assert_close(again.q.decision_log_shares, m2.q.decision_log_shares)
    torch.testing.assert_close(again.predict_proba(x, mask), m2.predict_proba(x, mask))
    assert m2.double().class_weights.dtype == torch.float64


def test_a_state_dict_from_before_the_guide_module_loads():
    """Keys ``classifier.*`` and ``encoders.*`` (the layout before the guide became the
    submodule ``q``) load into ``q``."""
    from pyro_mmt.models import MultimodalM2

    # the layout before q predates the decision shift (and so its reference shares)
    config = ModelConfig(DIMS, K, latent_dim=D, hidden=(5,), decision_reference="labelled")
    m2 = MultimodalM2(config)
    newer = ("q.decision_shift", "q.decision_log_shares")
    old = {k.removeprefix("q."): v.clone() for k, v in m2.state_dict().items()
           if k not in newer}
    assert any(k.startswith("classifier.") for k in old)
    again = MultimodalM2(config)
    again.load_state_dict(old)
    for k, v in m2.state_dict().items():
        if k not in newer:
            torch.testing.assert_close(again.state_dict()[k], v)
    assert again.q.prediction_shift() == config.decision_shift  # the config owns a number


def test_models_folder_is_importable_under_one_name_only():
    import importlib
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[1])
    sys.path.insert(0, root)
    try:
        for name in ("models", "guides"):
            sys.modules.pop(name, None)
            with pytest.raises(ImportError, match=f"pyro_mmt.{name}"):
                importlib.import_module(name)
    finally:
        sys.path.remove(root)
        for name in ("models", "guides"):
            sys.modules.pop(name, None)


# ---------------------------------------------------------------- likelihood families
MIXED = {"a": "student_t", "b": "bernoulli", "c": "poisson"}


def _mixed_data(n=6):
    g = torch.Generator().manual_seed(0)
    x = {"a": torch.randn(n, 3, generator=g),
         "b": torch.randint(0, 2, (n, 2), generator=g).float(),
         "c": torch.randint(0, 5, (n, 4), generator=g).float()}
    return x, torch.ones(n, 3, dtype=torch.bool), torch.randint(0, K, (n,), generator=g)


def test_mixed_families_are_independent_given_y_and_z(float64):
    """log p(x, y, z) of a mixed model = log π_y + log t_d(z) + the t chain of the Student-t
    modalities + Σ of the other families' log-densities (scipy), each from its decoder."""
    m2 = build_model(DIMS, K, latent_dim=D, hidden=(5,), nu=NU, likelihood=MIXED, alpha=0.0)
    x, mask, y = _mixed_data()
    z = torch.randn(len(y), D)
    got = _joint_log_prob(m2, x, mask, y, z)
    expected = -math.log(K) + torch.tensor(stats.multivariate_t(np.zeros(D), np.eye(D), df=NU)
                                           .logpdf(z.numpy()))
    s2 = (NU + z.pow(2).sum(-1)) / (NU + D)
    loc = m2.decoders["a"](z, y).detach()
    for i in range(len(y)):
        expected[i] += stats.multivariate_t(loc[i].numpy(), s2[i].item() * np.eye(3),
                                            df=NU + D).logpdf(x["a"][i].numpy())
    p = torch.sigmoid(m2.decoders["b"](z, y)).detach().numpy()
    expected += torch.tensor(stats.bernoulli(p).logpmf(x["b"].numpy()).sum(-1))
    rate = torch.nn.functional.softplus(m2.decoders["c"](z, y)).detach().numpy() + 1e-6
    expected += torch.tensor(stats.poisson(rate).logpmf(x["c"].numpy()).sum(-1))
    torch.testing.assert_close(got.detach(), expected, rtol=1e-7, atol=1e-6)  # scipy from p, torch from logits


def test_categorical_modality_uses_one_hot_inputs_and_generates_codes():
    m2 = build_model({"a": 3, "codes": 2}, K, latent_dim=D, hidden=(5,),
                     likelihood={"a": "student_t", "codes": "categorical"},
                     num_categories={"codes": 4}, decision_shift=0.0)
    assert m2.decoders["codes"].body[-1][-1].out_features == 8  # n_j × C_j logits
    x = {"a": torch.randn(5, 3), "codes": torch.randint(0, 4, (5, 2)).float()}
    proba = m2.predict_proba(x)
    assert proba.shape == (5, K)
    draws = poutine.trace(m2.model).get_trace(batch_size=50).nodes["x_codes"]["value"]
    assert draws.shape == (50, 2) and set(draws.unique().tolist()) <= {0, 1, 2, 3}


def test_alpha_per_observed_dimension(float64):
    """alpha_unit="dimension": datum i's classification factor is α n_i w_y log q(y | x), n_i
    its observed dimension (missing modalities left out)."""
    per_datum = build_model(DIMS, K, latent_dim=D, hidden=(5,), alpha=2.0, alpha_unit="datum")
    per_dim = build_model(DIMS, K, latent_dim=D, hidden=(5,), alpha=2.0, alpha_unit="dimension")
    per_dim.load_state_dict(per_datum.state_dict())
    x, mask, y = _data()
    sites = [poutine.trace(m.model).get_trace(x, mask, y).nodes["classification"]
             for m in (per_datum, per_dim)]
    values = [s["fn"].log_prob(s["value"]) for s in sites]
    n = (mask.double() * torch.tensor([float(d) for d in DIMS.values()])).sum(-1)
    torch.testing.assert_close(values[1], values[0] * n)
