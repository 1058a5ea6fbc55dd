"""Localisation metrics (pointing game, relevance mass and rank accuracy) against a NumPy loop
written from the definitions (Zhang et al. 2018; Arras et al. 2022), Quantus 0.6 on the same
maps and masks, known answers, and their bad inputs."""

import warnings

import numpy as np
import pytest

import jaxplain
from jaxplain.errors import InputError
from tests.conftest import tiny_pair

B, H, W = 6, 32, 32


@pytest.fixture(scope="module")
def case():
    """Images, ``[B, H, W, C]`` attributions (half gradients of the tiny VGG, half random) and
    one rectangular mask per image."""
    net, model = tiny_pair(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, H, W, 3)).astype(np.float32)
    grads = np.asarray(jaxplain.explain(model, x[: B // 2], "predicted", "gradient"))
    a = np.concatenate([grads, rng.normal(size=(B - B // 2, H, W, 3)).astype(np.float32)])
    masks = np.zeros((B, H, W), bool)
    for i in range(B):
        top, left = rng.integers(0, 16, size=2)
        masks[i, top: top + rng.integers(4, 16), left: left + rng.integers(4, 16)] = True
    return net, model, x, a, masks


def evaluate(model, x, a, name, masks, **settings):
    return np.asarray(jaxplain.evaluate(model, x, None, a, name, mask=masks, **settings)["score"])


# NumPy loops from the definitions: R is the attribution summed over channels, S the mask.
def pointing_loop(a, s):
    r = a.sum(-1)
    best = r.max()
    return float(any(s[i, j] for i in range(r.shape[0]) for j in range(r.shape[1]) if r[i, j] == best))


def mass_loop(a, s, positive=True):
    r = a.sum(-1).astype(np.float64)
    if positive:
        r = np.maximum(r, 0)
    inside = sum(r[i, j] for i in range(r.shape[0]) for j in range(r.shape[1]) if s[i, j])
    return inside / r.sum()


def rank_loop(a, s):
    r = a.sum(-1).reshape(-1)
    k = int(s.sum())
    top = sorted(range(r.size), key=lambda p: (-r[p], p))[:k]
    return sum(bool(s.reshape(-1)[p]) for p in top) / k


@pytest.mark.parametrize("name, loop, settings", [
    ("pointing_game", pointing_loop, {}),
    ("relevance_mass", mass_loop, {}),
    ("relevance_mass", lambda a, s: mass_loop(a, s, positive=False), {"positive": False}),
    ("relevance_rank", rank_loop, {}),
])
def test_against_loop(case, name, loop, settings):
    """Per-image masks and pixel attributions, to 1e-6 (float32 sums of 1024 values)."""
    _, model, x, a, masks = case
    ours = evaluate(model, x, a, name, masks, **settings)
    ref = np.array([loop(a[i], masks[i]) for i in range(B)])
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_shared_mask_and_maps(case):
    """One ``[H, W]`` mask for all images, ``[B, H, W]`` maps: the same as that mask per image."""
    _, model, x, a, masks = case
    maps = a.sum(-1)
    for name in ("pointing_game", "relevance_mass", "relevance_rank"):
        shared = evaluate(model, x, maps, name, masks[0])
        per = evaluate(model, x, maps, name, np.broadcast_to(masks[0], masks.shape).astype(np.float32))
        np.testing.assert_array_equal(shared, per)


def quantus_scores(metric, net, x, maps, masks):
    """Quantus 0.6 on channel-first maps ``[B, 1, H, W]`` and masks, with the tiny torch net."""
    return np.asarray(metric(model=net, x_batch=x.transpose(0, 3, 1, 2), y_batch=np.zeros(len(x), int),
                             a_batch=maps[:, None], s_batch=masks[:, None].astype(np.float32)), np.float64)


def test_against_quantus(case):
    """Quantus' defaults (normalise by the largest |a|, no abs) on channel-summed maps, to 1e-6.
    Its RelevanceMassAccuracy sums signed relevance: ours with ``positive=False``, and ours by
    default (Arras: positive only) equals Quantus on the map clipped at 0."""
    import quantus

    net, model, x, a, masks = case
    maps = a.sum(-1)
    kw = dict(disable_warnings=True)
    pairs = [
        ("pointing_game", {}, quantus.PointingGame(**kw), maps),
        ("relevance_mass", {"positive": False}, quantus.RelevanceMassAccuracy(**kw), maps),
        ("relevance_mass", {}, quantus.RelevanceMassAccuracy(**kw), np.maximum(maps, 0)),
        ("relevance_rank", {}, quantus.RelevanceRankAccuracy(**kw), maps),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, settings, metric, theirs in pairs:
            ref = quantus_scores(metric, net, x, theirs, masks)
            np.testing.assert_allclose(evaluate(model, x, a, name, masks, **settings), ref, atol=1e-6, err_msg=name)


def test_known_answers(case):
    """The mask itself as attribution scores 1 on all three; random maps score about the mask's
    share of the image (pointing, mass and rank) over 64 images."""
    _, model, x, _, masks = case
    perfect = masks.astype(np.float32)
    for name in ("pointing_game", "relevance_mass", "relevance_rank"):
        np.testing.assert_array_equal(evaluate(model, x, perfect, name, masks), 1.0)
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(64, H, W, 3)).astype(np.float32)
    noise = rng.normal(size=(64, H, W)).astype(np.float32)
    mask = np.zeros((H, W), bool)
    mask[:, : W // 4] = True  # a quarter of the image
    assert abs(evaluate(model, xs, noise, "relevance_mass", mask).mean() - 0.25) < 0.02
    assert abs(evaluate(model, xs, noise, "relevance_rank", mask).mean() - 0.25) < 0.03
    assert abs(evaluate(model, xs, noise, "pointing_game", mask).mean() - 0.25) < 0.15  # 64 coin flips


def test_pointing_ties_and_weighted(case):
    """Tied maxima: a hit if any lies in the mask (Quantus). ``weighted``: a hit scores
    1 - |mask| / (H W), a miss 0."""
    _, model, x, _, _ = case
    mask = np.zeros((H, W), bool)
    mask[:8, :8] = True
    m = np.zeros((2, H, W), np.float32)
    m[:, 20, 20] = 5.0
    m[0, 2, 2] = 5.0  # image 0: a tied maximum inside
    np.testing.assert_array_equal(evaluate(model, x[:2], m, "pointing_game", mask), [1.0, 0.0])
    np.testing.assert_allclose(evaluate(model, x[:2], m, "pointing_game", mask, weighted=True), [1 - 64 / 1024, 0.0])


def test_empty_mask_is_nan_with_a_warning(case):
    _, model, x, a, masks = case
    masks = masks.copy()
    masks[1] = False
    for name in ("pointing_game", "relevance_mass", "relevance_rank"):
        with pytest.warns(UserWarning, match=r"mask is empty for images \[1\]"):
            s = evaluate(model, x, a, name, masks)
        assert np.isnan(s[1]) and not np.isnan(np.delete(s, 1)).any()


@pytest.mark.parametrize("mask, message", [
    (None, r"pointing_game scores against a ground-truth mask: pass mask=\.\.\."),
    (np.ones((16, 16), bool), r"mask must be \[H, W\] = \(32, 32\) for all images or \[B, H, W\] = \(6, 32, 32\)"),
    (np.ones((B, H, W, 1), bool), r"got shape \(6, 32, 32, 1\)"),
    (np.full((H, W), 0.5, np.float32), r"mask must be binary \(bool or 0/1\), got the value 0\.5"),
    (np.full((H, W), "a"), r"mask must be bool or 0/1 numbers, got dtype <U1"),
])
def test_bad_masks(case, mask, message):
    _, model, x, a, _ = case
    with pytest.raises(InputError, match=message):
        jaxplain.evaluate(model, x, None, a, "pointing_game", mask=mask)


def test_direct_call_without_mask():
    """Called directly (not through evaluate), a missing mask is the same InputError."""
    from jaxplain.metrics.localisation import relevance_rank

    with pytest.raises(InputError, match="relevance_rank scores against a ground-truth mask: pass mask="):
        relevance_rank(None, None, np.zeros((8, 8, 3)), 0, attribution=np.zeros((8, 8, 3)))
