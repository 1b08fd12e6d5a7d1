"""The product-of-experts guide: the classifier is a product of per-modality experts, the
encoder broadcasts over the enumerated label exactly as a loop over classes would, the fusion is
``student_t_poe`` with the prior expert τ_0, and the predict path works with any subset."""

import math

import pytest
import torch

from pyro_mmt.distributions import (
    DiagStudentT,
    gaussian_poe,
    prior_expert_scale,
    student_t_poe,
)
from pyro_mmt.estimator import build_model
from pyro_mmt.guides import PoEClassifier

DIMS = {"a": 3, "b": 2, "c": 4}
SIGMA = {"a": 0.7, "b": 1.3, "c": 0.9}
K, D, NU = 3, 2, 5.0


@pytest.fixture(autouse=True)
def float64():
    torch.set_default_dtype(torch.float64)


def _data(n=5):
    x = {m: torch.randn(n, d) for m, d in DIMS.items()}
    mask = torch.ones(n, len(DIMS), dtype=torch.bool)
    mask[0, 1] = False
    mask[1, [0, 2]] = False
    return x, mask


def test_classifier_logits_are_the_sum_of_present_experts():
    clf = PoEClassifier(DIMS, K, (4,))
    x, mask = _data()
    logits = clf(x, mask)
    for i in range(len(mask)):
        expected = sum(clf.experts[m](x[m][i]) for j, m in enumerate(DIMS) if mask[i, j])
        torch.testing.assert_close(logits[i], expected)
    # an absent modality is the same as a masked one
    del x["b"]
    no_b = torch.stack([clf.experts[m](x[m]) * mask[:, j:j + 1]
                        for j, m in enumerate(DIMS) if m != "b"]).sum(0)
    torch.testing.assert_close(clf(x, mask & torch.tensor([True, False, True])), no_b)


def test_encoder_broadcasts_over_the_enumerated_label_like_a_loop():
    guide = build_model(DIMS, K, latent_dim=D, hidden=(4,), nu=NU, sigma=SIGMA)
    x, mask = _data()
    enumerated = guide.encode(x, mask, torch.arange(K).reshape(K, 1))
    assert enumerated.batch_shape == (K, len(mask)) and enumerated.event_shape == (D,)
    for k in range(K):
        single = guide.encode(x, mask, torch.full((len(mask),), k))
        torch.testing.assert_close(enumerated.loc[k], single.loc)
        torch.testing.assert_close(enumerated.scale[k], single.scale)


def test_encoder_is_student_t_poe_with_the_prior_expert_tau0():
    guide = build_model(DIMS, K, latent_dim=D, hidden=(4,), nu=NU, sigma=SIGMA)
    x, mask = _data()
    y = torch.randint(0, K, (len(mask),))
    q = guide.encode(x, mask, y)
    assert isinstance(q, DiagStudentT)
    locs, scales = zip(*(guide.encoders[m](x[m], y) for m in DIMS), strict=True)
    n = (mask.double() * torch.tensor([3.0, 2.0, 4.0])).sum(-1)
    log_det = (mask.double() * torch.tensor(
        [3 * 2 * math.log(0.7), 2 * 2 * math.log(1.3), 4 * 2 * math.log(0.9)])).sum(-1)
    tau0 = prior_expert_scale(NU, n, D, log_det)
    ref = student_t_poe(torch.stack(locs), torch.stack(scales), mask, nu=NU, obs_dim=n,
                        prior_scale=tau0)
    torch.testing.assert_close(q.loc, ref.loc)
    torch.testing.assert_close(q.scale, ref.scale)
    torch.testing.assert_close(q.df, NU + n)
    # by hand for datum 1, which has only modality "b": precision 1/τ0 + 1/Σ_b
    prec = 1 / tau0[1] + 1 / scales[1][1]
    torch.testing.assert_close(q.loc[1], (locs[1][1] / scales[1][1]) / prec)
    torch.testing.assert_close(q.scale[1], (NU / (NU + 2) / prec).sqrt())


def test_a_missing_modality_does_not_change_q():
    guide = build_model(DIMS, K, latent_dim=D, hidden=(4,), nu=NU, sigma=SIGMA)
    x, mask = _data()
    y = torch.zeros(len(mask), dtype=torch.long)
    before = guide.encode(x, mask, y)
    x["b"] = x["b"].clone()
    x["b"][0] = 1e6  # datum 0 misses "b": its value must not matter
    after = guide.encode(x, mask, y)
    torch.testing.assert_close(before.loc[0], after.loc[0])
    torch.testing.assert_close(before.scale[0], after.scale[0])


def test_gaussian_guide_uses_the_unit_prior_expert():
    guide = build_model(DIMS, K, latent_dim=D, hidden=(4,), nu=math.inf, sigma=SIGMA)
    x, mask = _data()
    y = torch.zeros(len(mask), dtype=torch.long)
    q = guide.encode(x, mask, y)
    locs, scales = zip(*(guide.encoders[m](x[m], y) for m in DIMS), strict=True)
    ref = gaussian_poe(torch.stack(locs), torch.stack(scales), mask)
    torch.testing.assert_close(q.mean, ref.mean)
    torch.testing.assert_close(q.variance, ref.variance)


def test_logit_adjustment_and_unlabelled_prior_shift():
    counts = (6, 3, 1)
    log_freq = torch.log(torch.tensor(counts, dtype=torch.float64) / 10)
    guide = build_model(DIMS, K, latent_dim=D, hidden=(4,), nu=NU,
                        unlabelled_prior_shift=0.5, label_counts=counts,
                        decision_reference="labelled")
    torch.testing.assert_close(guide.unlabelled_logit_shift(), 0.5 * log_freq)
    x, mask = _data()
    adjusted = guide.predict_proba(x, mask, logit_adjustment=1.0)
    expected = torch.softmax(guide.classifier(x, mask) - log_freq, -1)
    torch.testing.assert_close(adjusted, expected)
    plain = build_model(DIMS, K, latent_dim=D, hidden=(4,), nu=NU, decision_reference="labelled")
    with pytest.raises(ValueError, match="label_counts"):
        plain.predict_proba(x, mask, logit_adjustment=1.0)
    with pytest.raises(ValueError, match="unlabelled_prior_shift"):
        build_model(DIMS, K, unlabelled_prior_shift=-1.0)
    # a learned class prior takes the place of the labelled frequencies
    learned = build_model(DIMS, K, latent_dim=D, hidden=(4,), class_prior="learned",
                          unlabelled_prior_shift=1.0, label_counts=counts)
    torch.testing.assert_close(learned.unlabelled_logit_shift(), log_freq)
    learned.class_log_prior.copy_(torch.log(torch.tensor([0.2, 0.2, 0.6])))
    torch.testing.assert_close(learned.unlabelled_logit_shift(),
                               torch.log(torch.tensor([0.2, 0.2, 0.6])))


def test_learned_class_prior_is_the_em_fixed_point():
    """update_class_prior solves π ∝ Σ_i softmax(f(x_i) + log π) + (a − 1): with
    logits built from a known prior shift, it recovers that prior."""
    guide = build_model(DIMS, K, latent_dim=D, hidden=(4,), class_prior="learned",
                        unlabelled_prior_shift=1.0, label_counts=(1, 1, 1))
    rng = torch.Generator().manual_seed(0)
    truth = torch.tensor([0.7, 0.2, 0.1])
    y = torch.multinomial(truth, 20000, replacement=True, generator=rng)
    # a calibrated class-balanced classifier: the log-likelihoods of x ~ N(μ_y, 1)
    centres = torch.tensor([-1.5, 0.0, 1.5])
    x = centres[y] + torch.randn(20000, generator=rng)
    logits = -0.5 * (x.unsqueeze(-1) - centres).pow(2)
    pi = guide.update_class_prior(logits, iterations=500)
    q = torch.softmax(logits + torch.log(torch.tensor(pi)), -1)
    # the fixed point, with the Dirichlet(2) prior's one pseudo-count per class
    torch.testing.assert_close(torch.tensor(pi), (q.sum(0) + 1) / (len(q) + K), atol=1e-6, rtol=0)
    assert abs(pi - truth.numpy()).max() < 0.03
    uniform = build_model(DIMS, K, latent_dim=D, hidden=(4,))
    with pytest.raises(ValueError, match="class_prior"):
        uniform.update_class_prior(logits)


@pytest.mark.parametrize("present", [["a"], ["b", "c"], ["a", "b", "c"]])
def test_predict_proba_with_any_subset(present):
    guide = build_model(DIMS, K, latent_dim=D, hidden=(4,), nu=NU, decision_shift=0.0)
    x, _ = _data()
    mask = torch.tensor([[m in present for m in DIMS]] * 5)
    proba = guide.predict_proba({m: x[m] if m in present else torch.zeros_like(x[m])
                                 for m in DIMS}, mask)
    assert proba.shape == (5, K)
    torch.testing.assert_close(proba.sum(-1), torch.ones(5))


def test_learned_class_prior_stays_positive_for_a_class_never_predicted():
    """The default Dirichlet(2) prior: a class whose logits are always far below the others
    keeps π_k > 0 (with a = 1 the estimate would reach 0 and log π = −∞ would poison the
    loss)."""
    guide = build_model(DIMS, K, latent_dim=D, hidden=(4,), class_prior="learned",
                        unlabelled_prior_shift=1.0, label_counts=(5, 3, 1))
    logits = torch.zeros(300, K)
    logits[:, 2] = -80.0
    pi = guide.update_class_prior(logits)
    assert pi[2] > 0 and torch.isfinite(guide.class_log_prior).all()
    assert pi[2] == pytest.approx(1 / (300 + K), rel=1e-3)


# ------------------------------------------------------------------------ the guide alone
def test_the_guide_is_a_module_built_from_the_config():
    """PoETGuide(config) alone: its networks in its state_dict, q(y | x) rows summing to 1,
    q(z | x, y) batched over the enumerated y, and a Pyro guide whose sites have the model's
    shapes; ν and π are the config's until a model shares its own."""
    from pyro import poutine

    from pyro_mmt.config import ModelConfig
    from pyro_mmt.guides import PoETGuide
    from pyro_mmt.models import MultimodalM2

    config = ModelConfig(DIMS, K, latent_dim=D, hidden=(4,), nu=NU, label_counts=(3, 2, 1))
    guide = PoETGuide(config)
    assert {k.split(".")[0] for k in guide.state_dict()} == {"classifier", "encoders",
                                                             "decision_shift",
                                                             "decision_log_shares"}
    x = {m: torch.randn(6, n) for m, n in DIMS.items()}
    mask = torch.ones(6, len(DIMS), dtype=torch.bool)
    mask[0, 1] = False
    guide.calibrate_decision_shift(guide.classifier_logits(x, mask))
    proba = guide.predict_proba(x, mask)
    assert proba.shape == (6, K)
    torch.testing.assert_close(proba.sum(-1), torch.ones(6))
    assert guide.encode(x, mask, torch.arange(K).reshape(K, 1)).batch_shape == (K, 6)
    trace = poutine.trace(guide.guide).get_trace(x, mask, torch.randint(0, K, (6,)))
    assert trace.nodes["z"]["value"].shape == (6, D) and "y" not in trace.nodes
    trace = poutine.trace(guide.guide).get_trace(x, mask)
    assert trace.nodes["y"]["value"].shape == (6,)
    assert float(guide.nu) == NU
    torch.testing.assert_close(guide.unlabelled_logit_shift(), guide.label_log_freq)

    m2 = MultimodalM2(config.replace(learn_nu=True))
    assert m2.q.nu is m2.nu or torch.equal(m2.q.nu, m2.nu)
    assert m2.guide.__self__ is m2 and m2.classifier is m2.q.classifier
    assert all(m2.q.state_dict()[k] is m2.state_dict()[f"q.{k}"] or torch.allclose(
        m2.q.state_dict()[k], m2.state_dict()[f"q.{k}"], equal_nan=True)
        for k in m2.q.state_dict())
