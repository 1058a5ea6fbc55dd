"""Models of any channel count C (grayscale 1, RGB 3, RGBA-like 4, multispectral 12): methods,
metrics, segmentation, overlays and folder runs; the default CAM layer found by shape, not name.

References: central finite differences (gradient), IG's completeness axiom, loops written here from
the papers (occlusion, feature ablation, deletion, Grad-CAM on the layer's activation and its
gradient, split out of a forward pass written here), scikit-image's SLIC called here on the
picture a person sees, and Pillow's documented luma for a colour picture read as grayscale."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import slic

import jaxplain
from jaxplain import Model, cli, viz
from jaxplain.errors import InputError
from jaxplain.io import load_for_model
from tests.test_cli import run_here

HW = 16


def _conv(x, q):
    y = jax.lax.conv_general_dilated(x[None], q["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y[0] + q["bias"]


def _trunk(params, x):
    """The activation of ``features`` (the last conv) ``[8, 8, 6]`` for one image."""
    a = jax.nn.relu(_conv(x, params["conv_0"]))
    a = a.reshape(HW // 2, 2, HW // 2, 2, 4).max((1, 3))
    return jax.nn.relu(_conv(a, params["features"]))


def _head(params, a):
    return a.mean((0, 1)) @ params["head"]["kernel"] + params["head"]["bias"]


def cnn(c: int, seed: int = 0, preprocess=None) -> Model:
    """A small CNN on ``[16, 16, c]``: ``conv_0`` (4 channels), a 2x2 max pool, ``features`` (6
    channels, the LAST conv, not named like one), a mean and a dense head of 5 classes; random
    non-zero biases."""
    k = jax.random.split(jax.random.key(seed), 6)
    params = {"conv_0": {"kernel": 0.4 * jax.random.normal(k[0], (3, 3, c, 4)), "bias": 0.1 * jax.random.normal(k[1], (4,))},
              "features": {"kernel": 0.4 * jax.random.normal(k[2], (3, 3, 4, 6)), "bias": 0.1 * jax.random.normal(k[3], (6,))},
              "head": {"kernel": jax.random.normal(k[4], (6, 5)), "bias": 0.1 * jax.random.normal(k[5], (5,))}}

    def apply(params, x, taps=None, relu=None):
        taps, r = taps or {}, relu or jax.nn.relu
        a0 = r(_conv(x, params["conv_0"])) + taps.get("conv_0", 0.0)
        a = a0.reshape(HW // 2, 2, HW // 2, 2, 4).max((1, 3))
        a1 = r(_conv(a, params["features"])) + taps.get("features", 0.0)
        return _head(params, a1), {"conv_0": a0, "features": a1}

    return Model(apply, params, ("conv_0", "features", "head"), input_size=(HW, HW), channels=c, name=f"cnn{c}",
                 preprocess=preprocess or (lambda u: np.asarray(u, np.float32) / 127.5 - 1.0))


def pictures(c: int, n: int = 2, seed: int = 0) -> np.ndarray:
    """``uint8 [n, 16, 16, c]``: a bright square and a dark bar on a mid background, with noise."""
    rng = np.random.default_rng(seed)
    u = np.full((n, HW, HW, c), 120.0)
    u[:, 2:8, 3:9] = 220.0
    u[:, 10:14, 1:15] = 30.0
    u += rng.normal(0, 12, u.shape) + rng.uniform(-40, 40, (n, 1, 1, c))
    return np.clip(np.rint(u), 0, 255).astype(np.uint8)


def _ablation_loop(f, x, labels, base):
    """Feature ablation from its definition: each segment's pixels get ``f(x) - f(x, segment := base)``."""
    out = np.zeros(labels.shape)
    for s in np.unique(labels):
        m = (labels == s)[..., None]
        out[labels == s] = f(x) - f(np.where(m, base, x))
    return out


def _segments(picture_2d):
    """SLIC as a person's picture is segmented: a grayscale picture [H, W] on Lab's lightness scale."""
    return slic(picture_2d.astype(np.float64) * (100 / 255), n_segments=6, compactness=10.0, sigma=1.0, start_label=0,
                channel_axis=None)


def test_grayscale_model_methods_metrics_and_default_cam_layer():
    m = cnn(1)
    u = pictures(1)
    x = jnp.asarray(m.preprocess(u))
    t = np.asarray(m(x)).argmax(-1)
    logits = jax.jit(lambda v: m.apply(m.params, v)[0])
    f = lambda v, k=0: float(logits(jnp.asarray(v, jnp.float32))[t[k]])

    # gradient against finite differences, at every pixel of the first image where the forward
    # and the backward difference agree (away from the ReLUs' and the max pool's kinks)
    g = np.asarray(jaxplain.explain(m, x, t, "gradient"))
    assert g.shape == (2, HW, HW, 1)
    eps = 1e-3
    bumps = eps * np.eye(HW * HW, dtype=np.float32).reshape(HW * HW, HW, HW, 1)
    fx = jax.jit(jax.vmap(lambda v: m.apply(m.params, v)[0][t[0]]))
    here, up, down = (np.asarray(fx(v), np.float64) for v in (x[0][None], x[0] + bumps, x[0] - bumps))
    fwd, bwd = (up - here) / eps, (here - down) / eps
    smooth = np.abs(fwd - bwd) < 2e-3 * np.abs(fwd).max()
    assert smooth.mean() > 0.8
    np.testing.assert_allclose(g[0].ravel()[smooth], ((fwd + bwd) / 2)[smooth], atol=2e-3 * np.abs(fwd).max())

    # integrated gradients: completeness from the black picture (preprocess of 0 = -1 here)
    ig = np.asarray(jaxplain.explain(m, x, t, "integrated_gradients", baseline="black", steps=64))
    for k in range(2):
        gap = f(x[k], k) - f(-np.ones((HW, HW, 1)), k)
        assert abs(ig[k].sum() - gap) <= 0.01 * abs(gap) + 1e-4

    # Grad-CAM: the default layer is the last spatial one ("features", 8x8), not the conv named
    # like one ("conv_0", 16x16); against the paper's map computed here on that layer
    cam = np.asarray(jaxplain.explain(m, x, t, "grad_cam", upsample=False))
    assert cam.shape == (2, HW // 2, HW // 2)
    for k in range(2):
        a = _trunk(m.params, x[k])
        alpha = jax.grad(lambda a_, k=k: _head(m.params, a_)[t[k]])(a).mean((0, 1))
        np.testing.assert_allclose(cam[k], np.maximum(np.asarray(a @ alpha), 0), rtol=1e-5, atol=1e-6)

    # occlusion, 4x4 windows: each window's drop, from the definition
    occ = np.asarray(jaxplain.explain(m, x, t, "occlusion", window=4, strides=4))
    want = np.zeros((HW, HW))
    for i in range(0, HW, 4):
        for j in range(0, HW, 4):
            v = np.array(x[0])
            v[i:i + 4, j:j + 4] = 0.0
            want[i:i + 4, j:j + 4] = f(x[0]) - f(v)
    np.testing.assert_allclose(occ[0, ..., 0], want, rtol=1e-4, atol=1e-5)

    # feature ablation over SLIC segments of the grayscale picture (recovered from x by inverting
    # the preprocessing) against scikit-image on that picture and the ablation loop
    fa = np.asarray(jaxplain.explain(m, x, t, "feature_ablation", segments="slic(n_segments=6)"))
    np.testing.assert_allclose(fa[0], _ablation_loop(f, np.asarray(x[0]), _segments(u[0, ..., 0]), 0.0),
                               rtol=1e-4, atol=1e-5)

    # deletion, 4 steps of 64 pixels to black (-1), the target's probability after each: the paper's loop
    d = jaxplain.evaluate(m, x, t, g, "deletion", steps=4, baseline="black")
    order = np.argsort(-g[0].sum(-1).ravel(), kind="stable")
    curve = []
    for s in range(5):
        v = np.array(x[0]).reshape(-1, 1)
        v[order[: 64 * s]] = -1.0
        curve.append(float(jax.nn.softmax(logits(jnp.asarray(v.reshape(HW, HW, 1))))[t[0]]))
    np.testing.assert_allclose(np.asarray(d["curve"][0]), curve, rtol=1e-5, atol=1e-6)

    # model randomisation runs over the grayscale network (its draws are tested elsewhere)
    r = jaxplain.evaluate(m, x, t, g, "model_randomisation", method="gradient", mode="full", key=0)
    assert np.isfinite(np.asarray(r["score"])).all() and np.asarray(r["score"]).shape == (2,)

    # the grayscale overlay: colour where the map is large, the picture's own gray where it is 0
    mp = np.zeros((HW, HW))
    mp[:4, :4] = 1.0
    drawn = viz.overlay(u[0], mp)
    assert drawn.shape == (HW, HW, 3) and drawn.dtype == np.uint8
    np.testing.assert_array_equal(drawn[8:, 8:], np.repeat(u[0, 8:, 8:], 3, axis=-1))
    assert np.ptp(drawn[:2, :2].astype(int), axis=-1).max() > 20  # coloured


@pytest.mark.parametrize("c", [4, 12])
def test_multichannel_model_explain_evaluate_and_draw(c):
    m = cnn(c, seed=c)
    u = pictures(c, seed=c)
    x = jnp.asarray(m.preprocess(u))
    t = np.asarray(m(x)).argmax(-1)
    logits = jax.jit(lambda v: m.apply(m.params, v)[0])
    f = lambda v: float(logits(jnp.asarray(v, jnp.float32))[t[0]])
    g = np.asarray(jaxplain.explain(m, x, t, "gradient"))
    assert g.shape == (2, HW, HW, c)
    # against the gradient of the forward pass written here (no taps, no ReLU swap)
    want = jax.grad(lambda v: _head(m.params, _trunk(m.params, v))[t[0]])(x[0])
    np.testing.assert_allclose(g[0], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert jaxplain.explain(m, x, t, "grad_cam").shape == (2, HW, HW)
    d = jaxplain.evaluate(m, x, t, g, "deletion", steps=4, baseline="black")
    assert np.isfinite(np.asarray(d["score"])).all()
    # segments on the picture a person sees: for C not in {1, 3}, the mean of the channels
    fa = np.asarray(jaxplain.explain(m, x[:1], t[:1], "feature_ablation", segments="slic(n_segments=6)"))
    seen = np.rint(u[0].mean(-1)).astype(np.uint8)
    np.testing.assert_allclose(fa[0], _ablation_loop(f, np.asarray(x[0]), _segments(seen), 0.0), rtol=1e-4, atol=1e-5)
    # a C-channel attribution drawn: reduced over its channels, over a grayscale picture of them
    mp = viz.as_map(g[0], "pixels", "abs_max")
    np.testing.assert_array_equal(mp, np.abs(g[0]).max(-1))
    assert viz.overlay(seen, mp).shape == (HW, HW, 3)
    np.testing.assert_allclose(np.asarray(jaxplain.reduce(g, "sum", channels=c)), g.sum(-1), rtol=1e-6, atol=1e-7)
    if c > 4:  # more than a picture's channels: reduce asks for the count rather than guess
        with pytest.raises(InputError, match="pass channels=C"):
            jaxplain.reduce(g[0], "sum")


def test_channel_mismatch_names_both_counts():
    m = cnn(1)
    x = np.zeros((2, HW, HW, 3), np.float32)
    with pytest.raises(InputError, match=r"cnn1 takes 1 channel \[B, H, W, 1\], got images of 3 channels"):
        jaxplain.explain(m, x, 0, "gradient")
    with pytest.raises(InputError, match=r"got shape \(2, 16, 16\) \(a batch of grayscale images: add the channel axis, "
                                         r"images\[\.\.\., None\]"):
        jaxplain.explain(m, x[..., 0], 0, "gradient")
    with pytest.raises(InputError, match=r"takes 12 channels \[B, H, W, 12\], got images of 4 channels"):
        jaxplain.evaluate(cnn(12), np.zeros((1, HW, HW, 4), np.float32), 0, np.zeros((1, HW, HW, 4)), "deletion")


def test_folder_of_grayscale_pictures_with_report(tmp_path, monkeypatch):
    """A 1-channel model run over a folder of grayscale PNGs and two colour ones: ``preprocess``
    gets ``uint8 [B, H, W, 1]``, colour is converted to luma with one line for the run, and the
    overlays, thumbnails and report are written."""
    seen = []

    def preprocess(px):
        seen.append((px.dtype, px.shape))
        return np.asarray(px, np.float32) / 127.5 - 1.0

    model = cnn(1, preprocess=preprocess)
    monkeypatch.setattr(cli.common, "load_model", lambda args: model)
    folder = tmp_path / "digits"
    folder.mkdir()
    for k, p in enumerate(pictures(1, n=3, seed=5)):
        Image.fromarray(np.kron(p[..., 0], np.ones((2, 2), np.uint8))[:24, :20]).save(folder / f"g{k}.png")
    for k, rgb in enumerate([(200, 10, 20), (10, 200, 90)]):
        Image.fromarray(np.full((20, 24, 3), rgb, np.uint8)).save(folder / f"c{k}.png")
    out = tmp_path / "out"
    r = run_here("explain", folder, "--model", "vgg11", "--weights", "random", "--method", "grad_cam",
                 "--method", "gradient", "--report", "--out", out, home=tmp_path / "home")
    assert r.returncode == 0, r.stderr
    said = (r.stdout + r.stderr).splitlines()
    converted = [line for line in said if "converted to grayscale" in line]
    assert len(converted) == 1 and "cnn1 takes grayscale pictures (1 channel)" in converted[0], said
    assert "Traceback" not in r.stderr
    assert all(d == np.uint8 and s[-1] == 1 for d, s in seen) and ((np.dtype("uint8"), (5, HW, HW, 1)) in seen), seen
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 10
    for line in lines:
        overlay = Image.open(out / line["overlay"])
        assert overlay.mode == "RGB" and overlay.size == ((20, 24) if line["input"].endswith(("g0.png", "g1.png", "g2.png"))
                                                          else (24, 20))
        assert Image.open(out / line["picture"]).mode == "L"  # the thumbnail of a grayscale picture stays gray
    html = (out / "index.html").read_text() if (out / "index.html").exists() else (out / "report" / "index.html").read_text()
    assert "g0" in html and "c1" in html
    # a 20x24 picture and its maps are shown 4x, whole pixels (not 20 pixels wide, too small to see)
    assert html.count('width="80" height="96" style="image-rendering:pixelated"') >= 6, html
    # the colour picture read for the model: Pillow's luma L = 0.299 R + 0.587 G + 0.114 B
    loaded = load_for_model(folder / "c0.png", model)
    assert loaded.converted and loaded.image.shape == (HW, HW, 1) and loaded.original.shape == (20, 24, 1)
    assert np.abs(loaded.image.astype(int) - round(0.299 * 200 + 0.587 * 10 + 0.114 * 20)).max() <= 1


def test_folder_run_of_a_12_channel_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(cli.common, "load_model", lambda args: cnn(12))
    monkeypatch.setattr("jaxplain.io.read_image", lambda *a, **k: pytest.fail("read a picture"))
    Image.fromarray(pictures(3, n=1)[0]).save(tmp_path / "a.png")
    out = tmp_path / "out"
    r = run_here("explain", tmp_path / "a.png", "--model", "vgg11", "--weights", "random", "--out", out,
                 home=tmp_path / "home")
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "cnn12 takes 12-channel images, which no picture file holds" in r.stderr
    assert "jaxplain.explain" in r.stderr and not (out / "results.jsonl").exists()
