"""Weight files, whatever the network: read Keras .h5, torch .pth, safetensors and NumPy .npz
files; torch's array layouts turned into ours; fetch, verify and cache. Each architecture's key
tables and published files are beside it (``vgg_weights``, ``resnet_weights``, ``vit_weights``).

Every converter lists the keys it maps and fails on any it does not: a missing or unexpected key,
or a shape that differs, raises a ``WeightsError`` naming the layer and both shapes. A local file
is read once per load and converted in memory; only downloaded files (and their conversion) are
kept under ``home()``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from jaxplain.errors import DownloadError, WeightsError
from jaxplain.files import commit

URL_ENV = "JAXPLAIN_WEIGHTS_URL"
HOME_ENV = "JAXPLAIN_HOME"


def home() -> Path:
    """Where downloads and converted weights live: ``$JAXPLAIN_HOME`` or ``~/.cache/jaxplain``."""
    return Path(os.environ.get(HOME_ENV) or "~/.cache/jaxplain").expanduser()


# ---------------------------------------------------------------- reading files


def _first_zip_entry(head: bytes) -> str:
    """The name of a zip file's first entry, from its local header (readable in a truncated file)."""
    n = int.from_bytes(head[26:28], "little")
    return head[30 : 30 + n].decode("utf8", "replace")


def detect_format(path: str | os.PathLike) -> str:
    """``"keras_h5"``, ``"torch"``, ``"safetensors"`` or ``"npz"``, from the file's first bytes.

    Both torch's zip format and NumPy's ``.npz`` are zip files: an ``.npz`` holds only ``.npy``
    entries (its first entry's name, in the first bytes, says which), torch's a ``data.pkl``."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(1024)
    except OSError as e:
        raise WeightsError(f"cannot read weight file {path}: {e.strerror or e}") from None
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras_h5"
    if head.startswith(b"PK\x03\x04") and _first_zip_entry(head).endswith(".npy"):
        return "npz"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    raise WeightsError(
        f"{path} is not a Keras HDF5, PyTorch or safetensors weight file, nor a NumPy .npz "
        f"(it starts with {head[:8]!r})"
    )


class RawWeights(NamedTuple):
    """A weight file's contents as stored: no key renamed, no array converted.

    ``fmt``: ``"keras_h5"``, ``"torch"``, ``"safetensors"`` or ``"npz"``; ``arrays``: file key -> array;
    ``source``: the weight source recorded in the file's metadata (our safetensors), else None.
    """

    fmt: str
    arrays: dict[str, np.ndarray]
    source: str | None = None


def _read_keras_h5(path: Path) -> RawWeights:
    import h5py

    def text(v: object) -> str:
        return v.decode("utf8") if isinstance(v, bytes) else str(v)

    raw: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as f:
        root = f["model_weights"] if "layer_names" not in f.attrs and "model_weights" in f else f
        if "layer_names" not in root.attrs:
            raise WeightsError(f"{path} is an HDF5 file without Keras 'layer_names': not Keras weights")
        for layer in map(text, root.attrs["layer_names"]):
            group = root[layer]
            names = [text(n) for n in group.attrs.get("weight_names", [])]
            arrays = [np.asarray(group[n]) for n in names]
            for role, a in zip(_keras_roles(path, layer, names, arrays), arrays):
                raw[f"{layer}/{role}"] = a
    return RawWeights("keras_h5", raw)


KERAS_BN_ROLES = ("gamma", "beta", "moving_mean", "moving_variance")  # Keras' BatchNormalization order


def _keras_roles(path: Path, layer: str, names: list[str], arrays: list[np.ndarray]) -> list[str]:
    """The role of each of a Keras layer's arrays (``kernel``, ``bias``, or batch norm's
    ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``): from the names where they say
    (``conv1_bn/gamma:0``), else from their order and shapes, as Keras' own loader does
    (the 2016 files name them ``block1_conv1_W_1:0``)."""
    known = {"kernel", "bias", *KERAS_BN_ROLES}
    tails = [n.rsplit("/", 1)[-1].split(":")[0] for n in names]
    if all(t in known for t in tails) and len(set(tails)) == len(tails):
        return tails
    if any(a.ndim > 1 for a in arrays):  # a conv or dense layer: kernel, then bias
        if len(arrays) > 2 or arrays[0].ndim < 2 or any(a.ndim != 1 for a in arrays[1:]):
            raise WeightsError(f"{path}: layer {layer!r} holds {len(arrays)} arrays of shapes "
                               f"{[a.shape for a in arrays]}, expected a kernel and a bias")
        return ["kernel", "bias"][: len(arrays)]
    if len(arrays) > len(KERAS_BN_ROLES):
        raise WeightsError(f"{path}: layer {layer!r} holds {len(arrays)} vectors, expected at most "
                           f"batch norm's {len(KERAS_BN_ROLES)}")
    return list(KERAS_BN_ROLES[: len(arrays)])


def _read_torch(path: Path) -> RawWeights:
    try:
        import torch
    except ImportError:
        raise WeightsError(
            f"reading {path} (a PyTorch file) needs PyTorch: pip install 'jaxplain[torch]'"
        ) from None
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # the zip format can be memory-mapped, legacy files not
    # Memory-mapped, the arrays are views of the file: ``convert`` copies each once.
    obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return RawWeights("torch", {k: v.detach().float().numpy() for k, v in obj.items() if hasattr(v, "detach")})


def _read_safetensors(path: Path) -> RawWeights:
    from safetensors import safe_open

    with safe_open(path, "np") as f:
        source = (f.metadata() or {}).get("source")
        return RawWeights("safetensors", {k: f.get_tensor(k) for k in f.keys()}, source)


def _read_npz(path: Path) -> RawWeights:
    """A NumPy ``.npz`` (google-research/vision_transformer's checkpoints): key -> array, no pickles."""
    with np.load(path, allow_pickle=False) as f:  # an archive: detect_format saw its .npy entries
        return RawWeights("npz", {k: f[k] for k in f.files})


READERS: dict[str, Callable[[Path], RawWeights]] = {
    "keras_h5": _read_keras_h5,
    "torch": _read_torch,
    "safetensors": _read_safetensors,
    "npz": _read_npz,
}


def read_raw(path: str | os.PathLike) -> RawWeights:
    """Everything in a weight file, read once; corrupt files raise ``WeightsError``."""
    path = Path(path)
    fmt = detect_format(path)
    try:
        raw = READERS[fmt](path)
    except WeightsError:
        raise
    except Exception as e:  # h5py, torch, safetensors and numpy (zipfile) each raise their own kinds
        raise WeightsError(f"{path} is a corrupt or truncated {fmt} file: {type(e).__name__}: {e}") from None
    prefix = "module."  # DataParallel checkpoints
    if raw.arrays and all(k.startswith(prefix) for k in raw.arrays):
        raw = raw._replace(arrays={k[len(prefix):]: v for k, v in raw.arrays.items()})
    return raw


# ---------------------------------------------------------------- array layouts

# Every conversion returns a new C-contiguous float32 array, never a view of the file's array
# (which may be a memory-mapped file that changes after the load).


def _same(a: np.ndarray) -> np.ndarray:
    return np.array(a, np.float32)


def _first_axis_last(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``a.transpose(axes)`` copied to C order, for ``axes[-1] == 0`` (output axis moved last).

    Copied in slabs of 32 along ``a``'s first axis, so reads and writes stay in cache: one
    ``ascontiguousarray`` of the whole transpose is several times slower (2.2 s against 0.4 s
    for VGG16's fc1, 4096 x 25088, on a 2-core machine).
    """
    out = np.empty([a.shape[i] for i in axes], np.float32)
    for i in range(0, a.shape[0], 32):
        out[..., i : i + 32] = a[i : i + 32].transpose(axes)
    return out


def _oihw(a: np.ndarray) -> np.ndarray:
    return _first_axis_last(a, (2, 3, 1, 0))


def _linear(a: np.ndarray) -> np.ndarray:
    return _first_axis_last(a.reshape(a.shape[0], -1), (1, 0))


# ---------------------------------------------------------------- our cache format


def flat_keys(params: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """A nested dict of arrays flattened to ``"a/b/c"`` keys (``layer/param`` for VGG's two levels)."""
    flat: dict[str, np.ndarray] = {}
    for k, v in params.items():
        if isinstance(v, dict):
            flat.update(flat_keys(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = np.asarray(v)
    return flat


def save_params(params: dict, path: Path, source: str) -> None:
    """Write ``params`` as safetensors keyed ``layer/param`` (any depth: ``a/b/param``; ``source``
    in metadata), atomically."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(flat_keys(params), tmp, metadata={"source": source})
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- fetching


@dataclasses.dataclass(frozen=True)
class Published:
    """A canonical weight file and its published digest (``sha256`` may be a prefix, as torch.hub's)."""

    filename: str
    url: str
    algo: str
    digest: str


_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications/{arch}/{name}"
_TORCH = "https://download.pytorch.org/models/{name}"


def _keras(arch: str, name: str, md5: str) -> Published:
    return Published(name, _KERAS.format(arch=arch, name=name), "md5", md5)


def _torch(name: str, sha256: str) -> Published:
    return Published(name, _TORCH.format(name=name), "sha256", sha256)


class OfflineError(DownloadError):
    """A published file could not be downloaded. The message says why, where to save the file by
    hand, and how to pass a file instead: ``argument``, ``weights=`` from Python (the default);
    the command line asks ``with_argument("--weights")`` for its own word."""

    def __init__(self, filename: str, url: str, reason: str, dest: Path, argument: str = "weights=") -> None:
        super().__init__(filename, url, reason, dest, argument)
        self.filename, self.url, self.reason, self.dest, self.argument = filename, url, reason, dest, argument

    def __str__(self) -> str:
        return (f"could not download {self.filename} from {self.url} ({self.reason}). Download it by hand and "
                f"save it as {self.dest}, or pass the file's path as {self.argument}")

    def with_argument(self, argument: str) -> "OfflineError":
        """The same error, telling to pass the file's path as ``argument``."""
        return OfflineError(self.filename, self.url, self.reason, self.dest, argument)


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _matches(pub: Published, path: Path) -> tuple[bool, str]:
    got = _digest(path, pub.algo)
    return got.startswith(pub.digest), got


def _progress(name: str, done: int, total: int | None) -> None:
    if not sys.stderr.isatty():
        return
    size = f"{done / 1e6:.0f}/{total / 1e6:.0f} MB {100 * done // total:3d}%" if total else f"{done / 1e6:.0f} MB"
    print(f"\rdownloading {name}: {size}", end="", file=sys.stderr, flush=True)


def fetch(pub: Published, *, timeout: float = 60.0) -> Path:
    """The verified local copy of ``pub``, downloading it if needed.

    The URL's base can be replaced with ``$JAXPLAIN_WEIGHTS_URL`` (the file name is appended).
    A failed or mismatching download leaves nothing behind.
    """
    dest = home() / "downloads" / pub.filename
    if dest.exists():
        ok, got = _matches(pub, dest)
        if not ok:
            raise DownloadError(
                f"{dest} has {pub.algo} {got}, not the published {pub.digest}: delete it and try again"
            )
        return dest
    base = os.environ.get(URL_ENV)
    url = f"{base.rstrip('/')}/{pub.filename}" if base else pub.url
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{pub.filename}.{os.getpid()}.part")
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as out:
                total = int(r.headers.get("Content-Length") or 0) or None
                done = 0
                for block in iter(lambda: r.read(1 << 20), b""):
                    out.write(block)
                    done += len(block)
                    _progress(pub.filename, done, total)
            if total is not None and done != total:
                raise OSError(f"connection closed after {done} of {total} bytes")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            raise OfflineError(pub.filename, url, str(reason), dest) from None
        ok, got = _matches(pub, tmp)
        if not ok:
            raise DownloadError(
                f"{pub.filename} from {url} has {pub.algo} {got}, expected {pub.digest}: "
                f"corrupt or not the published file; nothing was saved"
            )
        commit(tmp, dest)
    finally:
        if sys.stderr.isatty():
            print(file=sys.stderr)
        tmp.unlink(missing_ok=True)
    return dest
