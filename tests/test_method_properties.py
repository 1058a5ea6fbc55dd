"""Shared property tests over every registered method: jit = eager, batch = loop, chunked =
unchunked, batch_size slices = one call, shape/dtype/finite, keys; 8-device sharding = 1 device
for one method of each kind."""

import os
import subprocess
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxplain
from jaxplain import baselines
from tests import compare
from jaxplain.engine.runner import prepare, resolved
from jaxplain.registry import METHODS, resolve, settings_of
from tests.method_settings import KEYED_DRAWS, RANDOM_BASE, TRANSFORMER, expected_shape, images, settings_for

pytestmark = pytest.mark.usefixtures("quick_threefry")  # random programs compile about 2x faster; all sides draw alike

NAMES = sorted(METHODS)
CHUNKED = [n for n in NAMES if "chunk" in settings_of(METHODS[n])]
RTOL = 1e-5  # float32; reordered sums (chunks, batches) differ in the last bits


def close(a, b, rtol=RTOL):
    compare.close(a, b, rtol)


class Zoo(NamedTuple):
    """The models the property tests run on: the tiny VGG, and the tiny ViT for the methods that
    need attention layers (``TRANSFORMER``)."""

    cnn: jaxplain.Model
    vit: jaxplain.Model

    def of(self, name: str) -> jaxplain.Model:
        return self.vit if name in TRANSFORMER else self.cnn


@pytest.fixture(scope="module")
def data(tiny_model, tiny_vit):
    x = images()
    targets = np.array([1, 4, 7])
    return Zoo(tiny_model, tiny_vit), x, targets


class _Lazy(dict):
    """explain() on the batch per method, computed the first time a test asks for it (a part of
    this module that runs on its own computes only the methods its tests use)."""

    def __init__(self, data):
        super().__init__()
        self.data = data

    def __missing__(self, name):
        m, x, t = self.data
        self[name] = jaxplain.explain(m.of(name), x, t, name, **settings_for(name, x))
        return self[name]


@pytest.fixture(scope="module")
def reference(data):
    """explain() on the batch, per method, computed once (on first use)."""
    return _Lazy(data)


def _direct(m, x, t, name, jit, s):
    """The per-image method called by hand, in a Python loop, with explain's per-image keys
    (jitted: compiled once, the key an argument)."""
    fn = METHODS[name]
    s = resolve(fn, dict(s))  # a wrapper's base by name -> its function, as explain does
    key = s.pop("key", None)

    def call(p, v, tt, k):
        return fn(m.apply, p, v, tt, **(dict(s, key=k) if k is not None else s))

    call = jax.jit(call) if jit else call
    named = baselines.named(key, fn, s) if key is not None else None  # baselines' key policy
    keys = [jax.random.fold_in(named, i) if key is not None else None for i in range(len(x))]
    return np.stack([call(m.params, jnp.asarray(v), jnp.int32(tt), k) for v, tt, k in zip(x, t, keys)])


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_finite(data, reference, name):
    _, x, _ = data
    a = reference[name]
    assert a.shape == expected_shape(name, x.shape) and a.dtype == jnp.float32
    assert np.isfinite(np.asarray(a)).all() and np.abs(np.asarray(a)).max() > 0


@pytest.mark.parametrize("name", NAMES)
def test_batch_equals_loop_and_jit_equals_eager(data, reference, name):
    m, x, t = data
    m = m.of(name)
    s = settings_for(name, x)
    jitted = _direct(m, x[:2], t[:2], name, True, s)
    close(reference[name][:2], jitted)
    # Eager runs op by op: one image, and one chunk (chunked = unchunked is tested below).
    eager = _direct(m, x[:1], t[:1], name, False, dict(s, chunk=None) if name in CHUNKED else s)
    close(jitted[:1], eager)


@pytest.fixture(scope="module")
def unchunked(data):
    """explain() with chunk=None (one chunk: no loop of any kind), per method, computed on demand."""
    m, x, t = data
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = jaxplain.explain(m.of(name), x, t, name, **dict(settings_for(name, x), chunk=None))
        return cache[name]

    return get


# The host loop (the CPU default) runs for every chunked method; scan and unroll, which share
# sum_chunks' code path, for one method of each kind of sum: a path (IG), two keyed statistics
# (VarGrad), windows (occlusion), activation masks (Score-CAM).
LOOPS = [("host", n) for n in CHUNKED] + [(loop, n) for loop in ("unroll", "scan")
                                          for n in ("integrated_gradients", "vargrad", "occlusion", "score_cam")]


@pytest.mark.parametrize("loop, name", LOOPS)
def test_chunked_equals_unchunked(data, unchunked, name, loop, monkeypatch):
    m, x, t = data
    m = m.of(name)
    s = settings_for(name, x)
    whole = unchunked(name)
    monkeypatch.setenv("JAXPLAIN_CHUNK_LOOP", loop)
    call = prepare(METHODS[name], m, jnp.asarray(x), resolved(METHODS[name], m, jnp.asarray(x), s)).call
    assert bool(call.starts) == (loop == "host")  # the host loop really loops over chunks
    close(jaxplain.explain(m, x, t, name, **s), whole)


def test_host_loop_donates_the_running_total(data, monkeypatch):
    m, x, t = data
    m = m.cnn
    monkeypatch.setenv("JAXPLAIN_CHUNK_LOOP", "host")
    prep = prepare(METHODS["smoothgrad"], m, jnp.asarray(x), resolved(METHODS["smoothgrad"], m, jnp.asarray(x), settings_for("smoothgrad", x)))
    args = (m.params, jnp.asarray(x), jnp.asarray(t, jnp.int32), prep.keys, prep.per_image, prep.shared)
    acc = prep.call.first(*args)
    out = prep.call.mid(*args, acc, jnp.int32(3))
    assert all(a.is_deleted() for a in jax.tree.leaves(acc))  # its buffers now hold the new total
    assert not any(a.is_deleted() for a in jax.tree.leaves(out))


@pytest.mark.parametrize("name", NAMES)
def test_batch_size_slices_equal_one_call(data, reference, name):
    """Every method agrees to 1e-5 whatever its calls' sizes, except the one whose path is chosen
    from gradients (``PATH_CHOSEN``, below): a call of another size (the last slice is padded only
    to a power of two) blocks the convolutions otherwise, which can reorder two nearly equal
    features; for it the sums and the correlation are checked, as across devices."""
    m, x, t = data
    got = jaxplain.explain(m.of(name), x, t, name, batch_size=2, **settings_for(name, x))
    if name in PATH_CHOSEN:
        path_chosen_close(got, reference[name])
    else:
        close(got, reference[name])


@pytest.mark.parametrize("name", [n for n in NAMES if "key" in settings_of(METHODS[n])])
def test_keys(data, reference, name):
    m, x, t = data
    m = m.of(name)
    s = settings_for(name, x)
    if "baseline" in settings_of(METHODS[name]) and name not in KEYED_DRAWS:  # the key only matters for a random
        # baseline (RISE draws its masks, LIME and KernelSHAP their coalitions, from the key whatever the baseline)
        s["baseline"] = "uniform"
        reference = {name: jaxplain.explain(m, x, t, name, **s)}
    if name in RANDOM_BASE:
        s.update(RANDOM_BASE[name])
        reference = {name: jaxplain.explain(m, x, t, name, **s)}
    np.testing.assert_array_equal(jaxplain.explain(m, x, t, name, **s), reference[name])
    other = jaxplain.explain(m, x, t, name, **dict(s, key=jax.random.key(8)))
    assert not np.allclose(other, reference[name])


SHARDED = r"""
import os, sys, numpy as np, jax
sys.path.insert(0, os.getcwd())
import jaxplain
from jaxplain.engine.runner import prepare
from tests.conftest import tiny_pair
from tests.method_settings import expected_shape, images, settings_for
assert len(jax.devices()) == 8, jax.devices()
m = tiny_pair(seed=1)[1]
x = images()
out = {n: np.asarray(jaxplain.explain(m, x, np.array([1, 4, 7]), n, **settings_for(n, x))) for n in sys.argv[2:]}
np.savez(sys.argv[1], **out)
"""


# Sharding lives in explain, not in the methods: one method for each way a method meets it. A plain
# gradient; a modified backward pass; chunked sums in the host loop; per-image keys with two running
# statistics; an array setting shared by all images; a layer-shaped result; a [B, H, W] map; windows;
# keyed masks; a path chosen from gradients.
SHARDED_METHODS = ["gradient", "guided_backprop", "integrated_gradients", "vargrad", "expected_gradients",
                   "layer_integrated_gradients", "grad_cam", "occlusion", "rise", "guided_ig"]

# Guided IG picks its path by ranking gradients at every step. One device per image changes the
# convolution's blocking and so the last bits of a gradient, which can reorder two nearly equal
# features and move the path (measured: 1 image in 3 moved, correlation 0.997, sums within 0.7%).
# For it we check the sum and the correlation; every other method must agree to 1e-5.
PATH_CHOSEN = {"guided_ig"}


def path_chosen_close(a, b) -> None:
    """Guided IG's agreement: per-image sums within 2%, correlation above 0.99."""
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a.sum((1, 2, 3)), b.sum((1, 2, 3)), rtol=0.02)
    assert min(np.corrcoef(u.ravel(), v.ravel())[0, 1] for u, v in zip(a, b)) > 0.99


def test_sharded_over_8_devices_equals_one(reference, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    out = tmp_path / "sharded.npz"
    r = subprocess.run([sys.executable, "-c", SHARDED, str(out), *SHARDED_METHODS], env=env, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(out)
    assert sorted(got.files) == sorted(SHARDED_METHODS)
    bad = []
    for n in SHARDED_METHODS:
        try:
            if n in PATH_CHOSEN:
                path_chosen_close(got[n], reference[n])
            else:
                close(got[n], reference[n])
        except AssertionError as e:
            bad.append((n, e))
    assert not bad, bad


def test_second_call_does_not_retrace(data):
    m, x, t = data
    m = m.cnn
    traces = []

    def counting(apply, params, v, target):
        traces.append(1)
        return jaxplain.gradient(apply, params, v, target)

    a = jaxplain.explain(m, x, t, counting)
    b = jaxplain.explain(m, x + 1, t, counting)
    assert len(traces) == 1 and not np.allclose(a, b)
    jaxplain.explain(m, x[:2], t[:2], counting)  # a new shape compiles once more
    assert len(traces) == 2
