"""The decision shift δ: predictions use f(x) − δ log r, r the reference shares: the labelled
class frequencies π̂ (``decision_reference="labelled"``) or the classifier's mean prediction
on the unlabelled training rows (``"predicted"``, the default, learned after training);
``decision_shift="auto"`` chooses δ after training so that the classes predicted for the
unlabelled rows are spread like π^λ. The choice is checked against a plain loop written out
here; the estimator, the Pyro-level ``train`` and save/load against the rule applied by hand
to the fitted classifier."""

import math
import warnings

import numpy as np
import pytest
import torch

from pyro_mmt.config import ModelConfig
from pyro_mmt.data import MultimodalDataset
from pyro_mmt.decision import DECISION_SHIFT_GRID, choose_decision_shift, predicted_shares
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier, load_estimator, save_estimator
from pyro_mmt.models import MultimodalM2
from pyro_mmt.training import calibrate_decision_shift, classifier_logits

#: one initialisation (the ensemble has its own tests below)
SMALL = {"hidden": (8,), "latent_dim": 2, "epochs": 2, "batch_size": 16, "n_init": 1}
#: the shift along the labelled class frequencies π̂
LABELLED = {"decision_reference": "labelled"}


def _by_hand(logits, log_freq, log_target, shares):
    """The rule written out: every δ of the grid, its predicted shares, their total variation
    from π^λ (normalised); the smallest distance, then the smallest |δ|."""
    target = np.exp(shares * log_target)
    target /= target.sum()
    best = None
    for delta in DECISION_SHIFT_GRID:
        pred = np.argmax(logits - delta * log_freq, axis=1)
        share = np.bincount(pred, minlength=logits.shape[1]) / len(pred)
        tv = 0.5 * np.abs(share - target).sum()
        key = (round(tv, 12), abs(delta))
        if best is None or key < best[0]:
            best = (key, delta)
    return best[1]


@pytest.mark.parametrize("shares", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_choice_is_the_rule_written_out(shares, seed):
    rng = np.random.default_rng(seed)
    counts = np.array([40, 12, 5, 2])
    log_freq = np.log(counts / counts.sum())
    logits = rng.normal(size=(300, 4)) * 2.0
    target = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    got = choose_decision_shift(logits, log_freq, target_log_prior=target, shares=shares)
    assert got == pytest.approx(_by_hand(logits, log_freq, target, shares))


def test_a_known_answer_for_two_classes():
    """Logits 0 for class 0 and s_i for class 1 with s evenly spread on (−1, 1): at δ the
    rows with s_i > δ (log π̂_1 − log π̂_0) are predicted 1; with π̂ = (e/(1+e), 1/(1+e))
    that is s_i > −δ, so equal shares (λ = 0) need δ = 0 and a quarter of ones δ = −0.5."""
    s = np.linspace(-0.999, 0.999, 400)
    logits = np.stack([np.zeros_like(s), s], 1)
    log_freq = np.log(np.array([math.e, 1.0]) / (1 + math.e))
    assert choose_decision_shift(logits, log_freq, shares=0.0) == 0.0
    quarter = np.log(np.array([0.75, 0.25]))
    assert choose_decision_shift(logits, log_freq, target_log_prior=quarter,
                                 shares=1.0) == pytest.approx(-0.5, abs=0.05)


def test_predicted_shares_are_the_argmax_counts():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.5, 0.0]])
    log_freq = torch.log(torch.tensor([0.8, 0.2]))
    shares = predicted_shares(logits, log_freq, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(shares, torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]]))


def test_no_rows_choose_no_shift_and_bad_inputs_are_refused():
    log_freq = np.log([0.5, 0.5])
    assert choose_decision_shift(np.zeros((0, 2)), log_freq) == 0.0
    assert choose_decision_shift(np.zeros((3, 2)), log_freq, shares=np.float32(0.5)) == 0.0
    with pytest.raises(ValueError, match="shares"):
        choose_decision_shift(np.zeros((3, 2)), log_freq, shares=1.5)
    with pytest.raises(ValueError, match="logits"):
        choose_decision_shift(np.array([[0.0, np.nan]]), log_freq)
    with pytest.raises(ValueError, match="shapes"):
        choose_decision_shift(np.zeros((3, 3)), log_freq)
    with pytest.raises(ValueError, match="log_freq"):
        choose_decision_shift(np.zeros((3, 2)), np.array([0.0, -np.inf]))
    with pytest.raises(ValueError, match="target_log_prior"):
        choose_decision_shift(np.zeros((3, 2)), log_freq, target_log_prior=[0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="target_log_prior"):
        choose_decision_shift(np.zeros((3, 2)), log_freq, target_log_prior=[0.0, np.nan])
    # λ = 0 aims at equal shares even where the target has a zero probability
    logits = np.stack([np.zeros(10), np.linspace(-1, 1, 10)], 1)
    assert choose_decision_shift(logits, log_freq, target_log_prior=[0.0, -np.inf],
                                 shares=0.0) == choose_decision_shift(logits, log_freq, shares=0)


@pytest.mark.parametrize("value", ["often", math.inf, math.nan, None])
def test_bad_settings_are_refused_naming_them(value):
    with pytest.raises(ValueError, match="decision_shift"):
        ModelConfig({"a": 2}, 2, decision_shift=value)
    with pytest.raises(ValueError, match="decision_shares"):
        ModelConfig({"a": 2}, 2, decision_shares=1.5)
    with pytest.raises(ValueError, match="decision_shift"):
        MultimodalSemiSupervisedClassifier(decision_shift=value).fit(
            {"a": np.zeros((4, 2))}, [0, 1, -1, -1])


def test_a_number_shifts_the_prediction_and_auto_waits_for_calibration():
    counts = (6, 3, 1)
    log_freq = torch.log(torch.tensor(counts, dtype=torch.float32) / 10)
    x = {"a": torch.randn(7, 3)}
    fixed = MultimodalM2(ModelConfig({"a": 3}, 3, hidden=(4,), label_counts=counts,
                                     decision_shift=0.7, **LABELLED))
    torch.testing.assert_close(fixed.predict_proba(x),
                               torch.softmax(fixed.classifier_logits(x) - 0.7 * log_freq, -1))
    auto = MultimodalM2(ModelConfig({"a": 3}, 3, hidden=(4,), label_counts=counts,
                                    decision_shift="auto", **LABELLED))
    assert math.isnan(float(auto.q.decision_shift))
    with pytest.warns(UserWarning, match="not been calibrated"):
        proba = auto.predict_proba(x)
    torch.testing.assert_close(proba, torch.softmax(auto.classifier_logits(x), -1))
    delta = auto.calibrate_decision_shift(auto.classifier_logits(x))
    assert delta == choose_decision_shift(auto.classifier_logits(x), log_freq.double(),
                                          shares=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(auto.predict_proba(x), torch.softmax(
            auto.classifier_logits(x) - delta * log_freq, -1))
    # state: the chosen δ travels with the state dict; the config's number is not replaced
    again = MultimodalM2(auto.config)
    again.load_state_dict(auto.state_dict())
    assert float(again.q.decision_shift) == pytest.approx(delta)
    assert fixed.calibrate_decision_shift(fixed.classifier_logits(x)) == pytest.approx(0.7)
    # a state saved with another number (e.g. a checkpoint resumed with a new decision_shift)
    # predicts with the config's
    other = MultimodalM2(fixed.config.replace(decision_shift=0.2))
    other.load_state_dict(fixed.state_dict())
    assert other.q.prediction_shift() == 0.2 and float(other.q.decision_shift) == pytest.approx(0.2)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    y_true = np.repeat(np.arange(3), [40, 15, 5])
    x = 2.0 * rng.normal(size=(3, 5))[y_true] + rng.normal(size=(60, 5))
    y = np.full(60, -1)
    for k in range(3):
        y[np.flatnonzero(y_true == k)[:max(2, (y_true == k).sum() // 4)]] = k
    return {"a": x[:, :3], "b": x[:, 3:]}, y


def test_the_estimator_chooses_delta_on_its_unlabelled_rows_and_keeps_it(blobs, tmp_path):
    X, y = blobs
    est = MultimodalSemiSupervisedClassifier(**SMALL, **LABELLED, progress=False,
                                             decision_shift="auto").fit(X, y)
    data = est.prepare(X, y)
    m2 = est.model_
    logits = classifier_logits(m2, data.unlabelled())
    log_freq = np.log(est.label_counts_ / est.label_counts_.sum())
    expected = choose_decision_shift(logits, log_freq, shares=0.5)
    assert est.decision_shift_ == pytest.approx(expected)
    all_logits = classifier_logits(m2, data).double()
    np.testing.assert_allclose(est.predict_proba(X), torch.softmax(
        all_logits - float(m2.q.decision_shift) * torch.tensor(log_freq), -1).numpy(),
        atol=1e-5)
    path = tmp_path / "est.pt"
    save_estimator(est, path)
    loaded = load_estimator(path)
    assert loaded.decision_shift_ == est.decision_shift_
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    # a number is used as given (the default 1.5); without unlabelled rows auto chooses 0
    assert MultimodalSemiSupervisedClassifier(**SMALL, progress=False).fit(
        X, y).decision_shift_ == 1.5
    fixed = MultimodalSemiSupervisedClassifier(**SMALL, progress=False,
                                               decision_shift=-0.4).fit(X, y)
    assert fixed.decision_shift_ == pytest.approx(-0.4)
    labelled = y >= 0
    only = MultimodalSemiSupervisedClassifier(**SMALL, progress=False,
                                              decision_shift="auto").fit(
        {m: v[labelled] for m, v in X.items()}, y[labelled])
    assert only.decision_shift_ == 0.0


def test_a_file_saved_before_the_decision_shift_predicts_as_trained(blobs, tmp_path):
    X, y = blobs
    est = MultimodalSemiSupervisedClassifier(**SMALL, progress=False).fit(X, y)
    path = tmp_path / "old.pt"
    save_estimator(est, path)
    state = torch.load(path, weights_only=True)
    del state["params"]["decision_shift"], state["params"]["decision_shares"]
    del state["config"]["decision_shift"], state["config"]["decision_shares"]
    for member in state["members"]:
        del member["q.decision_shift"]
    torch.save(state, path)
    old = load_estimator(path)
    assert old.decision_shift == 0.0 and old.decision_shift_ == 0.0
    assert old.config_.decision_shift == 0.0
    as_trained = torch.softmax(classifier_logits(old.model_, old.prepare(X)), -1).numpy()
    np.testing.assert_allclose(old.predict_proba(X), as_trained, atol=1e-6)


def _trained_by_hand(blobs, config=(), **options):
    """A model with decision_shift="auto" along π̂ (or ``config``'s settings) trained by the
    library's Pyro-level loop on the blobs: (model, data, history)."""
    import pyro

    from pyro_mmt.estimator import make_objective
    from pyro_mmt.training import default_optimizer, train

    X, y = blobs
    data = MultimodalDataset(X, y)
    settings = {"decision_shift": "auto", **LABELLED, **dict(config)}
    m2 = MultimodalM2(ModelConfig(data.dims, data.num_classes, label_counts=data.class_counts(),
                                  hidden=(8,), latent_dim=2, **settings))
    pyro.clear_param_store()
    with pyro.get_param_store().scope():
        history = train(m2.model, m2.guide, data, objective=make_objective("kl"),
                        optimizer=default_optimizer(), batch_size=16, progress=False, **options)
    return m2, data, history


def test_pyro_level_train_calibrates_as_the_estimator_does(blobs):
    m2, data, _ = _trained_by_hand(blobs, epochs=1)
    chosen = float(m2.q.decision_shift)
    unlabelled = data.unlabelled()
    by_hand = choose_decision_shift(m2.classifier_logits(unlabelled.x, unlabelled.mask),
                                    np.log(data.class_counts() / data.class_counts().sum()),
                                    shares=0.5)
    assert chosen == pytest.approx(by_hand)
    assert calibrate_decision_shift(m2, data) == pytest.approx(chosen)


def test_auto_is_chosen_once_per_member_after_averaging(blobs, monkeypatch):
    """The estimator chooses δ once per member, after training (from the averaged weights);
    train() leaves it to the caller with choose_decision_shift=False."""
    from pyro_mmt.guides import PoETGuide

    calls = []
    original = PoETGuide.calibrate_decision_shift
    monkeypatch.setattr(PoETGuide, "calibrate_decision_shift",
                        lambda self, logits: calls.append(self) or original(self, logits))
    X, y = blobs
    est = MultimodalSemiSupervisedClassifier(**{**SMALL, "n_init": 2}, progress=False,
                                             decision_shift="auto").fit(X, y)
    assert calls == [m2.q for m2 in est.members_]
    calls.clear()
    m2, _, _ = _trained_by_hand(blobs, epochs=1, choose_decision_shift=False)
    assert calls == [] and math.isnan(float(m2.q.decision_shift))


def test_a_learned_class_prior_is_the_target_of_auto():
    counts = (6, 3, 1)
    log_freq = torch.log(torch.tensor(counts, dtype=torch.float64) / 10)
    m2 = MultimodalM2(ModelConfig({"a": 3}, 3, hidden=(4,), label_counts=counts,
                                  class_prior="learned", decision_shift="auto",
                                  decision_shares=1.0, **LABELLED))
    logits = torch.randn(50, 3)
    m2.update_class_prior(logits)
    target = m2.class_log_prior.double()
    assert not torch.allclose(target, log_freq)  # the EM moved π away from the counts
    assert m2.calibrate_decision_shift(logits) == choose_decision_shift(
        logits, log_freq, target_log_prior=target, shares=1.0)


def test_an_ensemble_shifts_its_averaged_q_by_one_delta_chosen_on_it(blobs):
    """n_init = 2, "auto": δ is the rule applied to log q̄(y | x) = log of the members' mean
    softmax(f) on the unlabelled rows, and the prediction is softmax(log q̄ − δ log π̂)."""
    X, y = blobs
    est = MultimodalSemiSupervisedClassifier(**{**SMALL, "n_init": 2}, **LABELLED,
                                             progress=False, decision_shift="auto").fit(X, y)
    log_freq = torch.log(torch.tensor(est.label_counts_ / est.label_counts_.sum()))

    def mean_q(data):  # the members' q(y | x) averaged, by hand
        return np.mean([torch.softmax(classifier_logits(m2, data).double(), -1).numpy()
                        for m2 in est.members_], 0)

    data = est.prepare(X, y)
    by_hand = choose_decision_shift(torch.tensor(np.log(mean_q(data.unlabelled()))),
                                    log_freq, shares=0.5)
    assert [m2.q.prediction_shift() for m2 in est.members_] == pytest.approx([by_hand] * 2)
    assert est.decision_shift_ == pytest.approx(by_hand)
    expected = torch.softmax(torch.tensor(np.log(mean_q(est.prepare(X))))
                             - by_hand * log_freq, -1).numpy()
    np.testing.assert_allclose(est.predict_proba(X), expected, atol=1e-6)
    # a number: the same shift of the averaged q̄
    fixed = MultimodalSemiSupervisedClassifier(**{**SMALL, "n_init": 2}, **LABELLED,
                                               progress=False, decision_shift=0.6).fit(X, y)
    q_bar = np.mean([torch.softmax(classifier_logits(m2, fixed.prepare(X)).double(), -1).numpy()
                     for m2 in fixed.members_], 0)
    np.testing.assert_allclose(fixed.predict_proba(X), torch.softmax(
        torch.tensor(np.log(q_bar)) - 0.6 * log_freq, -1).numpy(), atol=1e-6)


def test_validation_during_training_scores_an_uncalibrated_auto_as_trained(blobs):
    X, y = blobs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "not been calibrated" warning per epoch
        _, _, history = _trained_by_hand(blobs, epochs=2,
                                         validation=MultimodalDataset(X, y).labelled())
    assert "val_balanced_accuracy" in history


# ---------------------------------------------------------------- the predicted reference


def test_reference_shares_are_the_mean_prediction_with_a_pseudo_count():
    from pyro_mmt.decision import reference_log_shares

    rng = np.random.default_rng(3)
    proba = rng.dirichlet(np.ones(4), size=25)
    log_p = torch.tensor(np.log(proba))
    np.testing.assert_allclose(reference_log_shares(log_p, pseudo_count=0).numpy(),
                               np.log(proba.mean(0)), rtol=1e-12)
    np.testing.assert_allclose(reference_log_shares(log_p).numpy(),  # one pseudo-count per class
                               np.log((proba.sum(0) + 1) / (25 + 4)), rtol=1e-12)
    # no rows: uniform (the shift then does nothing)
    np.testing.assert_allclose(reference_log_shares(torch.zeros(0, 4)).numpy(), np.log(0.25))
    # a class no row gives any mass in float64 terms: still finite (a log-sum-exp)
    tiny = torch.tensor([[0.0, -800.0], [0.0, -900.0]], dtype=torch.float64)
    assert reference_log_shares(tiny, pseudo_count=0)[1].item() == pytest.approx(
        -800.0 + math.log1p(math.exp(-100)) - math.log(2))
    with pytest.raises(ValueError, match=r"log_proba: .*at least one row"):
        reference_log_shares(torch.zeros(0, 3), pseudo_count=0)
    with pytest.raises(ValueError, match="log_proba: .*NaN"):
        reference_log_shares(torch.tensor([[math.nan, 0.0]]))
    with pytest.raises(ValueError, match="pseudo_count: .*found -1"):
        reference_log_shares(log_p, pseudo_count=-1)


def test_the_predicted_reference_is_learned_after_training_and_is_state():
    counts = (6, 3, 1)
    x = {"a": torch.randn(9, 3)}
    unlabelled = {"a": torch.randn(20, 3)}
    m2 = MultimodalM2(ModelConfig({"a": 3}, 3, hidden=(4,), label_counts=counts))
    assert m2.config.decision_reference == "predicted" and m2.config.decision_shift == 1.5
    assert not m2.q.calibrated
    with pytest.warns(UserWarning, match="not been calibrated"):
        proba = m2.predict_proba(x)
    torch.testing.assert_close(proba, torch.softmax(m2.classifier_logits(x), -1))
    with pytest.raises(ValueError, match="logit_adjustment: .*not calibrated"):
        m2.predict_proba(x, logit_adjustment=1.0)
    logits = m2.classifier_logits(unlabelled)
    assert m2.calibrate_decision_shift(logits) == 1.5
    shares = (torch.softmax(logits.double(), -1).sum(0) + 1) / (20 + 3)  # by hand
    torch.testing.assert_close(m2.q.decision_log_shares.double(), shares.log())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(m2.predict_proba(x), torch.softmax(
            m2.classifier_logits(x) - 1.5 * shares.log().float(), -1))
    # the shares travel with the state dict; a state without them is not calibrated
    again = MultimodalM2(m2.config)
    again.load_state_dict(m2.state_dict())
    torch.testing.assert_close(again.predict_proba(x), m2.predict_proba(x))
    state = {k: v for k, v in m2.state_dict().items() if not k.endswith("decision_log_shares")}
    old = MultimodalM2(m2.config)
    old.load_state_dict(state)
    assert not old.q.calibrated
    # δ = 0 has nothing to learn
    plain = MultimodalM2(m2.config.replace(decision_shift=0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(plain.predict_proba(x),
                                   torch.softmax(plain.classifier_logits(x), -1))


def test_auto_moves_along_the_predicted_reference():
    m2 = MultimodalM2(ModelConfig({"a": 3}, 3, hidden=(4,), label_counts=(6, 3, 1),
                                  decision_shift="auto"))
    logits = torch.randn(40, 3)
    delta = m2.calibrate_decision_shift(logits)
    log_ref = ((torch.softmax(logits.double(), -1).sum(0) + 1) / (40 + 3)).log()
    log_freq = torch.log(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64))
    assert delta == choose_decision_shift(logits, log_ref, target_log_prior=log_freq, shares=0.5)


def test_the_estimator_shifts_its_averaged_q_along_its_mean_prediction(blobs, tmp_path):
    """The defaults' rule, n_init = 2: r = the members' averaged q̄(y | x) summed over the
    unlabelled rows with one pseudo-count per class, normalised, and the prediction is
    softmax(log q̄ − 1.5 log r); saved and loaded exactly; without unlabelled rows r is uniform
    and the prediction q̄ itself."""
    X, y = blobs
    est = MultimodalSemiSupervisedClassifier(**{**SMALL, "n_init": 2}, progress=False).fit(X, y)
    assert est.decision_shift_ == 1.5

    def mean_q(data):  # the members' q(y | x) averaged, by hand
        return np.mean([torch.softmax(classifier_logits(m2, data).double(), -1).numpy()
                        for m2 in est.members_], 0)

    q_unlabelled = mean_q(est.prepare(X, y).unlabelled())
    shares = (q_unlabelled.sum(0) + 1) / (len(q_unlabelled) + 3)
    np.testing.assert_allclose(est.reference_shares_, shares, rtol=1e-5)
    expected = torch.softmax(torch.tensor(np.log(mean_q(est.prepare(X)))
                                          - 1.5 * np.log(shares)), -1).numpy()
    np.testing.assert_allclose(est.predict_proba(X), expected, atol=1e-5)
    path = tmp_path / "est.pt"
    save_estimator(est, path)
    loaded = load_estimator(path)
    np.testing.assert_array_equal(loaded.reference_shares_, est.reference_shares_)
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    labelled = y >= 0
    only = MultimodalSemiSupervisedClassifier(**SMALL, progress=False).fit(
        {m: v[labelled] for m, v in X.items()}, y[labelled])
    np.testing.assert_allclose(only.reference_shares_, np.full(3, 1 / 3), rtol=1e-6)
    np.testing.assert_allclose(only.predict_proba(X), np.mean(
        [torch.softmax(classifier_logits(m2, only.prepare(X)).double(), -1).numpy()
         for m2 in only.members_], 0), atol=1e-6)


def test_a_file_saved_with_the_labelled_reference_keeps_it(blobs, tmp_path):
    """A file saved before the reference was a setting shifted along π̂: it still does."""
    X, y = blobs
    est = MultimodalSemiSupervisedClassifier(**SMALL, **LABELLED, decision_shift=0.5,
                                             progress=False).fit(X, y)
    path = tmp_path / "old.pt"
    save_estimator(est, path)
    state = torch.load(path, weights_only=True)
    del state["params"]["decision_reference"], state["config"]["decision_reference"]
    for member in state["members"]:
        del member["q.decision_log_shares"]
    torch.save(state, path)
    old = load_estimator(path)
    assert old.decision_reference == "labelled" and old.config_.decision_reference == "labelled"
    np.testing.assert_array_equal(old.predict_proba(X), est.predict_proba(X))


def test_pyro_level_train_learns_the_predicted_reference(blobs):
    """The design card's way: a MultimodalM2 with the config's defaults trained with
    pyro_mmt.training.train predicts with the defaults' rule, learned at the end of train."""
    m2, data, _ = _trained_by_hand(blobs, config={"decision_reference": "predicted",
                                                  "decision_shift": 1.5}, epochs=1)
    unlabelled = data.unlabelled()
    logits = m2.classifier_logits(unlabelled.x, unlabelled.mask).double()
    torch.testing.assert_close(m2.q.decision_log_shares.double(), (
        (torch.softmax(logits, -1).sum(0) + 1) / (len(logits) + data.num_classes)).log())
    m2b, _, _ = _trained_by_hand(blobs, config={"decision_reference": "predicted",
                                                "decision_shift": 1.5}, epochs=1,
                                 choose_decision_shift=False)
    assert not m2b.q.calibrated


def test_dividing_by_the_mean_prediction_recovers_the_balanced_bayes_rule():
    """docs/derivation.md §13, float64: a classifier calibrated to the unlabelled rows' class
    proportions π (unknown to the rule), q(y | x) = π_y p(x | y) / p(x), has the mean
    prediction r = π over those rows (by quadrature), so q / r ∝ p(x | y), the Bayes rule for a
    class-balanced test set; reference_log_shares on rows drawn by stratified quantiles of p(x)
    gets r within 1e-3, and the shift δ = 1 along it gives the balanced rule's balanced accuracy
    (by quadrature), which the classifier as trained (δ = 0) does not."""
    from scipy import integrate, optimize, stats

    from pyro_mmt.decision import reference_log_shares

    pi, mu = np.array([0.7, 0.2, 0.1]), np.array([-1.5, 0.0, 1.5])

    def log_lik(x):  # log p(x | y), [len(x), 3]
        return stats.norm.logpdf(np.asarray(x, dtype=np.float64)[:, None], mu)

    def log_q(x):  # calibrated to π
        joint = log_lik(x) + np.log(pi)
        return joint - np.logaddexp.reduce(joint, axis=1, keepdims=True)

    def density(x):
        return float(np.exp(np.logaddexp.reduce(log_lik([x])[0] + np.log(pi))))

    r = [integrate.quad(lambda x, y=y: density(x) * math.exp(log_q([x])[0, y]), -np.inf, np.inf,
                        epsabs=0, epsrel=1e-12)[0] for y in range(3)]
    np.testing.assert_allclose(r, pi, rtol=1e-9)

    # rows: the mixture's quantiles at (n - 1/2) / N
    def cdf(x):
        return float(pi @ stats.norm.cdf(x, mu))

    rows = np.array([optimize.brentq(lambda x, u=u: cdf(x) - u, -12, 12, xtol=1e-13)
                     for u in (np.arange(4000) + 0.5) / 4000])
    log_r = reference_log_shares(torch.tensor(log_q(rows)), pseudo_count=0).numpy()
    np.testing.assert_allclose(np.exp(log_r), pi, atol=1e-3)

    def balanced_accuracy(shift):  # mean over classes of P(argmax = y | y), midpoint rule
        recalls = []
        for y in range(3):
            edges = np.linspace(mu[y] - 9, mu[y] + 9, 72001)
            mid = 0.5 * (edges[1:] + edges[:-1])
            correct = np.argmax(log_q(mid) - shift, axis=1) == y
            recalls.append((stats.norm.pdf(mid, mu[y]) * correct).sum() * (edges[1] - edges[0]))
        return np.mean(recalls)

    bayes = balanced_accuracy(np.log(pi))  # argmax p(x | y): q / π
    assert balanced_accuracy(log_r) == pytest.approx(bayes, abs=2e-3)
    assert balanced_accuracy(np.zeros(3)) < bayes - 0.05
