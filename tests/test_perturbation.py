"""Occlusion and RISE against Captum on the same weights, closed forms on a linear model, a
plain loop of model calls over the very masks RISE draws, and those masks against the RISE
authors' generator (scikit-image's resize) on the same draws."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from captum import attr as ca

import jaxplain
from tests.compare import assert_close, to_nhwc, to_torch
from tests.conftest import tiny_pair
from tests.test_method_references import linear_model


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(seed=3)


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(5).normal(size=(2, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("window,strides,baseline", [
    ((5, 5), (3, 3), 0.0),         # overlapping windows, the last one clipped at the edge
    ((8, 8, 1), (8, 8, 1), -0.5),  # one channel at a time, tiled
    ((32, 7), (1, 4), 0.25),       # a full-height band
])
def test_occlusion_matches_captum(pair, xs, window, strides, baseline):
    net, m = pair
    t = [3, 7]
    chw = lambda v: (v[2] if len(v) == 3 else 3, v[0], v[1])  # noqa: E731  NHWC -> Captum's CHW
    with torch.no_grad():
        want = ca.Occlusion(net).attribute(to_torch(xs).detach(), sliding_window_shapes=chw(window),
                                           strides=chw(strides), baselines=baseline, target=t)
    got = jaxplain.explain(m, xs, t, "occlusion", window=window, strides=strides, baseline=baseline, chunk=7)
    assert_close(got, to_nhwc(want))


def test_occlusion_of_linear_model():
    """f = sum(w x): a 1x1 window over all channels drops sum_c w x at that pixel; a tiled 2x2
    window drops the block's sum."""
    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(2, 6, 4, 3)).astype(np.float32)
    m = linear_model(w)
    got = np.asarray(jaxplain.explain(m, x[None], 0, "occlusion", window=1, strides=1))[0]
    np.testing.assert_allclose(got, np.repeat((w * x).sum(-1, keepdims=True), 3, -1), rtol=1e-5, atol=1e-6)
    got = np.asarray(jaxplain.explain(m, x[None], 0, "occlusion", window=(2, 2), strides=(2, 2), baseline=1.0))[0]
    block = (w * (x - 1)).reshape(3, 2, 2, 2, 3).sum((1, 3, 4))
    np.testing.assert_allclose(got, np.repeat(np.repeat(block, 2, 0), 2, 1)[..., None].repeat(3, -1), rtol=1e-5, atol=1e-6)


def test_rise_equals_a_loop_over_its_masks(pair, xs):
    _, m = pair
    key, n, p = jax.random.key(4), 40, 0.4
    rise = jax.jit(lambda w, v, t, k: jaxplain.rise(m.apply, w, v, t, masks=n, cells=4, p=p, key=k, chunk=16))
    got = rise(m.params, jnp.asarray(xs[0]), jnp.int32(5), key)
    masks = np.asarray(jax.jit(jaxplain.rise_masks, static_argnums=(1, 2, 3, 4))(key, n, (32, 32), 4, p))
    want = np.zeros((32, 32))
    for mask in masks:  # one model call per mask, softmax in float64
        logits = np.asarray(m(jnp.asarray(xs[:1] * mask[None, :, :, None])), np.float64)[0]
        want += np.exp(logits[5] - logits.max()) / np.exp(logits - logits.max()).sum() * mask
    assert_close(got, want / (n * p))


def _official_rise_masks(key, n, shape, cells, p):
    """The RISE authors' generator (``generate_masks`` in their ``explanations.py``) on the draws
    ``rise_masks`` makes from ``key``: per mask ``kg, ky, kx = split(k, 3)``, the grid from
    ``kg``, the shifts from ``ky`` and ``kx``; upsampled by scikit-image, then cropped."""
    from skimage.transform import resize

    h, w = shape
    ch, cw = -(-h // cells), -(-w // cells)
    out = []
    for k in jax.random.split(key, n):
        kg, ky, kx = jax.random.split(k, 3)
        grid = np.asarray(jax.random.bernoulli(kg, p, (cells, cells))).astype("float32")
        dy, dx = int(jax.random.randint(ky, (), 0, ch)), int(jax.random.randint(kx, (), 0, cw))
        up = resize(grid, ((cells + 1) * ch, (cells + 1) * cw), order=1, mode="reflect", anti_aliasing=False)
        out.append(up[dy:dy + h, dx:dx + w])
    return np.stack(out)


@pytest.mark.parametrize("shape,cells", [
    ((32, 32), 4),   # square, a multiple of the cells
    ((32, 24), 5),   # non-square, neither side a multiple
    ((30, 45), 7),   # H not a multiple of the cells (cells of 5 x 7 pixels)
    ((9, 9), 1),     # one cell: the mirror rule's degenerate case
])
def test_rise_masks_are_the_official_generators(shape, cells):
    """Against skimage.transform.resize itself on the same grids and shifts, to 1e-6 (float32
    products of weights; measured <= 1.2e-7). Before the masks were built with the mirror rule
    (``jax.image.resize`` repeats the edge) they were up to 0.59 apart in the outer half cell
    here (0.63 at 224x224, 7 cells)."""
    key = jax.random.key(3)
    got = np.asarray(jax.jit(jaxplain.rise_masks, static_argnums=(1, 2, 3, 4))(key, 48, shape, cells, 0.5))
    np.testing.assert_allclose(got, _official_rise_masks(key, 48, shape, cells, 0.5), rtol=0, atol=1e-6)


def test_rise_masks_and_the_all_ones_case(pair, xs):
    masks = np.asarray(jax.jit(jaxplain.rise_masks, static_argnums=(1, 2, 3, 4))(jax.random.key(0), 2000, (32, 24), 5, 0.3))
    assert masks.shape == (2000, 32, 24) and masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - 0.3) < 0.01  # bilinear upsampling keeps the mean of the grid
    assert len(np.unique(masks[:, 0, 0])) > 3  # random shifts: not every mask starts on a cell edge
    _, m = pair  # p = 1 keeps everything: the map is the target's probability everywhere
    got = np.asarray(jaxplain.explain(m, xs, [1, 2], "rise", masks=8, p=1.0, score="logit", key=jax.random.key(1)))
    want = np.asarray(m(jnp.asarray(xs)))[[0, 1], [1, 2]]
    np.testing.assert_allclose(got, np.broadcast_to(want[:, None, None], got.shape), rtol=1e-5)


@pytest.mark.parametrize("method,settings,words", [
    ("occlusion", dict(window=(40, 40)), "larger than the image"),
    ("occlusion", dict(window=(4, 4), strides=(6, 6)), "larger than the window"),
    ("occlusion", dict(window=(0, 3)), "positive int"),
    ("rise", dict(), "pass key"),
    ("rise", dict(key=jax.random.key(0), score="prob"), "softmax"),
    ("rise", dict(key=jax.random.key(0), p=0.0), "0 < p"),
])
def test_bad_settings_are_named(pair, xs, method, settings, words):
    _, m = pair
    with pytest.raises(jaxplain.InputError, match=words):
        jaxplain.explain(m, xs, 0, method, **settings)
