"""One declaration per setting (pyro_mmt/config.py): the estimator's parameters, their checks,
the Pyro-level defaults and `pyro-mmt train`'s options all come from it."""

import dataclasses
import inspect
import math

import pytest

from pyro_mmt.cli import _declared_options, _resolve_per_modality, build_parser, main
from pyro_mmt.config import (
    EstimatorOptions,
    ModelConfig,
    TrainingConfig,
    check_setting,
    default,
    estimator_settings,
    resumable_settings,
)
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier

#: What only the estimator has: how a flat X is read and your own networks (Python objects),
#: and the runtime options: device, threads, jobs, progress, distributed, checkpointing.
INPUTS = {"modalities", "decoders", "encoders"}
RUNTIME = {"device", "n_threads", "n_jobs", "progress", "distributed", "checkpoint_dir", "resume"}
#: The data's shapes and counts, read by fit: fields of ModelConfig, not parameters.
DATA = {"dims", "num_classes", "num_categories", "label_counts"}


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def test_the_estimators_parameters_are_the_config_fields_plus_the_runtime_options():
    params = MultimodalSemiSupervisedClassifier().get_params(deep=False)
    assert _names(EstimatorOptions) == INPUTS | RUNTIME
    assert set(params) == (_names(ModelConfig) - DATA) | _names(TrainingConfig) | INPUTS | RUNTIME
    assert not _names(ModelConfig) & _names(TrainingConfig)
    # the signature scikit-learn reads: keyword-only, each default the declared one
    signature = inspect.signature(MultimodalSemiSupervisedClassifier)
    assert list(signature.parameters) == list(estimator_settings())
    for name, parameter in signature.parameters.items():
        assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
        assert parameter.default == default(estimator_settings()[name]), name
        assert f":param {name}:" in MultimodalSemiSupervisedClassifier.__doc__


def test_the_pyro_level_has_the_estimators_defaults():
    """ModelConfig(dims, K) and TrainingConfig() are the settings the estimator fits with."""
    est = MultimodalSemiSupervisedClassifier()
    config = ModelConfig({"a": 3, "b": 2}, 3, label_counts=[3, 2, 1])
    for name in _names(ModelConfig) - DATA - {"likelihood", "sigma"}:
        assert getattr(config, name) == getattr(est, name), name
    assert config.likelihood == {"a": est.likelihood, "b": est.likelihood}
    assert config.sigma == {"a": est.sigma, "b": est.sigma}
    assert (config.alpha, config.alpha_unit) == (1.5, "dimension")
    assert config.logit_adjustment == config.unlabelled_prior_shift == 1.0
    training = TrainingConfig()
    for name in _names(TrainingConfig):
        assert getattr(training, name) == getattr(est, name), name
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert TrainingConfig.from_dict(training.to_dict()) == training


def test_without_label_counts_the_adjustments_use_a_uniform_frequency():
    """π̂ is uniform without the labelled counts, so τ and τ' have no effect; a balanced class
    weight cannot be made without them."""
    config = ModelConfig({"a": 3}, 3)
    assert config.label_counts is None and config.logit_adjustment == 1.0
    with pytest.raises(ValueError, match="^label_counts: class_weight='balanced'"):
        ModelConfig({"a": 3}, 3, class_weight="balanced")


@pytest.mark.parametrize("name, value", [
    ("nu", 2.0), ("nu", math.nan), ("alpha", -1.0), ("alpha_unit", "row"), ("hidden", ()),
    ("latent_weight", 0.0), ("class_prior", "balanced"), ("likelihood", "beta"),
])
def test_one_check_and_one_message_for_the_config_and_the_estimator(name, value):
    """A bad value gets the same message from ModelConfig and from the estimator's check:
    both run the declared constraint."""
    with pytest.raises(ValueError, match=rf"^{name}: expected") as from_config:
        ModelConfig({"a": 3}, 2, **{name: value})
    with pytest.raises(ValueError, match=rf"^{name}: expected") as from_estimator:
        MultimodalSemiSupervisedClassifier(**{name: value})._check_params()
    assert str(from_config.value) == str(from_estimator.value)


def test_nu_above_two_is_declared_once():
    constraint = ModelConfig.__dataclass_fields__["nu"].metadata["constraint"]
    assert constraint(math.inf) and constraint(2.5) and not constraint(2.0)
    with pytest.raises(ValueError, match="^nu: expected a number > 2"):
        check_setting("nu", 1.0, constraint)
    with pytest.raises(ValueError, match="^learn_nu"):
        ModelConfig({"a": 3}, 2, nu=math.inf, learn_nu=True)
    with pytest.raises(ValueError, match="^learn_nu"):
        MultimodalSemiSupervisedClassifier(nu=math.inf, learn_nu=True)._check_params()


def test_training_config_checks_its_fields_and_their_combination():
    with pytest.raises(ValueError, match="^unlabelled_warmup: expected a fraction"):
        TrainingConfig(unlabelled_warmup=2.0)
    with pytest.raises(ValueError, match="^gamma: the kl objective"):
        TrainingConfig(objective="kl", gamma=-0.1)


def test_the_settings_a_resume_may_change_are_declared():
    assert set(resumable_settings()) == {"lr", "epochs", "n_threads", "n_jobs", "progress",
                                         "checkpoint_dir", "resume", "decoders", "encoders",
                                         "decision_shift", "decision_shares",
                                         "decision_reference"}


def test_train_help_offers_every_parameter(capsys):
    """Every parameter is a `pyro-mmt train` option (generated from its declaration, or the
    hand-written flag its declaration names), except the Python objects."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    python_only = set()
    for name, f in estimator_settings().items():
        cli = f.metadata["cli"]
        if cli is None:
            python_only.add(name)
        else:
            flag = "--" + name.replace("_", "-") if cli == "option" else cli
            assert flag in text, (name, flag)
            if cli == "option":
                assert f.metadata["help"].split()[0] in text, name
    assert python_only == INPUTS
    assert "--likelihood [MODALITY=]LIKELIHOOD" in text and "--prior-shift" in text


def _options(*argv):
    from pyro_mmt.cli import _estimator_options

    return _estimator_options(build_parser().parse_args(["train", "pbc", *argv]))


def test_per_modality_options_resolve_against_the_data():
    modalities = ("liver", "panel", "age", "symptoms", "edema")
    own = {"liver": "student_t", "panel": "student_t", "age": "student_t",
           "symptoms": "bernoulli", "edema": "categorical"}
    # a named data set's own families, unless the command line says otherwise
    assert _resolve_per_modality(_options(), modalities, own)["likelihood"] == own
    resolved = _resolve_per_modality(_options("--likelihood", "edema=student_t"), modalities,
                                     own)
    assert resolved["likelihood"] == dict(own, edema="student_t")
    resolved = _resolve_per_modality(
        _options("--likelihood", "gaussian", "--likelihood", "symptoms=bernoulli"),
        modalities, own)
    assert resolved["likelihood"] == dict.fromkeys(modalities, "gaussian") | {
        "symptoms": "bernoulli"}
    assert _resolve_per_modality(_options("--likelihood", "gaussian"), modalities,
                                 None)["likelihood"] == "gaussian"
    assert "likelihood" not in _resolve_per_modality(_options(), modalities, None)
    resolved = _resolve_per_modality(_options("--sigma", "age=0.5"), modalities, None)
    assert resolved["sigma"] == dict.fromkeys(modalities, 1.0) | {"age": 0.5}
    with pytest.raises(SystemExit, match="--likelihood: unknown modalities"):
        _resolve_per_modality(_options("--likelihood", "eyes=bernoulli"), modalities, own)


def test_bad_options_are_refused_before_any_data_is_read(tmp_path):
    for argv, match in ((["--likelihood", "edema=beta"], "^error: likelihood: expected"),
                        (["--nu", "2"], "^error: nu: expected"),
                        (["--nu", "inf", "--learn-nu"], "^error: learn_nu"),
                        (["--alpha-unit", "row"], "^error: alpha_unit: expected")):
        with pytest.raises(SystemExit, match=match):
            main(["train", "pbc", "--out", str(tmp_path / "run"), *argv])
        assert not (tmp_path / "run").exists()


def test_declared_option_types_read_the_command_line():
    declared = _declared_options()
    args = build_parser().parse_args(
        ["train", "x.npz", "--epochs", "auto", "--gamma", "2x auto", "--class-weight", "none",
         "--labelled-batch-size", "none", "--nu", "inf", "--no-standardise", "--hidden", "8",
         "4", "--threads", "2"])
    assert args.epochs == "auto" and args.gamma == "2x auto" and args.class_weight is None
    assert args.labelled_batch_size is None and math.isinf(args.nu)
    assert args.standardise is False and args.hidden == [8, 4] and args.threads == 2
    assert "likelihood" in declared and "seed" not in declared


@pytest.mark.slow
def test_train_pbc_uses_the_data_sets_own_families(tmp_path):
    """`pyro-mmt train pbc` models the binary symptoms as Bernoulli and the oedema grade as
    categorical (the registry's families), and --likelihood overrides one."""
    from pyro_mmt.data import PBC_LIKELIHOODS
    from pyro_mmt.estimator import load_estimator

    common = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet"]
    assert main(["train", "pbc", "--out", str(tmp_path / "own"), *common]) == 0
    est = load_estimator(tmp_path / "own" / "estimator.pt")
    assert est.config_.likelihood == PBC_LIKELIHOODS
    assert main(["train", "pbc", "--out", str(tmp_path / "t"), "--likelihood",
                 "edema=student_t", *common]) == 0
    est = load_estimator(tmp_path / "t" / "estimator.pt")
    assert est.config_.likelihood == dict(PBC_LIKELIHOODS, edema="student_t")


def test_label_divergence_reaches_the_objective_and_is_refused_with_the_kl():
    """The estimator's label settings build GammaPowerELBO with them (the label under the KL by
    default); a label weight with the kl objective or the joint label divergence is refused."""
    import pytest

    from pyro_mmt.config import TrainingConfig
    from pyro_mmt.estimator import make_objective

    elbo = make_objective("gamma_power", label_divergence="kl", label_weight="auto")
    assert (elbo.label_divergence, elbo.label_weight) == ("kl", "auto")
    assert make_objective().label_divergence == TrainingConfig().label_divergence == "kl"
    assert make_objective(label_divergence="gamma").label_divergence == "gamma"
    with pytest.raises(ValueError, match="label_weight"):
        TrainingConfig(objective="kl", label_weight=2.0)
    with pytest.raises(ValueError, match="label_weight"):
        TrainingConfig(label_divergence="gamma", label_weight=2.0)
    with pytest.raises(ValueError, match="label_weight"):
        TrainingConfig(label_divergence="kl", label_weight=0.0)


def test_presets_are_valid_estimator_settings():
    """Every preset names declared settings with values the declarations accept."""
    from pyro_mmt.estimator import PRESETS, MultimodalSemiSupervisedClassifier

    for name, settings in PRESETS.items():
        clf = MultimodalSemiSupervisedClassifier(**settings)
        clf._check_params()
        assert {k: clf.get_params()[k] for k in settings} == settings, name
