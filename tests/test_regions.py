"""XRAI against PAIR's ``saliency.core.XRAI`` on the same regions and base attribution, and our
regions against PAIR's own Felzenszwalb segmentation."""

import jax.numpy as jnp
import numpy as np
import pytest
from saliency.core import xrai as pair

import jaxplain
from jaxplain.methods.xrai import xrai_masks


def _rectangles(rng, n, h, w):
    masks = np.zeros((n, h, w), bool)
    for m in masks:
        y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
        m[y : y + rng.integers(3, h // 2), x : x + rng.integers(3, w // 2)] = True
    return masks


@pytest.mark.parametrize("algorithm", ["full", "fast"])
@pytest.mark.parametrize("seed", range(4))
def test_same_map_and_ranking_as_pair(tiny_model, algorithm, seed):
    """Overlapping random rectangles (some adding fewer than min_pixel_diff new pixels, some area
    left uncovered), a random [H, W, C] base attribution: the gain-density map to float32 rounding
    (1e-6; PAIR sums in NumPy, we by a matrix product) and exactly the same rank of every pixel's region."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 32, 3)).astype(np.float32)
    masks, attr = _rectangles(rng, 30, 32, 32), rng.normal(size=(32, 32, 3)).astype(np.float32)
    params = pair.XRAIParameters(algorithm=algorithm, return_xrai_segments=True)
    params.experimental_params["min_pixel_diff"] = 10
    want = pair.XRAI().GetMaskWithDetails(x, None, segments=list(masks), base_attribution=attr, extra_parameters=params)
    got = jaxplain.xrai(tiny_model.apply, tiny_model.params, jnp.asarray(x), 0, segments=masks, base_attribution=attr,
                        algorithm=algorithm, min_pixel_diff=10, return_ranks=True)
    assert np.abs(np.asarray(got.attribution) - want.attribution_mask).max() <= 1e-6 * np.abs(attr).max()
    np.testing.assert_array_equal(np.asarray(got.ranks), want.segments)


def test_area_threshold_as_pair(tiny_model):
    """The full algorithm stops once the area passes area_threshold; the rest is filled with its mean."""
    rng = np.random.default_rng(5)
    masks, attr = _rectangles(rng, 30, 32, 32), rng.normal(size=(32, 32)).astype(np.float32)
    params = pair.XRAIParameters(area_threshold=0.3, return_xrai_segments=True)
    want = pair.XRAI().GetMaskWithDetails(np.zeros((32, 32)), None, segments=list(masks), base_attribution=attr,
                                          extra_parameters=params)
    got = jaxplain.xrai(tiny_model.apply, tiny_model.params, jnp.zeros((32, 32, 3)), 0, segments=masks,
                        base_attribution=attr, area_threshold=0.3, return_ranks=True)
    np.testing.assert_allclose(np.asarray(got.attribution), want.attribution_mask, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got.ranks), want.segments)


def test_regions_as_pair_felzenszwalb():
    """xrai_masks of a picture equals PAIR's _get_segments_felzenszwalb of the same picture
    (resize to 224x224, six scales, dilation by a disk of 5): every mask, in order."""
    rng = np.random.default_rng(0)
    pic = np.zeros((64, 80, 3), np.uint8)
    pic[:, :40] = (200, 30, 30)
    pic[20:50, 30:70] = (20, 180, 60)
    pic += rng.integers(0, 20, pic.shape).astype(np.uint8)
    want = np.stack(pair._get_segments_felzenszwalb(pic.astype(np.float64)))
    np.testing.assert_array_equal(xrai_masks(pic), want)


def test_explain_default_base_is_ig_over_black_and_white(tiny_model):
    """Through explain, the default base is IG averaged over the black and white pictures,
    reduced over channels by the maximum: the same as passing that base attribution."""
    rng = np.random.default_rng(1)
    pics = rng.integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    x = tiny_model.preprocess(pics)
    labels = jaxplain.segments(pics, "grid", cells=4)
    black, white = (tiny_model.preprocess(np.full((2, 32, 32, 3), v, np.uint8)) for v in (0, 255))
    ig = [jaxplain.explain(tiny_model, x, [1, 2], "integrated_gradients", steps=6, baseline=b) for b in (black, white)]
    base = (ig[0] + ig[1]) / 2
    got = jaxplain.explain(tiny_model, x, [1, 2], "xrai", segments=labels, base="integrated_gradients(steps=6)",
                           min_pixel_diff=5)
    want = jaxplain.explain(tiny_model, x, [1, 2], "xrai", segments=labels, base_attribution=base, min_pixel_diff=5)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6 * float(np.abs(want).max()))


def test_xrai_is_drawn_as_a_map_whatever_its_base(tiny_model):
    """XRAI returns a map [H, W] even when its base returns pixels: pictures draw it as a map."""
    from jaxplain.marks import output_of
    from jaxplain.registry import resolve

    for base in ("integrated_gradients", "gradient", "layer_gradient_x_activation"):
        assert output_of(jaxplain.xrai, resolve(jaxplain.xrai, {"base": base})) == "map"


def test_xrai_with_a_random_base(tiny_model):
    """A random base (SmoothGrad) gets xrai's key, folded in per baseline: same key same map, another key another."""
    x = np.random.default_rng(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    run = lambda key: np.asarray(jaxplain.explain(tiny_model, x, [1, 2], "xrai", base="smoothgrad(samples=3)",  # noqa: E731
                                                  baselines=(0.0, 1.0), segments="grid(cells=4)", min_pixel_diff=4, key=key))
    a, b, c = run(3), run(3), run(4)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0
    with pytest.raises(jaxplain.InputError, match="pass key"):
        run(None)
