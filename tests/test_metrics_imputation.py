"""ROAD: the imputation against the sparse system written from the paper's definition and solved by
SciPy, and against Quantus' ``noisy_linear_imputation``; the curve against a NumPy loop running
the torch network on SciPy-imputed images; the accuracy against Quantus' ``ROAD`` where Quantus
runs (single-channel images: on several channels Quantus 0.6 ranks C*H*W values and indexes an
H*W mask with them, an IndexError)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import quantus
import torch
from quantus.functions.perturb_func import noisy_linear_imputation
from scipy.sparse import csc_matrix, lil_matrix
from scipy.sparse.linalg import spsolve

import jaxplain
from jaxplain.errors import InputError
from jaxplain.metrics.imputation import road, road_impute
from tests.compare import assert_close
from tests.conftest import tiny_pair

# Conjugate gradients in float32 to a relative residual of 1e-6: measured max errors ~1e-5 of
# the image's range against SciPy's direct solve in float64 (2e-5 at 90% of 64x64 in one blob).
IMPUTE_TOL = 1e-4
pytestmark = pytest.mark.usefixtures("quick_threefry")


def scipy_impute(x: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Rong et al.'s linear imputation written from its definition: every removed pixel equals the
    weighted mean (1/6 edge-adjacent, 1/12 diagonal) of its neighbours inside the image, kept
    pixels fixed; one sparse system for all channels, solved directly in float64."""
    h, w, c = x.shape
    idx = np.flatnonzero(removed)
    var = np.full(h * w, -1)
    var[idx] = np.arange(idx.size)
    a, b = lil_matrix((idx.size, idx.size)), np.zeros((idx.size, c))
    for k, i in enumerate(idx):
        r, q = divmod(int(i), w)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                if (dy or dx) and 0 <= r + dy < h and 0 <= q + dx < w:
                    weight = 1 / 12 if dy and dx else 1 / 6
                    a[k, k] += weight
                    j = (r + dy) * w + q + dx
                    if var[j] >= 0:
                        a[k, var[j]] -= weight
                    else:
                        b[k] += weight * x[r + dy, q + dx]
    out = x.astype(np.float64).reshape(h * w, c).copy()
    if idx.size:
        out[idx] = spsolve(csc_matrix(a), b).reshape(idx.size, c)
    return out.reshape(h, w, c)


def _masks(h: int, w: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:h, :w]
    d = (yy - h / 3) ** 2 + (xx - w / 2) ** 2
    almost = np.ones((h, w), bool)
    almost[h - 1, 0] = False
    return {"none": np.zeros((h, w), bool), "10%": rng.random((h, w)) < 0.1, "50%": rng.random((h, w)) < 0.5,
            "90%": rng.random((h, w)) < 0.9, "blob": d <= np.quantile(d, 0.6), "border": (yy == 0) | (xx == w - 1),
            "all but a corner": almost}


def test_imputation_matches_scipy_and_quantus():
    """Non-square images (a transposed stencil would show), random, blob, border and near-total
    masks; noise 0. Quantus' implementation (the authors' code) agrees with the same SciPy system."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(11, 14, 3)).astype(np.float32)
    impute = jax.jit(lambda x, m: road_impute(x, m, noise=0.0))
    for name, removed in _masks(11, 14, rng).items():
        ref = scipy_impute(x, removed)
        assert_close(impute(x, removed), ref, IMPUTE_TOL)
        np.testing.assert_array_equal(np.asarray(impute(x, removed))[~removed], x[~removed])
        if removed.any():
            theirs = noisy_linear_imputation(arr=x.transpose(2, 0, 1).astype(np.float64),
                                             indices=np.flatnonzero(removed), noise=0.0)
            np.testing.assert_allclose(theirs.transpose(1, 2, 0), ref, atol=1e-6, err_msg=name)  # both float64
    const = np.broadcast_to(np.float32([0.5, -1.0, 2.0]), x.shape)  # a constant image is its own imputation
    np.testing.assert_allclose(impute(const, _masks(11, 14, rng)["90%"]), const, rtol=1e-5)


def test_imputation_noise():
    """``noise * N(0, 1)`` on the removed pixels only, drawn from ``key``."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 32, 3)).astype(np.float32)
    removed = rng.random((32, 32)) < 0.5
    f = jax.jit(lambda k: road_impute(x, removed, noise=0.3, key=k))
    clean = np.asarray(jax.jit(lambda: road_impute(x, removed, noise=0.0))())
    noisy = np.asarray(f(jax.random.key(0)))
    np.testing.assert_array_equal(noisy[~removed], x[~removed])
    d = (noisy - clean)[removed]
    assert d.size > 1000 and abs(d.std() - 0.3) < 0.03 and abs(d.mean()) < 0.03
    assert not np.array_equal(noisy, np.asarray(f(jax.random.key(1))))


@pytest.fixture(scope="module")
def pair():
    return tiny_pair(seed=2)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_curve_matches_numpy_loop(pair, order):
    """The torch network on SciPy-imputed images, pixels ranked by the channel-summed attribution
    (ties by index), ``floor(H W p / 100)`` removed from the top (MoRF) or the bottom (LeRF)."""
    net, m = pair
    rng = np.random.default_rng(4)
    xs = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    a = rng.normal(size=xs.shape).astype(np.float32)
    a[0, :4] = 0  # ties
    percentages = (5, 30, 75, 99)
    out = jaxplain.evaluate(m, xs, 3, a, "road", percentages=percentages, order=order, noise=0.0)
    curve, hits = np.zeros((2, 4)), np.zeros((2, 4))
    for b in range(2):
        ranked = np.argsort(-a[b].sum(-1).ravel(), kind="stable")
        for j, p in enumerate(percentages):
            k = int(32 * 32 * p / 100)
            removed = np.zeros(32 * 32, bool)
            removed[ranked[:k] if order == "morf" else ranked[32 * 32 - k:]] = True
            filled = scipy_impute(xs[b], removed.reshape(32, 32)).astype(np.float32)
            with torch.no_grad():
                logits = net(torch.tensor(filled.transpose(2, 0, 1)[None]))[0]
            curve[b, j] = torch.softmax(logits, 0)[3].item()
            hits[b, j] = float(logits.argmax().item() == 3)
    assert_close(out["curve"], curve, 1e-4)
    np.testing.assert_array_equal(out["accuracy"], hits)
    np.testing.assert_allclose(out["score"], curve.mean(1), rtol=1e-4)


def test_accuracy_matches_quantus_on_one_channel():
    """Quantus' ``ROAD`` (noise 0) records whether the target stays the top class; on a linear
    classifier of 16x16 single-channel images, its mean over 16 images per percentage equals ours
    (attributions: gradient x input of each image's predicted class plus as much noise, so that
    the accuracy falls gradually)."""
    rng = np.random.default_rng(6)
    wt, bias = rng.normal(size=(10, 256)).astype(np.float32), rng.normal(size=10).astype(np.float32)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 10)).eval()
    with torch.no_grad():
        lin[1].weight.copy_(torch.tensor(wt))
        lin[1].bias.copy_(torch.tensor(bias))
    xs = rng.normal(size=(16, 16, 16, 1)).astype(np.float32)
    y = np.argmax(xs.reshape(16, -1) @ wt.T + bias, 1)
    a = xs[..., 0] * wt[y].reshape(16, 16, 16) + rng.normal(size=(16, 16, 16)).astype(np.float32)
    percentages = [1, 2, 3, 10, 30]

    def apply(params, x, taps=None, relu=None):
        return params["w"] @ x.reshape(-1) + params["b"], {}

    params = {"w": jnp.asarray(wt), "b": jnp.asarray(bias)}
    ours = jax.jit(jax.vmap(lambda x, t, a: road(apply, params, x, t, attribution=a, percentages=percentages,
                                                 noise=0.0)))(xs, jnp.asarray(y, jnp.int32), a)
    theirs = quantus.ROAD(noise=0.0, percentages=percentages, disable_warnings=True)(
        model=lin, x_batch=xs.transpose(0, 3, 1, 2), y_batch=y, a_batch=a[:, None], device="cpu")
    np.testing.assert_allclose(np.asarray(ours["accuracy"]).mean(0), [theirs[p] for p in percentages], atol=1e-6)
    assert 0 < float(np.asarray(ours["accuracy"]).mean()) < 1


def test_default_noise_through_evaluate(pair):
    """Defaults: the authors' percentages, noise 0.01 (a key per image and percentage); the curve
    stays near the noise-free one and is reproducible from the key."""
    _, m = pair
    xs = np.random.default_rng(8).normal(size=(2, 32, 32, 3)).astype(np.float32)
    a = np.random.default_rng(9).normal(size=(2, 32, 32)).astype(np.float32)
    one = jaxplain.evaluate(m, xs, 3, a, "road", key=0)
    assert one["curve"].shape == one["accuracy"].shape == (2, 7) and one["score"].shape == (2,)
    np.testing.assert_array_equal(one["curve"], jaxplain.evaluate(m, xs, 3, a, "road", key=0)["curve"])
    assert not np.array_equal(one["curve"], jaxplain.evaluate(m, xs, 3, a, "road", key=1)["curve"])


@pytest.mark.parametrize("settings,message", [
    (dict(order="random"), "order must be one of"),
    (dict(percentages=[0, 50]), "percentages must be numbers strictly between 0 and 100"),
    (dict(percentages=[50, 100]), "percentages must be numbers strictly between 0 and 100"),
    (dict(percentages=[-5]), "percentages must be numbers strictly between 0 and 100"),
    (dict(percentages=[]), "percentages must be numbers strictly between 0 and 100"),
    (dict(percentages="10"), "percentages must be numbers strictly between 0 and 100"),
    (dict(percentages=np.array([10.0, 20.0])), "percentages must be a list or tuple"),
    (dict(noise=-0.1, key=0), "noise must be a number >= 0"),
    (dict(noise=0.01), "road with noise > 0 is random: pass key"),
    (dict(score="accuracy", noise=0.0), "score must be one of"),
    (dict(tol=0.0, noise=0.0), "tol must be a number > 0"),
    (dict(max_iterations=0, noise=0.0), "max_iterations must be a positive int"),
])
def test_bad_settings(settings, message):
    m = _toy()
    x = np.zeros((1, 8, 8, 3), np.float32)
    with pytest.raises(InputError, match=message):
        jaxplain.evaluate(m, x, 0, np.ones((1, 8, 8), np.float32), "road", **settings)


def test_bad_attributions():
    m = _toy()
    x = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(InputError, match="attributions must be"):
        jaxplain.evaluate(m, x, 0, np.ones((2, 8, 3), np.float32), "road", noise=0.0)
    bad = np.ones((2, 8, 8), np.float32)
    bad[0, 1, 1] = np.inf
    with pytest.raises(InputError, match=r"attributions of images \[0\] contain NaN"):
        jaxplain.evaluate(m, x, 0, bad, "road", noise=0.0)


def _toy() -> jaxplain.Model:
    def apply(params, x, taps=None, relu=None):
        return jnp.stack([jnp.sum(x), -jnp.sum(x)]), {}

    return jaxplain.Model(apply=apply, params={}, layers=(), preprocess=None, input_size=None, name="toy")
