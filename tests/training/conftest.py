"""Fixtures shared by the training tests."""

import pytest

from pyro_mmt.data import Standardiser, load_digits


@pytest.fixture(scope="module")
def data():
    """48 standardised digits (two 32-pixel halves), the first 16 labelled."""
    digits = load_digits()[:48]
    y = digits.y.numpy().copy()
    y[16:] = -1
    return Standardiser().fit_transform(digits.with_labels(y))
