"""The training loop: resume equals an uninterrupted run, safe checkpoints, divergence errors,
validation metrics and early stopping. Tiny networks (hidden (8,), d = 2) on 48 digits."""

import math
import sys

import numpy as np
import pyro
import pytest
import torch

from pyro_mmt.data import Standardiser, load_digits
from pyro_mmt.estimator import build_model, make_objective
from pyro_mmt.evaluation.metrics import classification_metrics
from pyro_mmt.models import MultimodalM2
from pyro_mmt.training.svi import (
    TrainingDivergedError,
    TrainingInterrupted,
    load_checkpoint,
    predict_proba,
    save_checkpoint,
    train,
)


def build(data, seed=0, model_class=MultimodalM2):
    """The model (with its guide) and the modules train() checkpoints, initialised from
    ``seed``."""
    pyro.set_rng_seed(seed)
    m2 = build_model(data.dims, data.num_classes, latent_dim=2, hidden=(8,), alpha=1.0)
    if model_class is not MultimodalM2:
        m2 = model_class(m2.config)
    return m2, {"model": m2}


def fit(m2, data, epochs, lr=1e-2, **kwargs):
    return train(m2.model, m2.guide, data, objective=make_objective(),
                 optimizer=pyro.optim.ClippedAdam({"lr": lr}), epochs=epochs, batch_size=16,
                 seed=3, progress=False, **kwargs)


def weights(modules):
    """Every tensor of the modules' state but the decision rule's reference shares, which are
    learned after training (an epoch's checkpoint is written before)."""
    return {f"{n}.{k}": v.detach().clone() for n, m in modules.items()
            for k, v in m.state_dict().items() if not k.endswith("decision_log_shares")}


def test_resume_gives_the_parameters_of_an_uninterrupted_run(data, tmp_path):
    m2, modules = build(data)
    straight = fit(m2, data, epochs=4, checkpoint_dir=tmp_path / "straight")
    expected = weights(modules)

    pyro.clear_param_store()
    m2, modules = build(data)
    fit(m2, data, epochs=2, checkpoint_dir=tmp_path / "resumed")
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt").epoch == 2

    # a new process: new modules (other initial weights), new optimiser, empty param store
    pyro.clear_param_store()
    m2, modules = build(data, seed=123)
    resumed = fit(m2, data, epochs=4, checkpoint_dir=tmp_path / "resumed",
                  resume=True)
    found = weights(modules)
    assert found.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(found[name], expected[name], rtol=0, atol=1e-6, msg=name)
    assert resumed["epoch"].tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(resumed["loss"], straight["loss"], rtol=1e-6)


def test_resume_from_a_finished_run_changes_nothing(data, tmp_path):
    m2, modules = build(data)
    fit(m2, data, epochs=1, checkpoint_dir=tmp_path)
    before = weights(modules)
    pyro.clear_param_store()
    m2, modules = build(data, seed=1)
    history = fit(m2, data, epochs=1, checkpoint_dir=tmp_path, resume=True)
    assert len(history) == 1
    for name, value in weights(modules).items():
        assert torch.equal(value, before[name])


def test_checkpoint_is_plain_tensors_and_loads_with_weights_only(data, tmp_path):
    m2, modules = build(data)
    fit(m2, data, epochs=1, checkpoint_dir=tmp_path)
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    assert set(state) >= {"modules", "optimizer", "epoch", "history", "rng_state"}
    # one module: the model owns the guide's networks and the classifier
    assert state["epoch"] == 1 and set(state["modules"]) == {"model"}
    assert any(k.startswith("q.classifier.") for k in state["modules"]["model"])

    _, fresh = build(data, seed=7)
    ckpt = load_checkpoint(path, fresh)
    assert ckpt.epoch == 1 and ckpt.history[0]["epoch"] == 1
    for name, value in weights(fresh).items():
        assert torch.equal(value, weights(modules)[name])


def test_the_classifier_is_checkpointed_with_the_model_and_restored_on_resume(data, tmp_path):
    """The classifier is a submodule of the model: it is in ``m2.state_dict()`` and in the
    param store under the model's name, and train(m2.model, m2.guide) checkpoints and
    restores it with the rest."""
    m2, _ = build(data)
    assert any(m is m2.classifier for m in m2.modules())
    classifier_keys = {f"q.classifier.{k}" for k in m2.classifier.state_dict()}
    assert classifier_keys and classifier_keys <= set(m2.state_dict())
    fit(m2, data, epochs=1, checkpoint_dir=tmp_path)
    store = pyro.get_param_store()
    for name, p in m2.classifier.named_parameters():
        assert store.get_param(f"m2$$$q.classifier.{name}").unconstrained() is p
    trained = {k: v.detach().clone() for k, v in m2.classifier.state_dict().items()}
    saved = load_checkpoint(tmp_path / "checkpoint.pt").modules["model"]
    for k, v in trained.items():
        assert torch.equal(saved[f"q.classifier.{k}"], v)

    pyro.clear_param_store()
    fresh, _ = build(data, seed=9)  # other initial weights
    assert any(not torch.equal(v, trained[k]) for k, v in fresh.classifier.state_dict().items())
    fit(fresh, data, epochs=1, checkpoint_dir=tmp_path, resume=True)
    for k, v in fresh.classifier.state_dict().items():
        assert torch.equal(v, trained[k]), k


class NotATensor:
    """Stands for any pickled object that is not a tensor, number, string or container."""


def test_a_checkpoint_holding_other_objects_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"modules": {}, "optimizer": {}, "epoch": 1, "history": [],
                "extra": NotATensor()}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        load_checkpoint(path)


def test_a_checkpoint_for_other_modules_is_refused(data, tmp_path):
    m2, modules = build(data)
    optimizer = pyro.optim.ClippedAdam({"lr": 1e-3})
    save_checkpoint(tmp_path / "c.pt", {"other": m2}, optimizer, 0, [])
    with pytest.raises(ValueError, match="modules"):
        load_checkpoint(tmp_path / "c.pt", modules)
    with pytest.raises(FileNotFoundError, match="no file"):
        load_checkpoint(tmp_path / "absent.pt")


def test_huge_learning_rate_stops_with_epoch_and_step(data):
    m2, _ = build(data)
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step \d+") as info:
        fit(m2, data, epochs=3, lr=1e30)
    assert info.value.epoch == 1 and info.value.step >= 2  # the first step is still finite
    assert info.value.checkpoint is None
    assert "pass checkpoint_dir" in str(info.value)


def test_divergence_keeps_the_last_good_checkpoint(data, tmp_path):
    m2, modules = build(data)
    fit(m2, data, epochs=1, checkpoint_dir=tmp_path)
    good = weights(modules)
    # resume the run with a model that computes NaN
    pyro.clear_param_store()
    m2, _ = build(data, model_class=NaNDecoderModel)
    with pytest.raises(TrainingDivergedError, match="epoch 2, step 1") as info:
        fit(m2, data, epochs=3, checkpoint_dir=tmp_path, resume=True)
    assert info.value.epoch == 2
    assert info.value.checkpoint == tmp_path / "checkpoint.pt"
    assert str(tmp_path / "checkpoint.pt") in str(info.value)
    _, fresh = build(data, seed=5)
    assert load_checkpoint(info.value.checkpoint, fresh).epoch == 1
    for name, value in weights(fresh).items():
        assert torch.equal(value, good[name])


class NaNDecoderModel(MultimodalM2):
    """A model whose decoders return NaN (a bug a user might write)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for decoder in self.decoders.values():
            decoder.register_forward_hook(lambda module, args, out: out * math.nan)


@pytest.mark.parametrize("validation", [True, False], ids=["validation", "no-validation"])
def test_a_model_computing_nan_stops_with_the_error(data, validation):
    m2, _ = build(data, model_class=NaNDecoderModel)
    with pyro.validation_enabled(validation):
        with pytest.raises(TrainingDivergedError, match="epoch 1, step 1") as info:
            fit(m2, data, epochs=1)
    assert info.value.epoch == 1 and info.value.step == 1


def test_other_errors_are_not_reported_as_divergence(data):
    m2, _ = build(data)
    bad = data.select_modalities(["top"])  # the model expects both halves
    with pytest.raises(ValueError, match="mask"):
        fit(m2, bad, epochs=1)


def test_new_modules_over_a_stale_param_store_are_refused(data):
    m2, _ = build(data)
    fit(m2, data, epochs=1)
    m2, _ = build(data, seed=1)  # no pyro.clear_param_store()
    with pytest.raises(ValueError, match="clear_param_store"):
        fit(m2, data, epochs=1)
    pyro.clear_param_store()
    assert len(fit(m2, data, epochs=1)) == 1


def test_history_validation_metrics_and_early_stopping(data):
    validation = Standardiser().fit(data).transform(load_digits()[48:88])
    m2, modules = build(data)
    history = fit(m2, data, epochs=6, validation=validation, patience=2)
    assert {"epoch", "loss", "loss_labelled", "loss_unlabelled", "seconds",
            "val_balanced_accuracy", "val_accuracy"} <= set(history.columns)
    assert np.isfinite(history["loss"]).all() and 1 <= len(history) <= 6
    best = history["val_balanced_accuracy"].max()
    # stops once the best epoch is `patience` epochs old, and restores its weights
    assert len(history) == 6 or len(history) - history["val_balanced_accuracy"].idxmax() - 1 == 2
    # validation during training scores q(y | x) as trained: the decision rule's shares are
    # learned after training
    proba = predict_proba(m2, validation, logit_adjustment=0.0)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-5)
    found = classification_metrics(validation.y.numpy(), proba.argmax(1))["balanced_accuracy"]
    assert found == pytest.approx(best)


def test_argument_errors(data):
    m2, _ = build(data)
    with pytest.raises(ValueError, match="patience"):
        fit(m2, data, epochs=1, patience=2)
    with pytest.raises(ValueError, match="epochs"):
        fit(m2, data, epochs=-1)
    with pytest.raises(ValueError, match="MultimodalDataset"):
        fit(m2, data.x, epochs=1)


def test_checkpoints_refuse_parameters_outside_the_modules(data, tmp_path):
    m2, _ = build(data)

    def model_with_a_free_parameter(x, mask=None, y=None):
        pyro.param("free_scale", torch.ones(()))
        m2.model(x, mask, y)

    with pytest.raises(ValueError, match=r"also holds \['free_scale'\]"):
        train(model_with_a_free_parameter, m2.guide, data, objective=make_objective(),
              epochs=1, batch_size=16, progress=False, checkpoint_dir=tmp_path,
              modules={"model": m2})


def test_validation_can_be_switched_off_for_a_run():
    """train(validate=False) runs the steps without Pyro's checks and restores the setting."""
    import math

    import pyro.infer
    from pyro.infer.util import is_validation_enabled

    from pyro_mmt.data import load_digits
    from pyro_mmt.estimator import build_model
    from pyro_mmt.training.svi import train

    data = load_digits()[:60].with_labels([*range(10)] * 3 + [-1] * 30)
    m2 = build_model(data.dims, 10, latent_dim=2, hidden=(8,), nu=math.inf)
    seen = []
    original = m2.model

    def spying_model(*args, **kwargs):
        seen.append(is_validation_enabled())
        return original(*args, **kwargs)

    before = is_validation_enabled()
    history = train(spying_model, m2.guide, data, epochs=1, batch_size=16, progress=False,
                    objective=pyro.infer.TraceEnum_ELBO(max_plate_nesting=1,
                                                        strict_enumeration_warning=False),
                    modules={"model": m2},
                    validate=False)
    assert len(history) == 1 and seen and not any(seen)
    assert is_validation_enabled() == before


def test_training_diverged_error_survives_pickling():
    """Worker processes (parallel fits) send errors back pickled."""
    import pickle

    from pyro_mmt.training.svi import TrainingDivergedError

    error = TrainingDivergedError(3, 7, float("nan"), None, cause="non-finite values")
    again = pickle.loads(pickle.dumps(error))
    assert (again.epoch, again.step, again.cause) == (3, 7, "non-finite values")
    assert str(again) == str(error)


def _interrupt_at(epoch):
    """An on_epoch_end callback that raises KeyboardInterrupt (as Ctrl-C) at ``epoch``."""
    def callback(done):
        if done == epoch:
            raise KeyboardInterrupt
    return callback


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(data, tmp_path):
    """Ctrl-C (a KeyboardInterrupt) in epoch 3: TrainingInterrupted names the checkpoint of
    the 2 complete epochs; resuming repeats epoch 3 and gives the uninterrupted weights."""
    m2, modules = build(data)
    straight = fit(m2, data, epochs=4)
    expected = weights(modules)

    pyro.clear_param_store()
    m2, modules = build(data)
    with pytest.raises(TrainingInterrupted, match="after 2 complete epoch") as info:
        fit(m2, data, epochs=4, checkpoint_dir=tmp_path, on_epoch_end=_interrupt_at(3))
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.epochs_done == 2 and info.value.checkpoint == tmp_path / "checkpoint.pt"
    assert "resume=True" in str(info.value)

    pyro.clear_param_store()
    m2, modules = build(data, seed=99)
    resumed = fit(m2, data, epochs=4, checkpoint_dir=tmp_path, resume=True)
    for name, value in weights(modules).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-6, msg=name)
    np.testing.assert_allclose(resumed["loss"], straight["loss"], rtol=1e-6)


def test_an_interrupt_without_checkpoints_says_so(data):
    m2, _ = build(data)
    with pytest.raises(TrainingInterrupted, match="pass checkpoint_dir") as info:
        fit(m2, data, epochs=2, on_epoch_end=_interrupt_at(1))
    assert info.value.checkpoint is None and info.value.epochs_done == 0


def _checkpoint_lr(path):
    state = torch.load(path, weights_only=True)
    groups = [g for v in state["optimizer"].values() for g in v["param_groups"]]
    return state["lr"], {g["lr"] for g in groups}


def test_resume_with_a_new_learning_rate_uses_it(data, tmp_path):
    """The optimiser's lr at resume wins over the checkpoint's: a huge one diverges at the first
    resumed step, a smaller one is recorded in the checkpoint (moments kept)."""
    m2, _ = build(data)
    fit(m2, data, epochs=1, checkpoint_dir=tmp_path)
    assert _checkpoint_lr(tmp_path / "checkpoint.pt") == (1e-2, {1e-2})

    pyro.clear_param_store()
    m2, _ = build(data)
    with pytest.raises(TrainingDivergedError, match="epoch 2") as info:
        fit(m2, data, epochs=3, lr=1e30, checkpoint_dir=tmp_path, resume=True)
    assert "--resume --lr" in str(info.value)  # the advice says how to lower it
    assert load_checkpoint(tmp_path / "checkpoint.pt").epoch == 1  # the good one is kept

    pyro.clear_param_store()
    m2, _ = build(data)
    history = fit(m2, data, epochs=2, lr=3e-4, checkpoint_dir=tmp_path, resume=True)
    assert history["epoch"].tolist() == [1, 2] and np.isfinite(history["loss"]).all()
    assert _checkpoint_lr(tmp_path / "checkpoint.pt") == (3e-4, {3e-4})
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["optimizer"]
    steps = {int(v["state"][0]["step"]) for v in state.values()}
    assert min(steps) > len(history)  # Adam's step counts carried on from the first run


def test_resume_with_the_fused_optimiser_and_a_new_learning_rate(data, tmp_path):
    from pyro_mmt.training.optim import MultiTensorAdam

    def run(epochs, lr, **kwargs):
        return train(m2.model, m2.guide, data, objective=make_objective(),
                     optimizer=MultiTensorAdam({"lr": lr}), epochs=epochs, batch_size=16,
                     seed=3, progress=False, checkpoint_dir=tmp_path, **kwargs)

    m2, _ = build(data)
    run(1, 1e-2)
    pyro.clear_param_store()
    m2, _ = build(data)
    run(2, 5e-4, resume=True)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["lr"] == 5e-4 and state["optimizer"]["lr"] == 5e-4


class _RecordingBar:
    """Stands in for tqdm: records each bar's arguments and updates."""

    bars = []

    def __init__(self, iterable=None, **kwargs):
        self.iterable, self.kwargs, self.updates, self.resets = iterable, kwargs, 0, 0
        self.desc = kwargs.get("desc", "")
        _RecordingBar.bars.append(self)

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n=1):
        self.updates += n

    def reset(self, total=None):
        self.resets += 1

    def set_description(self, desc, refresh=True):
        self.desc = desc

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


@pytest.mark.parametrize("batch_size, step_bar", [(16, False), (1, True)])
def test_a_second_bar_counts_the_steps_of_long_epochs(data, monkeypatch, batch_size, step_bar):
    """Epochs of more than STEP_BAR_MIN_STEPS steps get a bar over the steps as well."""
    from pyro_mmt.training import svi

    monkeypatch.setattr(svi, "tqdm", _RecordingBar)
    monkeypatch.setattr(svi, "shows_progress", lambda progress: progress)  # as on a terminal
    _RecordingBar.bars = []
    m2, _ = build(data)
    train(m2.model, m2.guide, data, objective=make_objective(), epochs=1,
          batch_size=batch_size, progress=True, desc="init 2/3")
    epochs_bar, steps_bar = _RecordingBar.bars
    assert epochs_bar.kwargs["unit"] == "epoch" and epochs_bar.kwargs["desc"] == "init 2/3"
    assert steps_bar.kwargs["unit"] == "step"
    assert steps_bar.kwargs["disable"] is (not step_bar)
    n_steps = -(-32 // batch_size) * 2  # the 32 unlabelled rows, interleaved with labelled ones
    assert (n_steps > svi.STEP_BAR_MIN_STEPS) is step_bar
    assert steps_bar.updates == n_steps and steps_bar.desc == "init 2/3: epoch 1"


@pytest.mark.parametrize("content, message", [
    (b"", "not a readable torch file"),
    ("hello ünïcode".encode(), "not a readable torch file"),
    (None, "not a readable torch file"),  # a checkpoint cut in half
])
def test_damaged_files_are_refused_naming_the_path(data, tmp_path, content, message):
    from pyro_mmt.training.svi import load_weights

    path = tmp_path / "file.pt"
    if content is None:
        m2, _ = build(data)
        fit(m2, data, epochs=1, checkpoint_dir=tmp_path)
        whole = (tmp_path / "checkpoint.pt").read_bytes()
        content = whole[: len(whole) // 2]
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"^path: .*file.pt is {message}"):
        load_weights(path)
    with pytest.raises(ValueError, match=r"^path: .* is a folder"):
        load_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^path: no file at"):
        load_weights(tmp_path / "absent.pt")


# ------------------------------------------------------------------- issue 14: the hot path
def test_default_optimizer_is_the_fused_adam(data, tmp_path):
    """Without an optimiser, train uses default_optimizer(): one fused Adam with ClippedAdam's
    clamp (its checkpoint state is MultiTensorAdam's), and a run is repeatable."""
    from pyro_mmt.training.optim import STATE_FORMAT, MultiTensorAdam
    from pyro_mmt.training.svi import default_optimizer

    optim = default_optimizer(2e-3)
    assert isinstance(optim, MultiTensorAdam) and optim.clip_value == 10.0
    assert optim.pt_optim_args["lr"] == 2e-3
    runs = []
    for _ in range(2):
        pyro.clear_param_store()
        m2, modules = build(data)
        train(m2.model, m2.guide, data, objective=make_objective(), epochs=2, batch_size=16,
              seed=3, progress=False, checkpoint_dir=tmp_path)
        runs.append(weights(modules))
        state = load_checkpoint(tmp_path / "checkpoint.pt").optimizer
        assert state["format"] == STATE_FORMAT and state["lr"] == 1e-3
    for name, value in runs[0].items():
        assert torch.equal(value, runs[1][name]), name


def test_model_registers_its_module_once_per_svi_step(data, monkeypatch):
    """Under SVI with GammaPowerELBO the guide registers the module and the model does not
    register it again (registered_in_this_run), yet SVI sees and updates every parameter;
    anywhere else the model registers as pyro.module does."""
    from pyro import poutine
    from pyro.infer import SVI, TraceEnum_ELBO

    import pyro_mmt.infer.module_registration as registration
    from pyro_mmt.training.optim import MultiTensorAdam

    m2, _ = build(data)
    calls = []
    real = registration._PYRO_MODULE

    def counting(name, module, *args, **kwargs):
        calls.append(name)
        return real(name, module, *args, **kwargs)

    # Pyro's own registrations (pyro.module, as register_module calls it)
    monkeypatch.setattr(registration, "_PYRO_MODULE", counting)
    batch = data.batch(np.arange(16))
    args = (batch.x, batch.mask, batch.y)
    before = {k: v.detach().clone() for k, v in m2.named_parameters()}
    svi = SVI(m2.model, m2.guide, MultiTensorAdam({"lr": 1e-2}), make_objective())
    with poutine.trace(param_only=True) as captured:
        svi.step(*args)
    assert calls == ["m2"]
    params = {n for n, site in captured.trace.nodes.items() if site["type"] == "param"}
    assert params == {f"m2$$${n}" for n, _ in m2.named_parameters()}
    changed = {n for n, v in m2.named_parameters() if not torch.equal(v, before[n])}
    assert changed == set(before)

    calls.clear()  # TraceEnum_ELBO traces the model in a trace of its own: two registrations
    SVI(m2.model, m2.guide, MultiTensorAdam({"lr": 1e-2}),
        TraceEnum_ELBO(max_plate_nesting=1, strict_enumeration_warning=False)).step(*args)
    assert calls == ["m2", "m2"]
    calls.clear()  # the model alone, under a trace or another handler: it registers
    trace = poutine.trace(m2.model).get_trace(*args)
    assert sum(site["type"] == "param" for site in trace.nodes.values()) == len(before)
    assert calls == ["m2"]
    calls.clear()
    with poutine.trace(param_only=True), poutine.block(hide_types=["sample"]):
        m2.guide(*args)
        m2.model(*args)
    assert calls == ["m2", "m2"]


@pytest.mark.filterwarnings("ignore:.*was not registered in the param store")
def test_train_claims_the_registration_of_earlier_steps(data, monkeypatch):
    """In train, the module is registered through Pyro's handlers at the first step only (later
    steps claim the sites it recorded), with the very parameters of Pyro's own SVI; a
    parameter frozen between epochs (requires_grad=False) makes the claim fail, is registered
    no more and stays as it is, as with Pyro's SVI."""
    import pyro_mmt.infer.module_registration as registration
    from pyro_mmt.training import svi as svi_module

    calls = []
    real = registration._PYRO_MODULE

    def counting(name, module, *args, **kwargs):
        calls.append(name)
        return real(name, module, *args, **kwargs)

    def freeze(m2):
        def on_epoch_end(epoch):
            if epoch == 1:
                m2.decoders["top"].input.weight.requires_grad_(False)
                frozen.append(m2.decoders["top"].input.weight.detach().clone())
        return on_epoch_end

    monkeypatch.setattr(registration, "_PYRO_MODULE", counting)  # Pyro's own registrations
    runs = []
    for svi_class in (svi_module._SVI, pyro.infer.SVI):
        monkeypatch.setattr(svi_module, "_SVI", svi_class)
        pyro.clear_param_store()
        m2, modules = build(data)
        calls.clear()
        frozen = []
        train(m2.model, m2.guide, data, objective=make_objective(), epochs=3, batch_size=16,
              seed=3, progress=False, on_epoch_end=freeze(m2))
        runs.append((weights(modules), len(calls)))
        assert torch.equal(m2.decoders["top"].input.weight, frozen[0])
    (claimed, n_claimed), (stock, n_stock) = runs
    steps = 3 * 4  # 3 epochs of 2 labelled + 2 unlabelled batches
    assert n_stock == steps  # the guide registers, the model finds it registered
    assert n_claimed == 2  # the first step, and the first step after the freeze
    for name, value in stock.items():
        assert torch.equal(value, claimed[name]), name


def test_warmup_weight_is_the_laine_aila_ramp():
    from pyro_mmt.training.svi import warmup_weight

    assert warmup_weight(0.0) == pytest.approx(math.exp(-5.0), rel=1e-15)
    assert warmup_weight(0.5) == pytest.approx(math.exp(-1.25), rel=1e-15)
    assert warmup_weight(1.0) == 1.0 and warmup_weight(7.0) == 1.0
    assert warmup_weight(-1.0) == warmup_weight(0.0)
    grid = [warmup_weight(p) for p in np.linspace(0, 1, 101)]
    assert all(b > a for a, b in zip(grid, grid[1:], strict=False))


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_unlabelled_warmup_scales_the_unlabelled_batches_only(data, fraction, monkeypatch):
    """With a zero learning rate every step sees the same parameters, so the warmed-up run's
    per-batch losses are the plain run's times each unlabelled batch's weight: labelled ones
    unchanged, unlabelled ones by exp(-5 (1 - t / T)^2) at the batch's time t (in epochs),
    T = unlabelled_warmup x epochs (the warm-up is a fraction of the epochs, as in the
    estimator)."""
    import pyro_mmt.training.svi as svi_module
    from pyro_mmt.data import InterleavedLoader
    from pyro_mmt.training.svi import warmup_weight

    original = svi_module._checked_step

    def per_batch(warmup):
        pyro.clear_param_store()
        m2, _ = build(data)
        losses = []

        def record(svi, batch, scale, *args, **kwargs):
            loss = original(svi, batch, scale, *args, **kwargs)
            losses.append((batch.y is None, loss))
            return loss

        monkeypatch.setattr(svi_module, "_checked_step", record)
        history = fit(m2, data, epochs=2, lr=0.0, unlabelled_warmup=warmup)
        return losses, history

    (plain, plain_history), (warmed, warmed_history) = per_batch(0.0), per_batch(fraction)
    ramp_epochs = fraction * 2
    # the history reports the data's objective, not the ramped one
    for column in ("loss", "loss_labelled", "loss_unlabelled"):
        np.testing.assert_allclose(warmed_history[column], plain_history[column], rtol=1e-5)
    n_steps = len(InterleavedLoader(data, 16, seed=3))
    assert len(plain) == len(warmed) == 2 * n_steps
    for i, ((unlabelled, a), (_, b)) in enumerate(zip(plain, warmed, strict=True)):
        epoch, step = divmod(i, n_steps)
        weight = warmup_weight((epoch + step / n_steps) / ramp_epochs) if unlabelled else 1.0
        assert b == pytest.approx(a * weight, rel=1e-5), (i, unlabelled)
    assert any(u for u, _ in plain) and not all(u for u, _ in plain)


@pytest.mark.parametrize("bad", [-1.0, 1.5, float("nan"), float("inf"), True, "1"])
def test_unlabelled_warmup_errors(data, bad):
    m2, _ = build(data)
    with pytest.raises(ValueError, match="unlabelled_warmup"):
        fit(m2, data, epochs=1, unlabelled_warmup=bad)


def test_progress_bars_only_on_a_terminal(monkeypatch):
    """A log file or a pipe gets no progress bars; a terminal (or a notebook) does."""
    import io

    from pyro_mmt.training.svi import shows_progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not shows_progress(True)
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert shows_progress(True) and not shows_progress(False)
