"""The Pyro level behaves like the estimator: ``MultimodalM2(ModelConfig(dims, K,
label_counts=...))`` trained with the library's SVI loop at the estimator's training settings
is the estimator's fit, prediction for prediction."""

import numpy as np
import pyro
import pytest
import torch

from pyro_mmt.config import ModelConfig, TrainingConfig
from pyro_mmt.data import MultimodalDataset, Standardiser
from pyro_mmt.estimator import MultimodalSemiSupervisedClassifier, make_objective
from pyro_mmt.models import MultimodalM2
from pyro_mmt.training import default_optimizer, predict_proba, train

#: Small networks, so that the test is quick; everything else is the defaults.
SIZES = {"hidden": (8,), "latent_dim": 2}


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [40, 30, 20])
    centres = rng.normal(size=(3, 5)) * 2
    x = centres[y] + rng.normal(size=(90, 5))
    X = {"a": x[:, :3], "b": x[:, 3:] * 10 + 3}
    observed = y.copy()
    observed[rng.random(90) < 0.7] = -1
    observed[[0, 40, 70]] = [0, 1, 2]  # every class labelled
    return X, y, observed


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as the estimator's fit (n_threads=1)
    yield
    torch.set_num_threads(before)


def test_a_model_trained_by_hand_predicts_what_the_estimator_predicts(blobs, one_thread):
    X, y, observed = blobs
    # one initialisation: the estimator's ensemble averages n_init such fits (test_estimator)
    training = TrainingConfig(epochs=3, averaging=0.0, n_init=1)
    est = MultimodalSemiSupervisedClassifier(**SIZES, **training.to_dict()).fit(X, observed)

    # by hand: the data standardised on the training rows, the model from its config (the
    # defaults are the estimator's), the library's SVI loop at the same training settings
    data = MultimodalDataset(X, observed)
    scaler = Standardiser().fit(data)
    data = scaler.transform(data)
    pyro.clear_param_store()
    pyro.set_rng_seed(training.seed)
    m2 = MultimodalM2(ModelConfig(data.dims, data.num_classes,
                                  label_counts=data.class_counts(), **SIZES))
    assert m2.config == est.config_
    with pyro.get_param_store().scope():
        train(m2.model, m2.guide, data, objective=make_objective(
                  training.objective, gamma=training.gamma,
                  label_divergence=training.label_divergence),
              optimizer=default_optimizer(training.lr), epochs=training.epochs,
              batch_size=training.batch_size, seed=training.seed, progress=False)
    test = scaler.transform(MultimodalDataset(X, y))
    np.testing.assert_allclose(predict_proba(m2, test), est.predict_proba(X), atol=1e-6)
