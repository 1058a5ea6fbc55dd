"""Shared fixtures: strict dtype promotion, one compile cache per test session, a private weight
cache, tiny and full VGG references, a tiny ViT."""

import atexit
import contextlib
import os
import shutil
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")

# One persistent XLA compile cache per test session: the first process to import this file (the
# xdist controller, or the only process) makes the folder; the workers and every subprocess a test
# starts (the command line) inherit it through the environment, so a program compiled in one of
# them is read back by the others; the folder goes when the process that made it ends. A folder
# the caller named (JAX_COMPILATION_CACHE_DIR) is used as it is and kept.
_OWN_CACHE = not os.environ.get("JAX_COMPILATION_CACHE_DIR")
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxplain-tests-xla-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", 0)))

from jaxplain.models import VGGConfig, build  # noqa: E402
from jaxplain.models import ViTConfig as VITConfig  # noqa: E402
from jaxplain.models.vit import build as build_vit, random_params as vit_params  # noqa: E402

TINY = VGGConfig(blocks=(1, 1, 2), widths=(4, 8, 8), fc=16, classes=10, grid=2,
                 head="torchvision", name="tiny")


def compiles_of(name: str, run) -> tuple[object, int]:
    """``run()`` and the number of XLA compilations of programs whose name contains ``name`` it caused
    (the persistent compile cache is off meanwhile: a program read back from it is not compiled)."""
    from jax._src import dispatch, monitoring

    seen = []

    def listen(event, duration, **kw):
        if event == dispatch.BACKEND_COMPILE_EVENT and name in str(kw.get("fun_name", "")):
            seen.append(kw["fun_name"])

    monitoring.register_event_duration_secs_listener(listen)
    try:
        with no_persistent_cache():
            return run(), len(seen)
    finally:
        monitoring.unregister_event_duration_listener(listen)


@contextlib.contextmanager
def no_persistent_cache():
    """The persistent compile cache off inside the block, back on after."""
    from jax._src import compilation_cache

    compilation_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
        compilation_cache.reset_cache()


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
    shared 2-core machine. The bits differ; code under test and its references draw alike, and so
    do the subprocesses the module's tests start (``JAX_THREEFRY_PARTITIONABLE=0``)."""
    with jax.threefry_partitionable(False), pytest.MonkeyPatch.context() as mp:
        mp.setenv("JAX_THREEFRY_PARTITIONABLE", "0")
        yield


# Scheduling under ``-n 2 --dist loadfile``: a file is one unit of work, except the files below,
# which are cut into parts that share no module fixture (a part is the tests whose function names
# are listed; the rest of the file is another part). Units start most expensive first, so no long
# file starts last and runs alone: worker seconds measured one file at a time on the shared 2-core
# CPU (load about 10; a unit not listed counts 1 s a test). A stale figure only changes the order,
# never what runs. test_explain, test_cli and test_keras_parity: measured at load 12-13 (97, 85 and 70 s)
# and scaled by 1.5, the ratio of this table to test_method_references measured there.
PARTS = {
    # 131 tests, 1100 s measured in one piece: the tests of keys, of loops and chunks, and the rest
    # (the module's explain() of every method is computed in each part that needs it; a part that
    # starts after another reads those programs back from the session's compile cache).
    "tests/test_method_properties.py": {
        "keys": {"test_keys", "test_sharded_over_8_devices_equals_one"},
        "loops": {"test_chunked_equals_unchunked", "test_host_loop_donates_the_running_total",
                  "test_second_call_does_not_retrace", "test_batch_equals_loop_and_jit_equals_eager"},
    },
}
SECONDS = {
    "tests/test_method_properties.py": 330,
    "tests/test_method_properties.py::keys": 400,
    "tests/test_method_properties.py::loops": 460,
    "tests/test_method_references.py": 415,
    "tests/test_vit.py": 340,
    "tests/test_activation_family.py": 235,
    "tests/test_adapters.py": 260,
    "tests/test_metrics_faithfulness.py": 110,
    "tests/test_explain.py": 145,
    "tests/test_cli.py": 125,
    "tests/test_keras_parity.py": 105,
    "tests/test_keras_adapter.py": 60,
    "tests/test_equinox_adapter.py": 50,
    "tests/test_metric_draws.py": 50,
    "tests/test_any_model.py": 45,
    "tests/test_captum_options.py": 30,
    "tests/test_channels.py": 30,
    "tests/test_neuron_selectors.py": 25,
    "tests/test_lrp.py": 60,
    "tests/test_lrp_zennit.py": 50,
    "tests/test_deeplift.py": 30,
    "tests/test_attn_lrp.py": 25,
    "tests/test_crp.py": 25,
    "tests/test_lrp_positive.py": 17,
    "tests/test_cli_concepts.py": 15,
    "tests/test_run_all.py": 45,
    "tests/test_integrated_tolerance.py": 45,
    "tests/test_xla_cache.py": 20,
}


def _unit(nodeid: str) -> str:
    """The unit of work of a test: its file, or its part of a file cut in ``PARTS``."""
    path, _, rest = nodeid.partition("::")
    name = rest.split("[")[0].split("::")[-1]
    for part, names in PARTS.get(path, {}).items():
        if name in names:
            return f"{path}::{part}"
    return path


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the cuts and the order above; any other mode as xdist has it."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

        def _assign_work_unit(self, node) -> None:
            first = max(self.workqueue, key=lambda u: SECONDS.get(u, len(self.workqueue[u])))
            self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

    return Scheduling(config, log)
