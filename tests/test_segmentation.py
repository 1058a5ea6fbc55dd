"""jaxplain.segments against scikit-image and a grid written here; segmentation.pictures inverting
the zoo's preprocessings exactly; explain's scikit-image kinds equal to label maps of the pictures."""

import math

import numpy as np
import pytest
from scipy import ndimage
from skimage import segmentation as sk

import jaxplain
from jaxplain import segmentation
from jaxplain.errors import InputError
from jaxplain.models import imagenet, synthetic_vgg

SKIMAGE_KINDS = ("slic", "felzenszwalb", "quickshift")


def flat_picture(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A picture ``[n, n, 3]`` uint8 of three flat colours (a red left half, a blue right half, a green
    square across the left half) and its region map ``[n, n]`` (0 red, 1 blue, 2 green)."""
    region = np.zeros((n, n), np.int64)
    region[:, n // 2:] = 1
    q = n // 4
    region[q:2 * q + q // 2, q // 2:n // 2] = 2
    colours = np.array([(200, 30, 30), (30, 40, 190), (40, 210, 60)], np.uint8)
    return colours[region], region


def relabelled(m: np.ndarray) -> np.ndarray:
    """``m``'s labels renumbered 0 .. M - 1 in increasing order of the original labels."""
    values = sorted(set(m.ravel().tolist()))
    table = {v: i for i, v in enumerate(values)}
    return np.vectorize(table.__getitem__)(m).astype(np.int32)


def check_compact(labels: np.ndarray, shape: tuple) -> None:
    assert labels.shape == shape and labels.dtype == np.int32
    for m in labels:
        np.testing.assert_array_equal(np.unique(m), np.arange(m.max() + 1))  # labels 0 .. M - 1, none empty


# Each kind smooths the picture first (Gaussian, sigma about a pixel), so a segment may take a pixel
# or two across an edge; none may join pixels lying deeper than that inside two different regions.
MARGIN = 2


@pytest.mark.parametrize("kind", SKIMAGE_KINDS)
def test_skimage_kinds_follow_the_edges_of_flat_regions(kind):
    picture, region = flat_picture(64)
    labels = jaxplain.segments(picture, kind)
    check_compact(labels, (1, 64, 64))
    interiors = [ndimage.binary_erosion(region == r, iterations=MARGIN, border_value=1) for r in range(3)]
    for s in range(labels.max() + 1):
        inside = [r for r in range(3) if (interiors[r] & (labels[0] == s)).any()]
        assert len(inside) <= 1, f"{kind}: segment {s} joins regions {inside}"
    assert labels.max() + 1 >= 3  # at least one segment per region


@pytest.mark.parametrize("kind, reference", [
    ("slic", lambda p: sk.slic(p, n_segments=50, compactness=10.0, sigma=1.0, start_label=0)),
    ("felzenszwalb", lambda p: sk.felzenszwalb(p, scale=100.0, sigma=0.8, min_size=50)),
    # lime's LimeImageExplainer segments with quickshift(kernel_size=4, max_dist=200, ratio=0.2)
    ("quickshift", lambda p: sk.quickshift(p, kernel_size=4, max_dist=200, ratio=0.2)),
    ("slic(n_segments=4)", lambda p: sk.slic(p, n_segments=4, compactness=10.0, sigma=1.0, start_label=0)),
    ("felzenszwalb(scale=20.0, min_size=10)", lambda p: sk.felzenszwalb(p, scale=20.0, sigma=0.8, min_size=10)),
])
def test_skimage_kinds_equal_scikit_image_relabelled(kind, reference):
    rng = np.random.default_rng(0)
    picture, _ = flat_picture(48)
    noisy = np.clip(picture + rng.integers(-25, 26, picture.shape), 0, 255).astype(np.uint8)
    pictures = np.stack([picture, noisy])
    labels = jaxplain.segments(pictures, kind)
    check_compact(labels, (2, 48, 48))
    for got, p in zip(labels, pictures):
        np.testing.assert_array_equal(got, relabelled(np.asarray(reference(p))))


def test_options_as_keywords_equal_the_string_form():
    picture, _ = flat_picture(48)
    a = jaxplain.segments(picture, "slic(n_segments=4, compactness=20.0)")
    b = jaxplain.segments(picture, "slic", n_segments=4, compactness=20.0)
    np.testing.assert_array_equal(a, b)
    assert 2 <= a.max() + 1 <= 6  # about the 4 segments asked for (SLIC's grid rounds)
    assert a.max() + 1 < jaxplain.segments(picture, "slic").max() + 1


@pytest.mark.parametrize("kind", SKIMAGE_KINDS)
def test_floats_in_0_1_are_the_same_picture(kind):
    picture, _ = flat_picture(48)
    noisy = np.clip(picture + np.random.default_rng(1).integers(-25, 26, picture.shape), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(jaxplain.segments(noisy / 255.0, kind), jaxplain.segments(noisy, kind))


def grid_by_loop(h: int, w: int, rows: int, cols: int) -> np.ndarray:
    """Cell ``(r, c)`` covers rows ``[ceil(r H / rows), ceil((r + 1) H / rows))`` and likewise columns;
    cells numbered row by row."""
    out = np.full((h, w), -1)
    for r in range(rows):
        for c in range(cols):
            top, bottom = math.ceil(r * h / rows), math.ceil((r + 1) * h / rows)
            left, right = math.ceil(c * w / cols), math.ceil((c + 1) * w / cols)
            out[top:bottom, left:right] = r * cols + c
    return out


@pytest.mark.parametrize("h, w, cells", [(32, 32, 8), (32, 32, 3), (7, 10, (3, 4)), (5, 9, (5, 1)), (6, 6, 1)])
def test_grid_equals_a_loop(h, w, cells):
    rows, cols = (cells, cells) if isinstance(cells, int) else cells
    want = grid_by_loop(h, w, rows, cols)
    assert (want >= 0).all()
    pictures = np.zeros((2, h, w, 3), np.uint8)
    got = jaxplain.segments(pictures, "grid", cells=cells)
    check_compact(got, (2, h, w))
    np.testing.assert_array_equal(got[0], want)
    np.testing.assert_array_equal(got[1], want)
    np.testing.assert_array_equal(jaxplain.segments(pictures[0], f"grid(cells={cells!r})")[0], want)
    sizes = np.bincount(want.ravel())
    assert sizes.max() - sizes.min() <= max(math.ceil(h / rows), 1) * max(math.ceil(w / cols), 1)  # cells near equal


def test_default_grid_is_8_by_8():
    got = jaxplain.segments(np.zeros((16, 24, 3), np.uint8), "grid")
    np.testing.assert_array_equal(got[0], grid_by_loop(16, 24, 8, 8))


# segmentation.pictures: the uint8 pictures back from preprocessed images, for each preprocessing of the zoo.
def all_colours() -> np.ndarray:
    """``[3, 16, 16, 3]`` uint8: every value 0..255 in every channel, plus random colours."""
    ramp = np.arange(256, dtype=np.uint8).reshape(16, 16)
    a = np.stack([ramp, ramp[::-1], ramp.T], -1)
    b = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    return np.concatenate([a[None], b])


@pytest.mark.parametrize("which", ["tiny (torchvision)", "synthetic_vgg", "caffe (BGR)"])
def test_pictures_inverts_the_preprocessing_exactly(tiny_model, which):
    model = {"tiny (torchvision)": tiny_model,
             "synthetic_vgg": synthetic_vgg(None),
             "caffe (BGR)": tiny_model.replace(preprocess=imagenet.PREPROCESS["keras"], channel_order="BGR")}[which]
    pics = all_colours()
    x = model.preprocess(pics)
    got = segmentation.pictures(model, x)
    assert got.dtype == np.uint8 and got.shape == pics.shape
    np.testing.assert_array_equal(got, pics)


def test_synthetic_preprocess_is_as_documented():
    pics = all_colours()
    np.testing.assert_allclose(synthetic_vgg(None).preprocess(pics), pics / 255.0 - 0.5, atol=1e-6)


def test_non_affine_preprocessing_cannot_be_inverted(tiny_model):
    gamma = tiny_model.replace(preprocess=lambda p: (np.asarray(p, np.float32) / 255.0) ** 2.2)
    x = gamma.preprocess(all_colours())
    with pytest.raises(InputError, match="not an affine map.*pass label maps"):
        segmentation.pictures(gamma, x)
    with pytest.raises(InputError, match="not an affine map"):
        jaxplain.explain(gamma, x[:, :16, :16], [0, 1, 2], "feature_ablation", segments="slic")
    with pytest.raises(InputError, match="no preprocess to invert"):
        segmentation.pictures(tiny_model.replace(preprocess=None), x)


def tiny_pictures() -> np.ndarray:
    """Two 32x32 pictures for the tiny model: flat regions with noise, the second mirrored."""
    picture, _ = flat_picture(32)
    rng = np.random.default_rng(3)
    a = np.clip(picture + rng.integers(-20, 21, picture.shape), 0, 255).astype(np.uint8)
    b = np.clip(picture[:, ::-1] + rng.integers(-20, 21, picture.shape), 0, 255).astype(np.uint8)
    return np.stack([a, b])


@pytest.mark.parametrize("kind", ["slic", "felzenszwalb(scale=20.0, min_size=10)", "quickshift"])
def test_explain_on_a_kind_equals_explain_on_its_label_maps(tiny_model, kind):
    pics = tiny_pictures()
    x = tiny_model.preprocess(pics)
    labels = jaxplain.segments(pics, kind)
    assert labels.max() + 1 >= 2 and not np.array_equal(labels[0], labels[1])
    t = [2, 5]
    want = jaxplain.explain(tiny_model, x, t, "feature_ablation", segments=labels)
    got = jaxplain.explain(tiny_model, x, t, "feature_ablation", segments=kind)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    for a, m in zip(np.asarray(got), labels):  # one value per segment, painted on its pixels
        for s in np.unique(m):
            assert np.unique(a[m == s]).size == 1
    if kind == "slic":  # the maps are made for the whole batch, then sliced with the images
        sliced = jaxplain.explain(tiny_model, x, t, "feature_ablation", segments=kind, batch_size=1)
        np.testing.assert_allclose(np.asarray(sliced), np.asarray(want), rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_explain_on_a_kind_for_a_bgr_model(tiny_model):
    caffe = tiny_model.replace(preprocess=imagenet.PREPROCESS["keras"], channel_order="BGR")
    pics = tiny_pictures()
    x = caffe.preprocess(pics)
    want = jaxplain.explain(caffe, x, [2, 5], "feature_ablation", segments=jaxplain.segments(pics, "slic"))
    got = jaxplain.explain(caffe, x, [2, 5], "feature_ablation", segments="slic")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_grid_through_explain_takes_cells_from_the_string(tiny_model):
    x = tiny_model.preprocess(tiny_pictures())
    a = jaxplain.explain(tiny_model, x, [2, 5], "feature_ablation", segments="grid(cells=(2, 3))")
    b = jaxplain.explain(tiny_model, x, [2, 5], "feature_ablation", cells=(2, 3))
    c = jaxplain.explain(tiny_model, x, [2, 5], "feature_ablation", segments=jaxplain.segments(tiny_pictures(), "grid", cells=(2, 3)))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
