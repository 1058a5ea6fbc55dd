"""The persistent compile cache jaxplain turns on (``jaxplain.xla_cache``): a second process reads
the programs back, the switch turns it off, a user's own JAX setting wins, an unwritable folder
costs one warning."""

import json
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest

import jaxplain
from jaxplain import xla_cache

# Explains the tiny VGG on 2 CPU devices (every call sharded) with a one-program method, a host loop
# of compiled chunk calls (the middle one donates its running total) and integrated gradients to a
# tolerance (a jax.debug.callback); prints each XLA compile of jaxplain's programs as read back
# from the persistent cache or compiled, the folder JAX used, and the warnings.
CHILD = r"""
import json, warnings
from jax._src import dispatch, monitoring
seen, state = [], {"hit": False}
def event(name, **kw):
    if name == "/jax/compilation_cache/cache_hits":
        state["hit"] = True
def duration(name, secs, **kw):
    if name == dispatch.BACKEND_COMPILE_EVENT:
        if "batched" in str(kw.get("fun_name")):
            seen.append("hit" if state["hit"] else "compiled")
        state["hit"] = False
monitoring.register_event_listener(event)
monitoring.register_event_duration_secs_listener(duration)
warnings.simplefilter("always")
import jax, numpy as np, jaxplain
from jaxplain.models import VGGConfig
from jaxplain.models.vgg import build, random_params
cfg = VGGConfig(blocks=(1, 1, 2), widths=(4, 8, 8), fc=16, classes=10, grid=2, head="torchvision", name="tiny")
params = random_params(cfg, 1)
for layer in params.values():
    layer["bias"] += np.float32(0.1)
m = build(cfg, params, source="torchvision")
x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
with warnings.catch_warnings(record=True) as said:
    warnings.simplefilter("always")
    g = jaxplain.explain(m, x, 3, "gradient")
    ig = jaxplain.explain(m, x, 3, "integrated_gradients", steps=12, chunk=4)
    tol = jaxplain.explain(m, x, 3, "integrated_gradients", tolerance=0.5, max_steps=4, per_round=2)
print(json.dumps({"devices": jax.device_count(), "dir": jax.config.jax_compilation_cache_dir, "seen": seen,
                  "warnings": [str(w.message) for w in said],
                  "sums": [float(np.sum(np.asarray(a))) for a in (g, ig, tol)]}))
"""


def _child(env: dict) -> dict:
    env = {k: v for k, v in env.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    return {**json.loads(p.stdout.splitlines()[-1]), "stderr": p.stderr}


def test_a_second_process_reads_the_programs_back(tmp_path):
    """Cold, then warm on the same folder: the one-program method, the three programs of the host
    loop (one with a donated buffer) and the first and round programs of integrated gradients to a
    tolerance, all sharded over 2 devices, are read back, not compiled; its last call, the program
    with the host callback, is compiled again (JAX never caches those) and warns nothing."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAXPLAIN_HOME", "JAXPLAIN_COMPILE_CACHE")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    cold, warm = _child(env), _child(env)
    folder = tmp_path / "xdg" / "jaxplain" / "xla"
    assert cold["devices"] == warm["devices"] == 2
    assert cold["dir"] == warm["dir"] == str(folder)
    assert cold["seen"] == ["compiled"] * 7, cold
    assert warm["seen"] == ["hit"] * 6 + ["compiled"], warm
    assert len(list(folder.glob("jit_batched-*-cache"))) == 6
    np.testing.assert_array_equal(cold["sums"], warm["sums"])
    for run in (cold, warm):
        assert run["warnings"] == [] and "cache" not in run["stderr"].lower(), run


@pytest.fixture
def fresh(monkeypatch):
    """``xla_cache`` undecided and JAX's cache folder unset (the suite's own restored after)."""
    from jax._src import compilation_cache

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs,
              jax.config.jax_compilation_cache_max_size)
    monkeypatch.setattr(xla_cache, "_state", {"decided": False, "ours": None})
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAXPLAIN_HOME", "JAXPLAIN_COMPILE_CACHE"):
        monkeypatch.delenv(name, raising=False)
    jax.config.update("jax_compilation_cache_dir", None)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    jax.config.update("jax_compilation_cache_max_size", -1)
    yield
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    jax.config.update("jax_compilation_cache_max_size", before[2])
    compilation_cache.reset_cache()


def test_switch_users_folder_and_unwritable_folder(fresh, tmp_path, monkeypatch, tiny_model):
    """``JAXPLAIN_COMPILE_CACHE=0`` (the command line's too) leaves JAX's cache off and makes no
    folder; a folder the user gave JAX wins; a folder that cannot be made costs one warning and
    the explanation still runs; ``compile_cache`` turns it on and off; ``HOME`` is the last resort."""
    from jaxplain import cli

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("JAXPLAIN_COMPILE_CACHE", "0")
    cli.common.compile_cache()
    assert xla_cache.ensure() is None and jax.config.jax_compilation_cache_dir is None
    assert not (tmp_path / "xdg").exists()

    monkeypatch.setattr(xla_cache, "_state", {"decided": False, "ours": None})
    monkeypatch.delenv("JAXPLAIN_COMPILE_CACHE")
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "mine"))
    assert xla_cache.ensure() is None
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0 and not (tmp_path / "xdg").exists()
    jax.config.update("jax_compilation_cache_dir", None)

    (tmp_path / "file").write_text("")
    monkeypatch.setattr(xla_cache, "_state", {"decided": False, "ours": None})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))
    with pytest.warns(UserWarning, match="cannot be written") as said:
        a = jaxplain.explain(tiny_model, np.zeros((1, 32, 32, 3), np.float32), 0, "gradient")
        jaxplain.explain(tiny_model, np.zeros((1, 32, 32, 3), np.float32), 0, "gradient")
    assert a.shape == (1, 32, 32, 3) and len([w for w in said if "compile cache" in str(w.message)]) == 1
    assert jax.config.jax_compilation_cache_dir is None

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert jaxplain.compile_cache(True) == tmp_path / "xdg" / "jaxplain" / "xla"
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "jaxplain" / "xla")
    assert jax.config.jax_persistent_cache_min_compile_time_secs == xla_cache.MIN_COMPILE_S
    assert jaxplain.compile_cache(tmp_path / "other") == tmp_path / "other"
    assert jaxplain.compile_cache(False) is None and jax.config.jax_compilation_cache_dir is None
    with pytest.raises(jaxplain.InputError, match="compile_cache"):
        jaxplain.compile_cache(3)
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert xla_cache.default_folder() == tmp_path / "home" / ".cache" / "jaxplain" / "xla"
    monkeypatch.setenv("JAXPLAIN_HOME", str(tmp_path / "jh"))
    assert xla_cache.default_folder() == tmp_path / "jh" / "xla"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xla_cache.ensure()  # decided: nothing again
