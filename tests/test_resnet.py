"""The ResNet port: names and shapes, taps and the swappable ReLU, batch-norm folding against an
unfolded network written here, the 3x3 max pool against torch, and every weight-file error."""

import dataclasses
import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from jaxplain import InputError, WeightsError, models
from jaxplain.models import ResNetConfig, build_resnet, imagenet, resnet_weights, weights
from jaxplain.models.layers import max_pool_3x3s2
from jaxplain.models.resnet import fold_bn, fold_params, make_apply, param_shapes, random_raw
from jaxplain.engine.shapes import default_layer
from tests.test_weights import server  # noqa: F401  (the 127.0.0.1 file server)

SMALL = ResNetConfig(blocks=(1, 2, 1, 1), widths=(4, 8, 8, 16), stem=8, classes=10, name="resnet_small")
R50 = ResNetConfig()


def _struct(config):
    return {l: {p: jax.ShapeDtypeStruct(s, jnp.float32) for p, s in ps.items()} for l, ps in param_shapes(config).items()}


def _out(n: int, k: int, s: int, p: int) -> int:
    """torch's output size of a conv or pool along one axis."""
    return (n + 2 * p - k) // s + 1


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("style", ["torchvision", "keras"])
@pytest.mark.parametrize("size", [(224, 224), (33, 47)])
def test_names_and_shapes(style, size):
    cfg = ResNetConfig(style=style)
    logits, acts = jax.eval_shape(make_apply(cfg), _struct(cfg), jax.ShapeDtypeStruct((*size, 3), jnp.float32))
    assert logits.shape == (1000,)
    assert sorted(acts) == sorted(cfg.layers) and len(cfg.layers) == 2 + 16 * 4 + 4 + 4 + 2  # (order: below)
    h, w = (_out(n, 7, 2, 3) for n in size)
    assert acts["conv1"].shape == (h, w, 64)
    h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)
    assert acts["maxpool"].shape == (h, w, 64)
    assert acts["layer1"].shape == acts["layer1.2"].shape == (h, w, 256)
    for s, width in zip((2, 3, 4), (128, 256, 512)):
        # the stride: in conv2 (torchvision, v1.5) or in conv1 (Keras/Caffe)
        first = (_out(h, 1, 2, 0), _out(w, 1, 2, 0)) if style == "keras" else (h, w)
        assert acts[f"layer{s}.0.conv1"].shape == (*first, width)
        h, w = _out(h, 3, 2, 1), _out(w, 3, 2, 1)
        assert acts[f"layer{s}.0.conv2"].shape == (h, w, width)
        assert acts[f"layer{s}.0.downsample"].shape == acts[f"layer{s}"].shape == (h, w, 4 * width)
    assert acts["avgpool"].shape == (2048,) and acts["fc"].shape == (1000,)
    assert "layer4.2.conv3" in acts and cfg.layers[-4:] == ("layer4.2", "layer4", "avgpool", "fc")


def test_model_facts_and_default_layer():
    m = models.resnet50()
    assert (m.name, m.source, m.input_size, m.min_size, m.channel_order) == ("resnet50", "torchvision", None, 32, "RGB")
    assert default_layer(m, (224, 224, 3)) == "layer4"  # Grad-CAM's layer4, not the last inner conv
    k = models.resnet50(source="keras")
    assert k.channel_order == "BGR" and k.preprocess is imagenet.preprocess_caffe
    notop = models.resnet50(include_top=False)
    assert notop.layers[-1] == "layer4" and "fc" not in notop.params
    with pytest.raises(InputError, match="at least 32x32"):
        jax.eval_shape(m.apply, m.params, jax.ShapeDtypeStruct((31, 64, 3), jnp.float32))
    with pytest.raises(InputError, match="unknown weight source 'caffe'"):
        models.resnet50(source="caffe")


def test_random_weights_are_seeded_with_random_bn_statistics():
    raw = random_raw(SMALL, seed=3)
    assert not np.allclose(raw["layer1.0.conv1"]["var"], 1) and not np.allclose(raw["layer1.0.conv1"]["mean"], 0)
    a, b = models.resnet50(seed=3).params, models.resnet50(seed=3).params
    np.testing.assert_array_equal(a["layer3.1.conv2"]["bias"], b["layer3.1.conv2"]["bias"])
    assert np.abs(np.asarray(a["layer3.1.conv2"]["bias"])).max() > 0  # the folded statistics


# ---------------------------------------------------------------- batch-norm folding


def _conv(x, k, stride):
    pad = k.shape[0] // 2
    return jax.lax.conv_general_dilated(x[None], k, (stride, stride), [(pad, pad)] * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]


def _unfolded(raw, cfg, x):
    """The network as its papers and frameworks write it: conv (+ bias in Keras), then inference
    batch norm ``(y - mean) / sqrt(var + eps) * gamma + beta``, never folded."""
    keras = cfg.style == "keras"

    def conv_bn(name, h, stride):
        p = raw[name]
        y = _conv(h, p["kernel"], stride) + p.get("bias", np.float32(0))
        return (y - p["mean"]) / jnp.sqrt(p["var"] + np.float32(cfg.eps)) * p["gamma"] + p["beta"]

    h = jax.nn.relu(conv_bn("conv1", x, 2))
    h = jax.lax.reduce_window(h, np.float32(0.0 if keras else -np.inf), jax.lax.max, (3, 3, 1), (2, 2, 1), [(1, 1), (1, 1), (0, 0)])
    for s, n in enumerate(cfg.blocks, 1):
        for b in range(n):
            p, stride = f"layer{s}.{b}", 2 if s > 1 and b == 0 else 1
            s1, s2 = (stride, 1) if keras else (1, stride)
            y = jax.nn.relu(conv_bn(f"{p}.conv1", h, s1))
            y = jax.nn.relu(conv_bn(f"{p}.conv2", y, s2))
            y = conv_bn(f"{p}.conv3", y, 1)
            h = jax.nn.relu(y + (conv_bn(f"{p}.downsample", h, stride) if b == 0 else h))
    return h.mean(axis=(0, 1)) @ raw["fc"]["kernel"] + raw["fc"]["bias"]


@pytest.mark.parametrize("style", ["torchvision", "keras"])
def test_folding_equals_unfolded_batch_norm(style):
    cfg = dataclasses.replace(SMALL, style=style)
    raw = random_raw(cfg, seed=4)
    rng = np.random.default_rng(5)
    if style == "keras":  # Keras' convs have biases of their own
        for name, p in raw.items():
            if "gamma" in p:
                p["bias"] = rng.normal(0, 0.1, p["gamma"].shape).astype(np.float32)
    x = jnp.asarray(rng.normal(size=(40, 36, 3)).astype(np.float32))
    got, _ = make_apply(cfg)(fold_params(raw, cfg.eps), x)
    want = _unfolded(raw, cfg, x)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_fold_bn_formula():
    rng = np.random.default_rng(0)
    x, k, b0 = rng.normal(size=(5, 3)), rng.normal(size=(1, 1, 3, 4)).astype(np.float32), rng.normal(size=4)
    g, beta, mean, var = rng.uniform(0.5, 1, 4), rng.normal(size=4), rng.normal(size=4), rng.uniform(0.5, 2, 4)
    kf, bf = fold_bn(k, b0, g, beta, mean, var, 1e-3)
    want = (x @ k[0, 0] + b0 - mean) / np.sqrt(var + 1e-3) * g + beta
    np.testing.assert_allclose(x @ kf[0, 0] + bf, want, rtol=1e-5)
    assert kf.dtype == bf.dtype == np.float32 and not np.shares_memory(kf, k)


# ---------------------------------------------------------------- the contract


@pytest.fixture(scope="module")
def small():
    return build_resnet(SMALL, fold_params(random_raw(SMALL, seed=1), SMALL.eps), source="torchvision")


def test_a_stage_tap_is_added_once(small):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(32, 32, 3)).astype(np.float32))
    logits, plain = small.apply(small.params, x)
    t = jnp.asarray(np.random.default_rng(3).normal(size=plain["layer2"].shape).astype(np.float32))
    tapped_logits, acts = small.apply(small.params, x, taps={"layer2": t})
    np.testing.assert_array_equal(acts["layer2.1"], plain["layer2.1"])  # the block before the stage
    np.testing.assert_allclose(acts["layer2"], plain["layer2"] + t, rtol=1e-6)
    # the stage output is the last block's: tapping either changes the logits alike
    by_block, _ = small.apply(small.params, x, taps={"layer2.1": t})
    np.testing.assert_allclose(tapped_logits, by_block, rtol=1e-5)
    assert not np.allclose(tapped_logits, logits)
    # and the gradient with respect to a tap is the gradient with respect to that activation
    f = lambda name: jax.grad(lambda v: small.apply(small.params, x, taps={name: v})[0][3])  # noqa: E731
    zero = jnp.zeros_like(plain["layer4"])
    np.testing.assert_allclose(f("layer4")(zero), f("layer4.0")(zero), rtol=1e-5)


def test_every_relu_is_the_relu_argument(small):
    calls = []

    def counting(v):
        calls.append(v.shape)
        return jax.nn.relu(v)

    x = jnp.asarray(np.random.default_rng(4).normal(size=(32, 32, 3)).astype(np.float32))
    want, acts = small.apply(small.params, x)
    assert tuple(acts) == small.layers == SMALL.layers  # every layer, in forward order
    got, _ = small.apply(small.params, x, relu=counting)
    assert len(calls) == 1 + 3 * sum(SMALL.blocks)  # the stem, two inside and one after each block
    np.testing.assert_array_equal(got, want)
    leaky, _ = small.apply(small.params, x, relu=lambda v: jax.nn.leaky_relu(v, 0.5))
    assert not np.allclose(leaky, want)


# ---------------------------------------------------------------- the 3x3 max pool


@pytest.mark.parametrize("shape", [(8, 8, 3), (7, 9, 2)])
@pytest.mark.parametrize("pad", [-np.inf, 0.0])
def test_max_pool_3x3_matches_torch_with_ties(shape, pad):
    """torch's MaxPool2d(3, 2, padding=1) (pad -inf), or Keras' zero padding then a 3x3/2 pool
    (pad 0) written as torch's pool of the zero-padded map; values in {0, 1}, so most windows tie."""
    rng = np.random.default_rng(len(shape) + shape[1])
    x = rng.integers(0, 2, shape).astype(np.float32)
    xt = torch.tensor(x.transpose(2, 0, 1)[None], requires_grad=True)
    if np.isinf(pad):
        yt = torch.nn.functional.max_pool2d(xt, 3, 2, padding=1)
    else:
        yt = torch.nn.functional.max_pool2d(torch.nn.functional.pad(xt, (1, 1, 1, 1)), 3, 2)
    g = rng.normal(size=yt.shape[2:] + (shape[2],)).astype(np.float32)
    yt.backward(torch.tensor(g.transpose(2, 0, 1)[None]))
    y, vjp = jax.vjp(lambda v: max_pool_3x3s2(v, pad), jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().numpy()[0].transpose(1, 2, 0))
    np.testing.assert_array_equal(np.asarray(vjp(jnp.asarray(g))[0]), xt.grad.numpy()[0].transpose(1, 2, 0))


# ---------------------------------------------------------------- weight files


def _file_arrays(config, layout):
    """Every key of ``layout`` for ``config`` with a constant array of its shape (no memory)."""
    return {k.key: np.broadcast_to(np.float32(0.5), k.shape) for u in resnet_weights.table(config, layout) for k in u.keys}


def test_every_key_of_each_layout():
    tv = _file_arrays(R50, "torchvision")
    assert len(tv) == 53 * 5 + 2  # 53 convs with their batch norms, and fc
    assert {"conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean",
            "layer4.2.bn3.weight", "fc.bias"} <= set(tv)
    ke = _file_arrays(R50, "keras")
    assert len(ke) == 53 * 6 + 2
    assert {"conv1_conv/bias", "conv1_bn/moving_variance", "conv2_block1_0_conv/kernel", "conv3_block4_3_bn/gamma",
            "conv5_block3_2_conv/kernel", "predictions/kernel"} <= set(ke)
    assert resnet_weights.table(R50, "keras")[1].keys[0].shape == (1, 1, 64, 64)  # conv2_block1_1_conv
    for layout, arrays in (("torchvision", tv), ("keras", ke)):
        cfg = ResNetConfig(style="keras" if layout == "keras" else "torchvision")
        params = resnet_weights.convert(arrays, cfg, layout)
        assert {l: {p: a.shape for p, a in ps.items()} for l, ps in params.items()} == param_shapes(cfg)


@pytest.mark.parametrize("drop,message", [
    ("bn1.running_var", r"resnet50 layer conv1: file has no var 'bn1.running_var' \(batch-norm running statistics"),
    ("layer3.2.bn2.running_mean", r"layer layer3.2.conv2: file has no mean 'layer3.2.bn2.running_mean' \(batch-norm"),
    ("layer2.0.downsample.0.weight", r"layer layer2.0.downsample: file has no kernel 'layer2.0.downsample.0.weight'"),
])
def test_missing_keys_are_named(drop, message):
    arrays = _file_arrays(R50, "torchvision")
    del arrays[drop]
    with pytest.raises(WeightsError, match=message):
        resnet_weights.convert(arrays, R50, "torchvision")


def test_wrong_shape_unexpected_keys_and_other_depths():
    arrays = _file_arrays(R50, "torchvision")
    arrays["fc.weight"] = np.zeros((10, 2048), np.float32)
    with pytest.raises(WeightsError, match=r"layer fc: kernel 'fc.weight' has shape \(10, 2048\).*expects \(1000, 2048\)"):
        resnet_weights.convert(arrays, R50, "torchvision")
    r101 = _file_arrays(ResNetConfig(blocks=(3, 4, 23, 3), name="resnet101"), "torchvision")
    with pytest.raises(WeightsError, match=r"unexpected keys in the file: layer3.10.*looks like a resnet101"):
        resnet_weights.convert(r101, R50, "torchvision")
    extra = {**_file_arrays(R50, "keras"), "conv6_block1_1_conv/kernel": np.zeros(3, np.float32)}
    with pytest.raises(WeightsError, match="unexpected keys.*conv6_block1_1_conv/kernel"):
        resnet_weights.convert(extra, ResNetConfig(style="keras"), "keras")


def _write_keras_h5(path, arrays):
    """A legacy Keras ``.h5`` from ``layer/role`` keys (Keras 2's ``layer/role:0`` names)."""
    import h5py

    layers = list(dict.fromkeys(k.split("/")[0] for k in arrays))
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"input_1", *(l.encode() for l in layers)])
        f.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        for layer in layers:
            g = f.create_group(layer)
            names = [f"{k}:0" for k in arrays if k.split("/")[0] == layer]
            g.attrs["weight_names"] = np.array([n.encode() for n in names])
            for n in names:
                g.create_dataset(n, data=np.ascontiguousarray(arrays[n[:-2]]))


def test_files_with_missing_batch_norm_statistics_are_refused(tmp_path):
    """A training checkpoint without running statistics, in each format, through ``resnet50``."""
    ke = {k: v for k, v in _file_arrays(R50, "keras").items() if k.startswith("conv1_")}
    del ke["conv1_bn/moving_mean"], ke["conv1_bn/moving_variance"]
    _write_keras_h5(tmp_path / "k.h5", ke)
    with pytest.raises(WeightsError, match=r"layer conv1: file k.h5 has no mean 'conv1_bn/moving_mean' \(batch-norm"):
        models.resnet50(tmp_path / "k.h5")
    tv = {k: np.ascontiguousarray(v) for k, v in _file_arrays(R50, "torchvision").items()
          if not k.endswith(("running_mean", "running_var"))}
    save_file(tv, tmp_path / "t.safetensors")
    with pytest.raises(WeightsError, match=r"layer conv1: file t.safetensors has no mean 'bn1.running_mean'"):
        models.resnet50(tmp_path / "t.safetensors")


def test_files_of_other_networks_are_refused(tmp_path):
    save_file({"features.0.weight": np.zeros((64, 3, 3, 3), np.float32)}, tmp_path / "vgg.safetensors")
    with pytest.raises(WeightsError, match="not ResNet weights"):
        models.resnet50(tmp_path / "vgg.safetensors")
    save_file({"conv1.weight": np.zeros((64, 3, 7, 7), np.float32),
               "layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32)}, tmp_path / "r.safetensors")
    with pytest.raises(WeightsError, match="not VGG weights"):
        models.vgg16(tmp_path / "r.safetensors")


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    """A complete torchvision-layout ResNet-50 file of constants (saved as safetensors)."""
    path = tmp_path_factory.mktemp("r50") / "r50.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in _file_arrays(R50, "torchvision").items()}, path)
    return path


def test_notop_and_source_rules(tv_file):
    assert models.resnet50(tv_file, include_top=False).layers[-1] == "layer4"
    with pytest.raises(WeightsError, match="holds torchvision ResNet weights; source='keras'"):
        models.resnet50(tv_file, source="keras")


def _publish(monkeypatch, tag, data):
    pub = weights.Published(f"{tag}.pth", "https://unreachable.invalid/x", "sha256", hashlib.sha256(data).hexdigest()[:8])
    monkeypatch.setitem(resnet_weights.PUBLISHED, ("resnet50", tag), pub)
    return pub


def test_download_verify_convert_cache(tv_file, server, monkeypatch):  # noqa: F811
    data = tv_file.read_bytes()
    server.files["IMAGENET1K_V2.pth"] = data
    _publish(monkeypatch, "IMAGENET1K_V2", data)
    model = models.resnet50("imagenet")
    assert model.source == "torchvision"
    want = imagenet.box_torchvision((500, 400), (224, 224), ratio=232 / 224)  # V2's resize 232, crop 224
    assert model.input_box((500, 400), (224, 224)) == want != imagenet.box_torchvision((500, 400), (224, 224))
    converted = sorted(p.name for p in (weights.home() / "converted").iterdir())
    assert converted == ["resnet50-IMAGENET1K_V2-top-imagenet.safetensors"]
    server.files.clear()  # the second load reads the converted copy, without the network
    again = models.resnet50("imagenet")
    np.testing.assert_array_equal(again.params["layer4.2.conv3"]["bias"], model.params["layer4.2.conv3"]["bias"])
    # our cache is itself a weight file: its keys are the folded layers, its source recorded
    cached = models.resnet50(weights.home() / "converted" / converted[0])
    assert cached.source == "torchvision"
    np.testing.assert_array_equal(cached.params["conv1"]["kernel"], model.params["conv1"]["kernel"])


def test_published_table():
    assert resnet_weights.published("resnet50", "keras-top").digest == "2cb95161c43110f7111970584f804107"
    assert resnet_weights.published("resnet50", "keras-notop").filename.endswith("_notop.h5")
    assert resnet_weights.published("resnet50", "IMAGENET1K_V1").filename == "resnet50-0676ba61.pth"
    assert resnet_weights.published("resnet50", "IMAGENET1K_V2").url == "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
    assert resnet_weights.release_of("torchvision", True, None) == "IMAGENET1K_V2"
    assert resnet_weights.release_of("keras", False, None) == "keras-notop"
    names = {resnet_weights.cache_path(ResNetConfig(include_top=top, style=s), resnet_weights.release_of(s, top, None)).name
             for s in ("keras", "torchvision") for top in (True, False)}
    assert names == {"resnet50-keras-top-imagenet.safetensors", "resnet50-keras-notop-imagenet.safetensors",
                     "resnet50-IMAGENET1K_V2-top-imagenet.safetensors", "resnet50-IMAGENET1K_V2-notop-imagenet.safetensors"}
    with pytest.raises(WeightsError, match="names torchvision's weights, not Keras'"):
        models.resnet50("IMAGENET1K_V1", source="keras")


# ---------------------------------------------------------------- the command line


def test_cli_predict_and_explain_resnet50(tmp_path):
    """``--model resnet50`` with seeded random weights: predict prints five classes; explain
    writes a Grad-CAM (on ``layer4``, the model's default CAM layer)."""
    from tests.test_cli import _stored, picture, run

    img = picture(tmp_path / "cat.png", seed=2)
    r = run("predict", img, "--model", "resnet50", "--weights", "random", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 7  # the random-weights note, the path, five classes
    r = run("explain", img, "--model", "resnet50", "--weights", "random", "--method", "grad_cam",
            "--out", tmp_path / "out", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    (line,), stored = _stored(tmp_path / "out", "grad_cam")
    cam = stored[line["row"]]
    assert cam.ndim == 2 and np.isfinite(cam).all() and cam.max() > 0
