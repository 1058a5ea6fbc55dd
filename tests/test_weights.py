"""Format detection, every weight-file error, the cache round trip and the download path."""

import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from jaxplain import DownloadError, WeightsError, models
from jaxplain.models import VGGConfig, vgg_weights, weights
from tests.conftest import TINY
from tests.torch_reference import TorchVGG

VGG16_NOTOP = VGGConfig(include_top=False, head="torchvision", name="vgg16")


def _tv_notop(arch, seed=0):
    torch.manual_seed(seed)
    return {k: v for k, v in TorchVGG(arch).state_dict().items() if k.startswith("features.")}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Feature-extractor weight files (VGG16 and VGG19) in each format."""
    d = tmp_path_factory.mktemp("w")
    sd16, sd19 = _tv_notop("vgg16"), _tv_notop("vgg19")
    torch.save(sd16, d / "v16.pth")
    torch.save(sd19, d / "v19.pth")
    save_file({k: v.numpy() for k, v in sd16.items()}, d / "v16.safetensors")
    import h5py

    with h5py.File(d / "v16.h5", "w") as f:
        names = [n for n in VGG16_NOTOP.conv_names]
        f.attrs["layer_names"] = np.array([b"input_1"] + [n.encode() for n in names])
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for i, n in enumerate(names):
            w = sd16[f"features.{vgg_weights.table(VGG16_NOTOP, 'torchvision')[2 * i].key.split('.')[1]}.weight"]
            g = f.create_group(n)
            g.attrs["weight_names"] = np.array([f"{n}_W_1:0".encode(), f"{n}_b_1:0".encode()])
            g.create_dataset(f"{n}_W_1:0", data=w.numpy().transpose(2, 3, 1, 0))
            g.create_dataset(f"{n}_b_1:0", data=np.zeros(w.shape[0], np.float32))
    return d, sd16


@pytest.mark.parametrize("name,fmt", [("v16.pth", "torch"), ("v16.safetensors", "safetensors"), ("v16.h5", "keras_h5")])
def test_format_is_read_from_content_not_name(files, tmp_path, name, fmt):
    d, _ = files
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes((d / name).read_bytes())
    assert weights.detect_format(renamed) == fmt
    model = models.vgg16(renamed)
    assert model.layers[-1] == "block5_pool"
    assert model.source == ("keras" if fmt == "keras_h5" else "torchvision")


def test_formats_agree(files):
    d, sd16 = files
    a = models.vgg16(d / "v16.pth").params
    b = models.vgg16(d / "v16.safetensors").params
    np.testing.assert_array_equal(a["block3_conv2"]["kernel"], b["block3_conv2"]["kernel"])
    np.testing.assert_array_equal(a["block1_conv1"]["kernel"], sd16["features.0.weight"].numpy().transpose(2, 3, 1, 0))


@pytest.mark.parametrize("name", ["v16.pth", "v16.safetensors", "v16.h5"])
def test_truncated_file(files, tmp_path, name):
    d, _ = files
    data = (d / name).read_bytes()
    bad = tmp_path / name
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        models.vgg16(bad)


def test_unknown_format(tmp_path):
    p = tmp_path / "notes.pth"
    p.write_text("hello, these are not weights")
    with pytest.raises(WeightsError, match="not a Keras HDF5, PyTorch or safetensors"):
        models.vgg16(p)


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="cannot read"):
        models.vgg16(tmp_path / "nope.h5")


def test_vgg19_file_into_vgg16(files):
    d, _ = files
    with pytest.raises(WeightsError, match=r"vgg16 layer block4_conv1: .*no kernel 'features.17.weight'.*looks like a vgg19"):
        models.vgg16(d / "v19.pth")


def test_missing_key(files, tmp_path):
    _, sd16 = files
    sd = {k: v.numpy() for k, v in sd16.items() if k != "features.28.bias"}
    save_file(sd, tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match="block5_conv3: .*no bias 'features.28.bias'"):
        models.vgg16(tmp_path / "m.safetensors")


def test_unexpected_key(files, tmp_path):
    _, sd16 = files
    sd = {k: v.numpy() for k, v in sd16.items()}
    sd["features.31.weight"] = np.zeros((3, 3), np.float32)
    save_file(sd, tmp_path / "x.safetensors")
    with pytest.raises(WeightsError, match="unexpected keys.*features.31.weight"):
        models.vgg16(tmp_path / "x.safetensors")


def test_notop_file_cannot_feed_a_classifier(files):
    d, _ = files
    with pytest.raises(WeightsError, match="fc1"):
        models.vgg16(d / "v16.pth", include_top=True)


def test_wrong_shape_names_layer_and_both_shapes(tmp_path):
    params = {f"{l}/{p}": np.asarray(a) for l, ps in models.random_params(TINY).items() for p, a in ps.items()}
    params["fc2/kernel"] = np.zeros((16, 17), np.float32)
    save_file(params, tmp_path / "t.safetensors")
    with pytest.raises(WeightsError, match=r"layer fc2: kernel 'fc2/kernel' has shape \(16, 17\).*expects \(16, 16\)"):
        vgg_weights.load_file(tmp_path / "t.safetensors", TINY)


def test_local_files_are_read_directly_and_never_cached(files, tmp_path):
    d, sd16 = files
    for name in ("v16.pth", "v16.safetensors", "v16.h5", "v19.pth"):
        arch = models.vgg19 if name.startswith("v19") else models.vgg16
        assert arch(d / name).layers[-1] == "block5_pool"
    home = weights.home()
    assert not home.exists() or not [p for p in home.rglob("*") if p.is_file()]
    # The file is read again on every load: a file changed in place gives the new weights.
    src = tmp_path / "w.pth"
    torch.save(sd16, src)
    first = models.vgg16(src).params["block1_conv1"]["kernel"]
    torch.save({k: v + 1 for k, v in sd16.items()}, src)
    second = models.vgg16(src).params["block1_conv1"]["kernel"]
    np.testing.assert_allclose(np.asarray(second), np.asarray(first) + 1, rtol=1e-6)


def test_a_local_file_is_read_once_per_load(files, monkeypatch):
    d, _ = files
    reads = []
    real = weights.READERS["torch"]
    monkeypatch.setitem(weights.READERS, "torch", lambda p: reads.append(p) or real(p))
    models.vgg16(d / "v16.pth")
    assert reads == [d / "v16.pth"]


def test_torch_conversion_layouts():
    """Each torch conversion against its definition, element by element (odd sizes, so no two
    axes can be swapped unnoticed), and never a view of the file's array."""
    rng = np.random.default_rng(4)
    oihw = rng.normal(size=(37, 5, 3, 3)).astype(np.float32)  # O, I, kh, kw
    got = weights._oihw(oihw)
    assert got.shape == (3, 3, 5, 37) and got.flags.c_contiguous
    assert got[2, 1, 4, 36] == oihw[36, 4, 2, 1]
    np.testing.assert_array_equal(got, np.einsum("oikl->klio", oihw))
    lin = rng.normal(size=(70, 33)).astype(np.float16)  # out, in; a half-precision file
    got = weights._linear(lin)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_array_equal(got, lin.T.astype(np.float32))
    fc1 = rng.normal(size=(65, 6 * 3 * 3)).astype(np.float32)  # out, C*g*g with C=6, g=3 (C,H,W)
    got = vgg_weights._fc1_from_chw(6, 3)(fc1)
    c, h, w, o = 5, 2, 1, 64  # ours reads the flatten of (H, W, C): row (h*3 + w)*6 + c
    assert got.shape == (54, 65) and got[(h * 3 + w) * 6 + c, o] == fc1[o, c * 9 + h * 3 + w]
    bias = rng.normal(size=7).astype(np.float32)
    assert not np.shares_memory(weights._same(bias), bias)


# ---------------------------------------------------------------- downloads from 127.0.0.1


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}
    short: set = set()

    def do_GET(self):  # noqa: N802
        name = self.path.rsplit("/", 1)[-1]
        data = self.files.get(name)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2] if name in self.short else data)

    def log_message(self, *a):
        pass


@pytest.fixture
def server(monkeypatch):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("JAXPLAIN_WEIGHTS_URL", f"http://127.0.0.1:{srv.server_port}/models")
    _Handler.files, _Handler.short = {}, set()
    yield _Handler
    srv.shutdown()
    srv.server_close()


def _publish(monkeypatch, arch, source, top, name, data):
    pub = weights.Published(name, "https://unreachable.invalid/" + name, "md5", hashlib.md5(data).hexdigest())
    monkeypatch.setitem(vgg_weights.PUBLISHED, (arch, source, top), pub)
    return pub


def test_download_verify_convert_cache(files, server, monkeypatch):
    d, _ = files
    data = (d / "v16.h5").read_bytes()
    server.files["v16n.h5"] = data
    _publish(monkeypatch, "vgg16", "keras", False, "v16n.h5", data)
    model = models.vgg16("imagenet", include_top=False)
    assert model.source == "keras"
    assert (weights.home() / "downloads" / "v16n.h5").read_bytes() == data
    converted = list((weights.home() / "converted").iterdir())
    assert [p.name for p in converted] == ["vgg16-keras-notop-imagenet.safetensors"]
    server.files.clear()  # a second load needs no network, and reads the converted copy
    monkeypatch.setitem(weights.READERS, "keras_h5", None)  # calling it would fail
    again = models.vgg16("imagenet", include_top=False)
    for layer in model.params:
        np.testing.assert_array_equal(model.params[layer]["kernel"], again.params[layer]["kernel"])
    # Our cache format is itself a loadable weight file that remembers its source.
    assert models.vgg16(converted[0]).source == "keras"


def test_download_hash_mismatch_leaves_nothing(files, server, monkeypatch):
    d, _ = files
    data = (d / "v16.h5").read_bytes()
    mid = len(data) // 2
    server.files["v16n.h5"] = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1 :]
    _publish(monkeypatch, "vgg16", "keras", False, "v16n.h5", data)
    with pytest.raises(DownloadError, match="md5 .*expected.*nothing was saved"):
        models.vgg16("imagenet", include_top=False)
    assert not any((weights.home() / "downloads").iterdir())
    assert not (weights.home() / "converted").exists()


def test_download_cut_short(files, server, monkeypatch):
    d, _ = files
    data = (d / "v16.h5").read_bytes()
    server.files["v16n.h5"], server.short = data, {"v16n.h5"}
    _publish(monkeypatch, "vgg16", "keras", False, "v16n.h5", data)
    with pytest.raises(DownloadError, match="could not download"):
        models.vgg16("imagenet", include_top=False)
    assert not any((weights.home() / "downloads").iterdir())


def test_offline_error_says_what_to_download_and_where(monkeypatch):
    monkeypatch.setenv("JAXPLAIN_WEIGHTS_URL", "http://127.0.0.1:9/models")  # discard port: refused
    with pytest.raises(DownloadError) as e:
        models.vgg16("imagenet")
    msg = str(e.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in msg
    assert str(weights.home() / "downloads") in msg


def test_hand_placed_file_is_verified(monkeypatch):
    dest = weights.home() / "downloads" / "vgg16-397923af.pth"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"PK\x03\x04 not the real file")
    with pytest.raises(DownloadError, match="not the published 397923af"):
        models.vgg16("imagenet", source="torchvision")


def test_published_table():
    assert vgg_weights.published("vgg16", "keras", True).digest == "64373286793e3c8b2b4e3219cbf3544b"
    assert vgg_weights.published("vgg16", "keras", False).digest == "6d6bbae143d832006294945121d1f1fc"
    assert vgg_weights.published("vgg16", "torchvision", False).filename == "vgg16-397923af.pth"
    with pytest.raises(WeightsError, match="no published ImageNet weights for vgg11 from keras"):
        vgg_weights.published("vgg11", "keras", True)
