"""Results depend on the values of the weights only: after an in-place edit of ``model.params``,
the bfloat16 copy and the copy replicated over devices are made again (they were cached on
``id(model.params)`` and returned the old weights' results)."""

import os
import subprocess
import sys

import jax
import numpy as np

import jaxplain
from jaxplain.engine.derived import derived
from tests.conftest import tiny_pair

X = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)


def _edit(params):
    """Flip the sign of the first convolution, in place in the same dict."""
    params["block1_conv1"]["kernel"] = -params["block1_conv1"]["kernel"]


def test_bfloat16_sees_edited_weights():
    m = tiny_pair(seed=5)[1]
    before = np.asarray(jaxplain.explain(m, X, 1, "gradient", precision="bfloat16"))
    _edit(m.params)
    after = np.asarray(jaxplain.explain(m, X, 1, "gradient", precision="bfloat16"))
    fresh = m.replace(params=jax.tree.map(lambda a: a + 0, m.params))  # new leaves, same values
    np.testing.assert_array_equal(after, np.asarray(jaxplain.explain(fresh, X, 1, "gradient", precision="bfloat16")))
    assert not np.allclose(after, before)


def test_numpy_leaves_edited_in_place_are_never_stale():
    m = tiny_pair(seed=5)[1]
    m = m.replace(params=jax.tree.map(np.array, m.params))  # mutable leaves
    before = np.asarray(jaxplain.explain(m, X, 1, "gradient", precision="bfloat16"))
    m.params["block1_conv1"]["kernel"] *= -1  # the same array object, new values
    after = np.asarray(jaxplain.explain(m, X, 1, "gradient", precision="bfloat16"))
    assert not np.allclose(after, before)


def test_derived_reuses_only_the_same_leaves():
    calls = []
    make = lambda p: calls.append(1) or len(calls)  # noqa: E731
    p = {"a": jax.numpy.ones(3), "b": jax.numpy.zeros(2)}
    assert derived("t", p, make) == derived("t", dict(p), make) == 1  # another dict, the same leaves
    p["a"] = p["a"] + 0  # equal values, a new array: made again (identity of immutable leaves, not hashing)
    assert derived("t", p, make) == 2
    assert derived("t", {"a": np.ones(3)}, make) == 3 and derived("t", {"a": np.ones(3)}, make) == 4  # NumPy: never cached


SHARDED = r"""
import os, sys, numpy as np, jax
sys.path.insert(0, os.getcwd())
import jaxplain
from tests.conftest import tiny_pair
from tests.test_derived import X, _edit
assert len(jax.devices()) == 2, jax.devices()
m = tiny_pair(seed=5)[1]
before = np.asarray(jaxplain.explain(m, X, 1, "gradient"))
_edit(m.params)
after = np.asarray(jaxplain.explain(m, X, 1, "gradient"))
fresh = np.asarray(jaxplain.explain(m.replace(params=jax.tree.map(lambda a: a + 0, m.params)), X, 1, "gradient"))
np.savez(sys.argv[1], before=before, after=after, fresh=fresh)
"""


def test_two_devices_see_edited_weights(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = tmp_path / "r.npz"
    r = subprocess.run([sys.executable, "-c", SHARDED, str(out)], env=env, capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = np.load(out)
    np.testing.assert_allclose(got["after"], got["fresh"], rtol=1e-6, atol=1e-7 * np.abs(got["fresh"]).max())
    assert not np.allclose(got["after"], got["before"])
