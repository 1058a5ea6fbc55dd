"""Shared fixtures: strict dtype promotion, a private weight cache, tiny and full VGG references."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")

from jaxplain.models import VGGConfig, build, random_params  # noqa: E402

TINY = VGGConfig(blocks=(1, 1, 2), widths=(4, 8, 8), fc=16, classes=10, grid=2,
                 head="torchvision", name="tiny")


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """Every test gets its own weight cache and no download override."""
    monkeypatch.setenv("JAXPLAIN_HOME", str(tmp_path / "jaxplain-home"))
    monkeypatch.delenv("JAXPLAIN_WEIGHTS_URL", raising=False)


@pytest.fixture(scope="session")
def tiny_model():
    """A VGG-shaped model for 32x32 inputs (3 blocks, 10 classes), seeded random weights."""
    return build(TINY, random_params(TINY, seed=1), source="torchvision")


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)
