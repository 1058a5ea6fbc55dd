"""The ViT port: the contract's shapes and names, attention probabilities, taps on the attention
(against finite differences and a NumPy forward pass written from the formulas), no ReLU to swap,
seeded random weights, every weight-file error, the download and cache path, timm's resize."""

import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from safetensors.numpy import save_file

import jaxplain
from jaxplain import InputError, WeightsError, models
from jaxplain.models import imagenet, vgg_weights, weights
from jaxplain.models import vit as vit_module
from jaxplain.models import vit_weights
from jaxplain.models.vit import ViTConfig, abstract_state, param_shapes, random_params
from tests.test_weights import server  # noqa: F401  (the 127.0.0.1 server fixture)
from tests.torch_vit import TorchViT, google_npz, numpy_state

TINY = ViTConfig(patch=8, depth=4, width=32, heads=4, mlp=64, classes=10, image_size=32, name="tiny_vit")


@pytest.fixture(scope="module")
def tiny():
    return vit_module.build(TINY, random_params(TINY, seed=1), source="timm")


@pytest.fixture(scope="module")
def x():
    return jnp.asarray(np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32))


def test_contract_shapes_and_names(tiny, x):
    logits, acts = tiny.apply(tiny.params, x)
    assert logits.shape == (10,)
    assert tuple(acts) == tiny.layers == TINY.layers
    assert tiny.layers[:3] == ("patch_embed", "blocks.0.attn", "blocks.0") and tiny.layers[-2:] == ("norm", "head")
    assert acts["patch_embed"].shape == (16, 32)
    for i in range(4):
        assert acts[f"blocks.{i}"].shape == (17, 32)
        assert acts[f"blocks.{i}.attn"].shape == (4, 17, 17)
    assert acts["norm"].shape == (17, 32)
    np.testing.assert_array_equal(acts["head"], logits)
    batch = jnp.stack([x, -x])
    np.testing.assert_allclose(tiny(batch), jnp.stack([tiny.apply(tiny.params, v)[0] for v in batch]), rtol=1e-5, atol=1e-6)


def test_b16_layers_and_input():
    cfg = models.VIT_B16
    assert (cfg.patch, cfg.depth, cfg.width, cfg.heads, cfg.mlp, cfg.classes) == (16, 12, 768, 12, 3072, 1000)
    assert cfg.tokens == 197 and cfg.input_size == (224, 224)
    assert cfg.layers[1:3] == ("blocks.0.attn", "blocks.0") and cfg.layers[-3] == "blocks.11"


def test_attention_probabilities_sum_to_one(tiny, x):
    _, acts = tiny.apply(tiny.params, x)
    for i in range(4):
        p = np.asarray(acts[f"blocks.{i}.attn"], np.float64)
        assert p.min() >= 0
        np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
        assert p.max() > 3 / 17  # not uniform: random weights give O(1) attention logits


def _numpy_vit(params, x, cfg, taps):
    """The ViT from its formulas in float64 NumPy, a tap added to each named attention's
    probabilities before they weight the values."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    g, d, h = cfg.grid, cfg.width, cfg.heads
    hd = d // h
    patches = np.asarray(x, np.float64).reshape(g, cfg.patch, g, cfg.patch, 3).transpose(0, 2, 1, 3, 4)
    tok = patches.reshape(g * g, -1) @ p["patch_embed"]["kernel"].reshape(-1, d) + p["patch_embed"]["bias"]
    tok = np.concatenate([p["cls_token"][None], tok]) + p["pos_embed"]

    def ln(v, q):
        mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-6) * q["scale"] + q["bias"]

    def dense(v, q):
        return v @ q["kernel"] + q["bias"]

    erf = np.vectorize(math.erf)
    for i in range(cfg.depth):
        b = p["blocks"][i]
        qkv = dense(ln(tok, b["norm1"]), b["attn"]["qkv"]).reshape(-1, 3, h, hd)
        s = np.einsum("qhd,khd->hqk", qkv[:, 0], qkv[:, 1]) / np.sqrt(hd)
        a = np.exp(s - s.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True) + taps.get(f"blocks.{i}.attn", 0.0)
        tok = tok + dense(np.einsum("hqk,khd->qhd", a, qkv[:, 2]).reshape(-1, d), b["attn"]["proj"])
        u = dense(ln(tok, b["norm2"]), b["mlp"]["fc1"])
        tok = tok + dense(0.5 * u * (1 + erf(u / np.sqrt(2))), b["mlp"]["fc2"])
    return dense(ln(tok, p["norm"])[0], p["head"])


def test_forward_and_attention_tap_match_numpy(tiny, x):
    """A tap on ``blocks.3.attn`` is added to the probabilities before they weight the values:
    a large random tap (rows no longer summing to 1) changes the logits exactly as the NumPy
    forward pass with the same addition."""
    tap = np.random.default_rng(3).normal(size=(4, 17, 17)) * 0.3
    for taps in ({}, {"blocks.3.attn": tap}):
        got = tiny.apply(tiny.params, x, taps={k: jnp.asarray(v, jnp.float32) for k, v in taps.items()})[0]
        want = _numpy_vit(tiny.params, x, TINY, taps)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    _, acts = tiny.apply(tiny.params, x, taps={"blocks.3.attn": jnp.asarray(tap, jnp.float32)})
    np.testing.assert_allclose(np.asarray(acts["blocks.3.attn"]).sum(-1), 1 + tap.sum(-1), rtol=1e-5)


def test_attention_tap_gradient_is_a_finite_difference(tiny, x):
    """d logit / d tap at ``blocks.3.attn``: float64 central differences (eps 1e-6) at the three
    largest entries of the gradient and at the class token's row; GELU and softmax are smooth, so
    the agreement is to 1e-6."""
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tiny.params)
        x64 = jnp.asarray(x, jnp.float64)
        zero = jnp.zeros((4, 17, 17), jnp.float64)
        f = jax.jit(lambda t: tiny.apply(p64, x64, taps={"blocks.3.attn": t})[0][2])  # one compile, not op by op
        g = np.asarray(jax.jit(jax.grad(f))(zero))
        picks = [np.unravel_index(i, g.shape) for i in np.argsort(-np.abs(g).ravel())[:3]] + [(1, 0, 5)]
        eps = 1e-6
        for i in picks:
            fd = (f(zero.at[i].set(eps)) - f(zero.at[i].set(-eps))) / (2 * eps)
            np.testing.assert_allclose(g[i], float(fd), rtol=1e-6, atol=1e-9 * np.abs(g).max())
        assert np.abs(g[:, 0]).max() > 0  # the class token's attention reaches the logits


def test_no_relu_to_swap(tiny, x):
    np.testing.assert_array_equal(tiny.apply(tiny.params, x, relu=jax.nn.relu)[0], tiny.apply(tiny.params, x)[0])
    with pytest.raises(InputError, match="tiny_vit has no ReLU to swap"):
        tiny.apply(tiny.params, x, relu=lambda v: v)
    for method in ("guided_backprop", "deconvnet"):
        with pytest.raises(InputError, match="no ReLU to swap .*GELU"):
            jaxplain.explain(tiny, np.asarray(x)[None], [0], method)


def test_explain_runs_on_a_vit(tiny, x):
    sal = jaxplain.explain(tiny, np.asarray(x)[None], [3], "gradient")
    want = jax.jit(jax.grad(lambda v: tiny.apply(tiny.params, v)[0][3]))(x)  # compiled once, not op by op
    np.testing.assert_allclose(np.asarray(sal)[0], np.asarray(want), rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_wrong_input_size(tiny):
    with pytest.raises(InputError, match=r"tiny_vit needs one 32x32x3 image .*4x4 grid.*\(48, 48, 3\)"):
        tiny.apply(tiny.params, jnp.zeros((48, 48, 3), jnp.float32))


@pytest.mark.parametrize("kw,msg", [({"width": 30, "heads": 4}, "width 30 is not a multiple of heads 4"),
                                    ({"image_size": 30}, "image_size 30 is not a multiple of the patch size 8"),
                                    ({"depth": 0}, "depth must be positive")])
def test_bad_config(kw, msg):
    base = dict(patch=8, depth=1, width=32, heads=4, mlp=8, classes=2, image_size=32)
    with pytest.raises(InputError, match=msg):
        ViTConfig(**{**base, **kw})


# ---------------------------------------------------------------- seeded random weights


@pytest.mark.parametrize("config", [TINY, models.VIT_B16])
def test_param_shapes_are_the_modules(config):
    _, state = abstract_state(config)
    assert jax.tree.map(lambda a: tuple(a.shape), nnx.to_pure_dict(state)) == param_shapes(config)


def test_random_params_are_seeded_with_non_zero_biases():
    a, b, c = random_params(TINY, 0), random_params(TINY, 0), random_params(TINY, 1)
    leaves = jax.tree.leaves_with_path(a)
    assert len(leaves) == 4 + 4 * 12 + 4
    for (path, u), v, w in zip(leaves, jax.tree.leaves(b), jax.tree.leaves(c)):
        assert u.dtype == np.float32
        np.testing.assert_array_equal(u, v)
        assert not np.any(u == w), path
        assert np.all(u != 0), path  # no zero bias
    np.testing.assert_allclose(a["blocks"][0]["attn"]["qkv"]["kernel"].std(), 32**-0.5, rtol=0.1)
    assert abs(a["norm"]["scale"].mean() - 1) < 0.1 and a["norm"]["scale"].std() > 0.05


def test_vit_b16_random():
    m = models.vit_b16()
    assert m.name == "vit_b16" and m.source == "timm" and m.input_size == (224, 224)
    assert m.layers[0] == "patch_embed" and m.layers[-1] == "head" and len(m.layers) == 27
    assert m.params["pos_embed"].shape == (197, 768)


# ---------------------------------------------------------------- weight files


def _timm_sd(seed=0, **kw):
    cfg = dict(patch=8, depth=4, width=32, heads=4, mlp=64, classes=10, image_size=32)
    cfg.update(kw)
    import torch

    torch.manual_seed(seed)
    return numpy_state(TorchViT(**cfg)), cfg


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vitw")
    sd, _ = _timm_sd()
    save_file(sd, d / "t.safetensors")
    np.savez(d / "t.npz", **google_npz(sd, 4))
    return d, sd


def test_both_layouts_give_the_same_parameters(tiny_files):
    d, sd = tiny_files
    a = vit_weights.vit(TINY, d / "t.safetensors")
    b = vit_weights.vit(TINY, d / "t.npz")
    assert (a.source, b.source) == ("timm", "google")
    for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    qkv = np.asarray(a.params["blocks"][1]["attn"]["qkv"]["kernel"])
    np.testing.assert_array_equal(qkv, sd["blocks.1.attn.qkv.weight"].T)
    np.testing.assert_array_equal(np.asarray(a.params["patch_embed"]["kernel"]),
                                  sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0))


def test_google_table_against_the_npz_keys(tiny_files):
    """Every key of the layout is used, each once (the loader's table against the test's writer)."""
    _, sd = tiny_files
    keys = [k for e in vit_weights.table(TINY, "google") for k in e.keys]
    assert sorted(keys) == sorted(google_npz(sd, 4)) and len(keys) == len(set(keys)) == 8 + 4 * 16
    keys = [k for e in vit_weights.table(TINY, "timm") for k in e.keys]
    assert sorted(keys) == sorted(sd) and len(keys) == 4 + 4 * 12 + 4


def test_npz_format_is_read_from_content(tiny_files, tmp_path):
    d, _ = tiny_files
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes((d / "t.npz").read_bytes())
    assert weights.detect_format(renamed) == "npz"
    assert weights.detect_format(d / "t.safetensors") == "safetensors"
    assert vit_weights.vit(TINY, renamed).source == "google"
    with np.load(d / "t.npz") as f:  # the same under the optimiser's "opt/target/" prefix
        np.savez(tmp_path / "opt.npz", **{"opt/target/" + k: f[k] for k in f.files})
    np.testing.assert_array_equal(np.asarray(vit_weights.vit(TINY, tmp_path / "opt.npz").params["pos_embed"]),
                                  np.asarray(vit_weights.vit(TINY, renamed).params["pos_embed"]))


def test_truncated_npz(tiny_files, tmp_path):
    d, _ = tiny_files
    data = (d / "t.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="corrupt or truncated npz"):
        vit_weights.vit(TINY, tmp_path / "cut.npz")


def test_file_sets_input_size_and_classes(tmp_path):
    sd, _ = _timm_sd(image_size=48, classes=7)
    save_file(sd, tmp_path / "w48.safetensors")
    m = vit_weights.vit(TINY, tmp_path / "w48.safetensors")
    assert m.input_size == (48, 48) and m.apply(m.params, jnp.zeros((48, 48, 3), jnp.float32))[0].shape == (7,)


@pytest.mark.parametrize("kw,differs", [({"patch": 16, "image_size": 32}, "patch size"), ({"depth": 3}, "depth"),
                                        ({"width": 48, "heads": 4}, "width")])
def test_another_architecture_is_refused(tmp_path, kw, differs):
    sd, _ = _timm_sd(**kw)
    save_file(sd, tmp_path / "o.safetensors")
    with pytest.raises(WeightsError, match=rf"file o.safetensors holds a ViT of .*tiny_vit is a ViT of patch size 8.*differs in {differs}"):
        vit_weights.vit(TINY, tmp_path / "o.safetensors")
    np.savez(tmp_path / "o.npz", **google_npz(sd, 4))
    with pytest.raises(WeightsError, match=rf"differs in {differs}"):
        vit_weights.vit(TINY, tmp_path / "o.npz")


@pytest.mark.parametrize("patch,depth,differs", [(32, 12, "patch size"), (16, 24, "depth")])
def test_vit_b16_refuses_a_b32_or_a_deeper_file(tmp_path, patch, depth, differs):
    """A ViT-B/32 or ViT of depth 24 in google's layout (only the arrays that tell; the check comes
    before any key is looked up)."""
    f = {"embedding/kernel": np.zeros((patch, patch, 3, 768), np.float32)}
    f.update({f"Transformer/encoderblock_{i}/LayerNorm_0/scale": np.ones(768, np.float32) for i in range(depth)})
    np.savez(tmp_path / "other.npz", **f)
    with pytest.raises(WeightsError, match=rf"file other.npz holds a ViT of patch size {patch}, depth {depth}, width 768; "
                                           rf"vit_b16 is a ViT of patch size 16, depth 12.*differs in {differs}\)"):
        models.vit_b16(tmp_path / "other.npz")


def test_missing_key(tiny_files, tmp_path):
    _, sd = tiny_files
    save_file({k: v for k, v in sd.items() if k != "blocks.2.attn.proj.bias"}, tmp_path / "m.safetensors")
    with pytest.raises(WeightsError, match=r"parameter blocks.2.attn.proj.bias: the file m.safetensors has no 'blocks.2.attn.proj.bias'"):
        vit_weights.vit(TINY, tmp_path / "m.safetensors")
    g = google_npz(sd, 4)
    del g["Transformer/encoderblock_1/MultiHeadDotProductAttention_1/value/kernel"]
    np.savez(tmp_path / "m.npz", **g)
    with pytest.raises(WeightsError, match=r"blocks.1.attn.qkv.kernel: .*no 'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/value/kernel'"):
        vit_weights.vit(TINY, tmp_path / "m.npz")


def test_unexpected_key_and_pre_logits(tiny_files, tmp_path):
    _, sd = tiny_files
    save_file({**sd, "fc_norm.weight": np.ones(32, np.float32)}, tmp_path / "x.safetensors")
    with pytest.raises(WeightsError, match="unexpected keys in the file x.safetensors: fc_norm.weight"):
        vit_weights.vit(TINY, tmp_path / "x.safetensors")
    g = {**google_npz(sd, 4), "pre_logits/kernel": np.zeros((32, 32), np.float32), "pre_logits/bias": np.zeros(32, np.float32)}
    np.savez(tmp_path / "x.npz", **g)
    with pytest.raises(WeightsError, match="pre_logits/bias, pre_logits/kernel.*ImageNet-21k pre-training"):
        vit_weights.vit(TINY, tmp_path / "x.npz")


def test_wrong_shape_names_parameter_and_both_shapes(tiny_files, tmp_path):
    _, sd = tiny_files
    save_file({**sd, "blocks.0.mlp.fc2.bias": np.zeros(33, np.float32)}, tmp_path / "s.safetensors")
    with pytest.raises(WeightsError, match=r"blocks.0.mlp.fc2.bias: 'blocks.0.mlp.fc2.bias' has shape \(33,\).*expects \(32,\)"):
        vit_weights.vit(TINY, tmp_path / "s.safetensors")


def test_files_of_other_networks(tiny_files, tmp_path):
    d, _ = tiny_files
    from tests.torch_reference import tiny_torch

    save_file({k: v.numpy() for k, v in tiny_torch().state_dict().items()}, tmp_path / "vgg.safetensors")
    with pytest.raises(WeightsError, match="not ViT weights"):
        vit_weights.vit(TINY, tmp_path / "vgg.safetensors")
    for name in ("t.safetensors", "t.npz"):
        with pytest.raises(WeightsError, match="not VGG weights"):
            models.vgg16(d / name)


def test_unknown_source():
    with pytest.raises(InputError, match="unknown weight source 'keras'"):
        models.vit_b16(source="keras")


# ---------------------------------------------------------------- downloads and the cache


def _publish(monkeypatch, name, source, fname, data, digest=True):
    pub = weights.Published(fname, "https://unreachable.invalid/" + fname, "sha256",
                            hashlib.sha256(data).hexdigest() if digest else "")
    monkeypatch.setitem(vit_weights.PUBLISHED, (name, source), pub)


@pytest.mark.parametrize("fname,source", [("t.safetensors", "timm"), ("t.npz", "google")])
def test_download_verify_convert_cache(tiny_files, server, monkeypatch, fname, source):  # noqa: F811
    d, _ = tiny_files
    data = (d / fname).read_bytes()
    server.files["pub-" + fname] = data
    _publish(monkeypatch, "tiny_vit", source, "pub-" + fname, data)
    model = vit_weights.vit(TINY, "imagenet", source)
    assert model.source == source
    cached = weights.home() / "converted" / f"tiny_vit-{source}-imagenet.safetensors"
    assert cached.exists()
    server.files.clear()  # the second load reads the converted copy: no network, no download
    (weights.home() / "downloads" / ("pub-" + fname)).unlink()
    monkeypatch.setitem(weights.READERS, "npz", None)
    again = vit_weights.vit(TINY, "imagenet", source)
    assert again.source == source
    for u, v in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert vit_weights.vit(TINY, cached).source == source  # the cache remembers its source


def test_download_hash_mismatch(tiny_files, server, monkeypatch):  # noqa: F811
    d, _ = tiny_files
    data = (d / "t.npz").read_bytes()
    server.files["pub.npz"] = data[:-1] + bytes([data[-1] ^ 1])
    _publish(monkeypatch, "tiny_vit", "google", "pub.npz", data)
    with pytest.raises(jaxplain.DownloadError, match="expected .*nothing was saved"):
        vit_weights.vit(TINY, "imagenet", "google")


def test_unrecorded_digest_warns(tiny_files, server, monkeypatch):  # noqa: F811
    d, _ = tiny_files
    data = (d / "t.safetensors").read_bytes()
    server.files["pub.safetensors"] = data
    _publish(monkeypatch, "tiny_vit", "timm", "pub.safetensors", data, digest=False)
    with pytest.warns(UserWarning, match="no published sha256 is recorded for pub.safetensors"):
        vit_weights.vit(TINY, "imagenet")


def test_published_table():
    assert vit_weights.published("vit_b16", "timm").filename == "vit_base_patch16_224.augreg2_in21k_ft_in1k.safetensors"
    assert vit_weights.published("vit_b16", "google").filename == "ViT-B_16-224.npz"
    with pytest.raises(WeightsError, match="no published ImageNet weights for tiny_vit from timm"):
        vit_weights.published("tiny_vit", "timm")


# ---------------------------------------------------------------- preprocessing and resize


def test_preprocess_inception():
    got = imagenet.preprocess_inception(np.array([[[0, 127.5, 255]]], np.float32))
    np.testing.assert_allclose(got, [[[-1.0, 0.0, 1.0]]], atol=1e-6)
    assert vit_module.build(TINY, random_params(TINY), source="google").preprocess is imagenet.preprocess_inception


def test_timm_resize_is_248_bicubic_then_centre_crop_224():
    """timm's eval transform for crop_pct 0.9: ``Resize(floor(224 / 0.9) = 248)`` on the shorter
    side (bicubic; the longer ``int(248 * long / short)``), then ``CenterCrop(224)`` with
    ``round((n - 224) / 2)`` offsets."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (375, 500, 3), dtype=np.uint8))
    m = vit_module.build(TINY, random_params(TINY), source="timm")
    got = m.resize(img, (224, 224))
    want = img.resize((330, 248), Image.Resampling.BICUBIC).crop((53, 12, 277, 236))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    left, top, right, bottom = m.input_box((375, 500), (224, 224))
    np.testing.assert_allclose([left, top, right, bottom], [53 * 500 / 330, 12 * 375 / 248, 277 * 500 / 330, 236 * 375 / 248])
    assert vit_module.RESIZE["google"] is None and vit_module.INPUT_BOX["google"] is None


def test_vgg_files_unchanged_by_the_npz_reader(tmp_path):
    """The .npz detection leaves torch's zip and legacy files as they were, and the cache writer
    still keys VGG's two-level parameters ``layer/param``."""
    import torch

    from tests.conftest import TINY as TINY_VGG
    from tests.torch_reference import tiny_torch

    sd = tiny_torch().state_dict()
    torch.save(sd, tmp_path / "zip.pth")
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert weights.detect_format(tmp_path / "zip.pth") == weights.detect_format(tmp_path / "legacy.pth") == "torch"
    params = models.random_params(TINY_VGG)
    weights.save_params(params, tmp_path / "c.safetensors", "torchvision")
    from safetensors import safe_open

    with safe_open(tmp_path / "c.safetensors", "np") as f:
        assert sorted(f.keys()) == sorted(f"{l}/{p}" for l, ps in params.items() for p in ps)
    np.testing.assert_array_equal(vgg_weights.load_cached(tmp_path / "c.safetensors", TINY_VGG)["fc1"]["kernel"],
                                  params["fc1"]["kernel"])


def test_bfloat16_precision_runs(tiny, x):
    """The bfloat16 path casts the weights and the input; LayerNorm keeps float32 statistics. The
    gradient stays within bfloat16's reach of the float32 one (8 mantissa bits, 6 blocks of
    rounding: 0.1 of the largest entry)."""
    ref = jaxplain.explain(tiny, np.asarray(x)[None], [3], "gradient", precision="float32")
    low = jaxplain.explain(tiny, np.asarray(x)[None], [3], "gradient", precision="bfloat16")
    assert low.dtype == np.float32 and np.isfinite(np.asarray(low)).all()
    assert np.abs(np.asarray(low) - np.asarray(ref)).max() <= 0.1 * np.abs(np.asarray(ref)).max()


def test_cli_vit_b16(tmp_path):
    """``--model vit_b16`` with seeded random weights predicts five classes; a source without ViT
    weights is one line before any model is built."""
    from tests.test_cli import picture, run

    img = picture(tmp_path / "cat.png", seed=2)
    r = run("predict", img, "--model", "vit_b16", "--weights", "random", home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 7  # the random-weights note, the path, five classes
    r = run("explain", img, "--model", "vit_b16", "--source", "keras", "--out", tmp_path / "out", home=tmp_path / "home")
    assert r.returncode == 2 and r.stderr == "jaxplain: error: --source keras has no vit_b16 weights; vit_b16 takes timm or google\n"


def test_exact_gelu_and_patch_matmul_against_references():
    """The model's GELU (``x (1 + erf(x / sqrt 2)) / 2`` in float32) against SciPy's erf in float64
    (to a few float32 roundings of the formula's terms: ``|err| <= 4 eps (|want| + |x| / 2)``, the
    cancellation in ``1 + erf`` at large negative x is the formula's, torch's too), against torch's
    ``gelu`` (to 1e-6 of its values); its gradient against the analytic ``Phi(x) + x phi(x)`` in
    float64 and float64 central differences; the patch embedding's matmul against a loop over
    patches written here."""
    import torch
    from scipy import special

    x = np.concatenate([np.linspace(-10, 10, 20001), np.random.default_rng(5).normal(size=5000) * 3,
                        [0.0, 1e-30, -1e-30, 1e-3, -1e-3, 40.0, -40.0]]).astype(np.float32)
    x64 = x.astype(np.float64)
    want = 0.5 * x64 * (1 + special.erf(x64 / np.sqrt(2)))
    got = np.asarray(jax.jit(vit_module.gelu)(jnp.asarray(x)), np.float64)
    eps = np.finfo(np.float32).eps
    err = np.abs(got - want) / (eps * (np.abs(want) + 0.5 * np.abs(x64)) + np.finfo(np.float32).tiny)
    assert err.max() <= 4, (err.max(), x[err.argmax()])
    t = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, t, rtol=0, atol=1e-6 * np.abs(t).max())

    dwant = special.ndtr(x64) + x64 * np.exp(-0.5 * x64**2) / np.sqrt(2 * np.pi)
    dgot = np.asarray(jax.jit(jax.vmap(jax.grad(vit_module.gelu)))(jnp.asarray(x)), np.float64)
    derr = np.abs(dgot - dwant) / (eps * (1 + np.abs(x64)))
    assert derr.max() <= 8, (derr.max(), x[derr.argmax()])
    with jax.enable_x64(True):
        pts = jnp.asarray([-6.0, -2.5, -1.0, -0.3, 0.0, 0.2, 0.7, 1.5, 3.0, 7.0], jnp.float64)
        g = np.asarray(jax.vmap(jax.grad(vit_module.gelu))(pts))
        h = 1e-6
        fd = np.asarray((vit_module.gelu(pts + h) - vit_module.gelu(pts - h)) / (2 * h))
    np.testing.assert_allclose(g, fd, rtol=1e-7, atol=1e-9)

    rng = np.random.default_rng(6)
    img, kernel, bias = rng.normal(size=(32, 24, 3)), rng.normal(size=(8, 8, 3, 5)), rng.normal(size=5)
    loop = np.array([[np.sum(img[8 * i:8 * i + 8, 8 * j:8 * j + 8, :, None] * kernel, axis=(0, 1, 2)) + bias
                      for j in range(3)] for i in range(4)]).reshape(12, 5)
    got = vit_module.patchify(*(jnp.asarray(a, jnp.float32) for a in (img, kernel, bias)))
    np.testing.assert_allclose(np.asarray(got), loop, rtol=1e-5, atol=1e-5)
