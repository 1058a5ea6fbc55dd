"""Shared fixtures: strict dtype promotion, a private weight cache, tiny and full VGG references, a tiny ViT."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")

from jaxplain.models import VGGConfig, build  # noqa: E402
from jaxplain.models import ViTConfig as VITConfig  # noqa: E402
from jaxplain.models.vit import build as build_vit, random_params as vit_params  # noqa: E402

TINY = VGGConfig(blocks=(1, 1, 2), widths=(4, 8, 8), fc=16, classes=10, grid=2,
                 head="torchvision", name="tiny")


def compiles_of(name: str, run) -> tuple[object, int]:
    """``run()`` and the number of XLA compilations of programs whose name contains ``name`` it caused."""
    from jax._src import dispatch, monitoring

    seen = []

    def listen(event, duration, **kw):
        if event == dispatch.BACKEND_COMPILE_EVENT and name in str(kw.get("fun_name", "")):
            seen.append(kw["fun_name"])

    monitoring.register_event_duration_secs_listener(listen)
    try:
        return run(), len(seen)
    finally:
        monitoring.unregister_event_duration_listener(listen)


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch):
    """Every test gets its own weight cache and no download override."""
    monkeypatch.setenv("JAXPLAIN_HOME", str(tmp_path / "jaxplain-home"))
    monkeypatch.delenv("JAXPLAIN_WEIGHTS_URL", raising=False)


def tiny_pair(seed: int = 0):
    """The tiny VGG in torch and the same weights in jaxplain (through the torchvision importer)."""
    from jaxplain.models import vgg_weights
    from tests.torch_reference import tiny_torch

    net = tiny_torch(seed)
    raw = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    return net, build(TINY, vgg_weights.convert(raw, TINY, "torchvision"), source="torchvision")


@pytest.fixture(scope="session")
def tiny_model():
    """A VGG-shaped model for 32x32 inputs (3 blocks, 10 classes), random weights with O(1) logits."""
    return tiny_pair(seed=1)[1]


TINY_VIT = VITConfig(patch=8, depth=2, width=32, heads=4, mlp=64, classes=10, image_size=32, name="tiny_vit")


@pytest.fixture(scope="session")
def tiny_vit():
    """A ViT-shaped model for 32x32 inputs (2 blocks, a 4x4 grid of 8x8 patches, 10 classes), seeded
    random weights: what the property tests run the attention methods on."""
    return build_vit(TINY_VIT, vit_params(TINY_VIT, seed=1), source="timm")


@pytest.fixture(scope="module")
def pair():
    """The tiny VGG in torch and in jaxplain with the same weights (seed 2), for reference comparisons."""
    return tiny_pair(seed=2)


@pytest.fixture(scope="module")
def xs():
    """Two random 32x32 images for ``pair``."""
    return np.random.default_rng(11).normal(size=(2, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def quick_threefry():
    """Random draws in a module's tests without the partitionable threefry (jax's default), which
    XLA:CPU compiles slowly: 3.5-4.8 s per random program against 0.9-1.0 s, measured on the
    shared 2-core machine. The bits differ; code under test and its references draw alike."""
    with jax.threefry_partitionable(False):
        yield
