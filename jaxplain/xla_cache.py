"""The persistent XLA compile cache, on by default: a second process (or a notebook restart) reads
jaxplain's compiled programs back from disk instead of compiling them again.

The first ``explain`` / ``evaluate`` / ``predict`` (and every command line run) calls ``ensure()``,
which points JAX's persistent compilation cache at a per-user folder: ``$JAXPLAIN_HOME/xla``, else
``$XDG_CACHE_HOME/jaxplain/xla``, else ``~/.cache/jaxplain/xla``. Nothing changes when JAX's cache
was configured already (``JAX_COMPILATION_CACHE_DIR``, or ``jax.config``'s
``jax_compilation_cache_dir`` set before the first call): the user's folder and settings win.

One switch: ``JAXPLAIN_COMPILE_CACHE=0`` in the environment turns it off (any other value but
``1`` is a folder to use instead); in Python, ``compile_cache(False)`` / ``compile_cache(path)``.

JAX writes a program to its cache only when it took at least
``jax_persistent_cache_min_compile_time_secs`` (1 s by default) to compile. jaxplain lowers that to
``MIN_COMPILE_S`` while it is at JAX's default: reading a program back costs milliseconds, and a
method's program on a small model compiles in a fraction of a second to a few seconds on a CPU,
which the default would compile again in every process; the eager one-operation programs (well
under 0.1 s) stay out of the folder. JAX itself never caches a program that calls back into
Python (``jax.debug.callback``, e.g. integrated gradients' tolerance check): those compile again.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import jax

from jaxplain.errors import InputError

ENV = "JAXPLAIN_COMPILE_CACHE"
OFF = ("0", "off", "false", "no")
ON = ("", "1", "on", "true", "yes")
MIN_COMPILE_S = 0.1
MAX_BYTES = 4 << 30  # least recently used programs go beyond 4 GiB (JAX's default: no bound)

_state: dict = {"decided": False, "ours": None}


def default_folder() -> Path:
    """``$JAXPLAIN_HOME/xla``, else ``$XDG_CACHE_HOME/jaxplain/xla``, else ``~/.cache/jaxplain/xla``."""
    if os.environ.get("JAXPLAIN_HOME"):
        return Path(os.environ["JAXPLAIN_HOME"]).expanduser() / "xla"
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "jaxplain" / "xla"


def ensure() -> Path | None:
    """Called before jaxplain's first compile: the cache as the environment asks (see the module's
    docstring), decided once per process. The folder in use, or ``None``."""
    if not _state["decided"]:
        _state["decided"] = True
        value = os.environ.get(ENV, "").strip()
        if value.lower() in OFF:
            return None
        if _users_own():
            return None
        _use(default_folder() if value.lower() in ON else Path(value).expanduser())
    return _state["ours"]


def compile_cache(setting: bool | str | os.PathLike = True) -> Path | None:
    """Turn jaxplain's persistent compile cache off (``False``), on in the default folder (``True``;
    a folder the user configured in JAX is kept) or on in ``setting``, a folder. Returns the folder
    now in use by jaxplain, or ``None``. JAX's cache settings made outside jaxplain are left alone
    by ``False``."""
    _state["decided"] = True
    if setting is False:
        if _state["ours"] is not None:
            _state["ours"] = None
            jax.config.update("jax_compilation_cache_dir", None)
            _reset()
        return None
    if setting is True:
        if _users_own():
            return None
        return _use(default_folder())
    if not isinstance(setting, (str, os.PathLike)):

        raise InputError(f"compile_cache takes True, False or a folder, got {setting!r}")
    return _use(Path(setting).expanduser())


def _users_own() -> bool:
    """Whether JAX's cache folder was set by someone other than jaxplain."""
    current = jax.config.jax_compilation_cache_dir
    return bool(current) and (_state["ours"] is None or current != str(_state["ours"]))


def _use(folder: Path) -> Path | None:
    """Point JAX's cache at ``folder`` (made if missing), or warn once and leave the cache off when
    it cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        warnings.warn(f"jaxplain: the compile cache folder {folder} cannot be written ({e.strerror or e}); "
                      f"compiling without a persistent cache (set {ENV}=0 to silence this)", stacklevel=3)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    if jax.config.jax_persistent_cache_min_compile_time_secs == 1.0:  # JAX's default, not a user's choice
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_S)
    if jax.config.jax_compilation_cache_max_size == -1 and _has_filelock():  # JAX needs it to evict
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    _state["ours"] = folder
    _reset()
    return folder


def _has_filelock() -> bool:
    try:
        import filelock  # noqa: F401
    except ImportError:
        return False
    return True


def _reset() -> None:
    """Make JAX open the cache folder again at its next compile (it opens it once per process)."""
    try:
        from jax._src import compilation_cache
    except ImportError:  # a JAX without it: the setting takes effect in the next process
        return
    compilation_cache.reset_cache()
