"""Colour maps against matplotlib's own tables; maps of every output kind; overlays drawn over the
original picture, the map carried back through the model's resize and crop (positions computed by
hand); colour bars and thumbnails."""

import matplotlib
import numpy as np
import pytest
from PIL import Image

from jaxplain import InputError, registry, viz
from jaxplain.io import load_for_model
from jaxplain.marks import output_of
from jaxplain.models import imagenet
from jaxplain.types import Model

# ---------------------------------------------------------------- colour maps


@pytest.mark.parametrize("name", ["inferno", "RdBu_r", "viridis", "magma", "coolwarm"])
def test_colormap_is_matplotlibs_table(name):
    cmap = matplotlib.colormaps[name]
    assert cmap.N == 256  # so its 256 entries, read by integer index, are the reference
    want = np.array([cmap(i)[:3] for i in range(256)]) * 255
    got = viz.colormap(name)
    assert got.shape == (256, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.round(want).astype(np.uint8))


def test_colormap_defaults_and_unknown_names():
    assert (viz.UNSIGNED, viz.SIGNED) == ("inferno", "RdBu_r")
    ramp = np.linspace(0, 1, 256)[None]
    np.testing.assert_array_equal(viz.heatmap(ramp, percentile=100)[0], viz.colormap("inferno"))
    signed = viz.heatmap(np.linspace(-1, 1, 255)[None], signed=True, percentile=100)[0]
    np.testing.assert_array_equal(signed[[0, 127, 254]], viz.colormap("RdBu_r")[[0, 128, 255]])  # zero: the middle
    np.testing.assert_array_equal(viz.heatmap(ramp, cmap="viridis", percentile=100)[0], viz.colormap("viridis"))
    with pytest.raises(InputError, match="unknown colour map 'heat'"):
        viz.colormap("heat")
    with pytest.raises(InputError, match="unknown colour map 'no_such_map'"):
        viz.overlay(np.zeros((4, 4, 3), np.uint8), np.ones((2, 2)), cmap="no_such_map")


def test_colorbar():
    bar = viz.colorbar()
    assert bar.shape == (12, 256, 3) and bar.dtype == np.uint8
    np.testing.assert_array_equal(bar[5], viz.colormap("inferno"))
    signed = viz.colorbar(signed=True, size=(3, 5))  # samples 0, 64, 128, 191, 255 of the table
    assert signed.shape == (3, 5, 3)
    np.testing.assert_array_equal(signed[0], viz.colormap("RdBu_r")[[0, 64, 128, 191, 255]])
    np.testing.assert_array_equal(signed[0], signed[2])


@pytest.mark.parametrize("shape, want", [((1000, 90), (256, 23)), ((90, 1000), (23, 256)), ((300, 300), (256, 256)),
                                         ((33, 40), (33, 40)), ((256, 100), (256, 100))])
def test_thumbnail_keeps_the_aspect_and_never_enlarges(shape, want):
    rgb = np.random.default_rng(0).integers(0, 256, (*shape, 3)).astype(np.uint8)
    thumb = viz.thumbnail(rgb)
    assert thumb.shape == (*want, 3) and thumb.dtype == np.uint8
    if want == shape:
        np.testing.assert_array_equal(thumb, rgb)
    small = viz.thumbnail(rgb, longest=16).shape[:2]
    assert max(small) == 16 and all(abs(a - s * 16 / max(shape)) < 1 for a, s in zip(small, shape))  # within a pixel


# ---------------------------------------------------------------- every output kind


def test_as_map_by_output_kind():
    rng = np.random.default_rng(1)
    pixels = rng.normal(size=(6, 5, 3))
    np.testing.assert_allclose(viz.as_map(pixels, "pixels"), np.abs(pixels).max(-1), rtol=1e-6)
    np.testing.assert_allclose(viz.as_map(pixels, "pixels", "sum"), pixels.sum(-1), rtol=1e-5, atol=1e-6)
    cam = rng.normal(size=(7, 7))
    np.testing.assert_array_equal(viz.as_map(cam, "map"), cam)
    with pytest.raises(InputError, match=r"layer-shaped attribution \(14, 14, 8\) .*use it from Python"):
        viz.as_map(rng.normal(size=(14, 14, 8)), "layer")
    with pytest.raises(InputError, match=r"'pixels' attribution is one image's \[H, W, C\], got shape \(6, 5\)"):
        viz.as_map(cam[:6, :5], "pixels")
    eight = rng.normal(size=(6, 5, 8))  # an 8-channel model's pixels: reduced as any C
    np.testing.assert_allclose(viz.as_map(eight, "pixels"), np.abs(eight).max(-1), rtol=1e-6)
    with pytest.raises(InputError, match=r"'map' attribution is one image's \[h, w\], got shape \(6, 5, 3\)"):
        viz.as_map(pixels, "map")
    with pytest.raises(InputError, match="unknown output kind 'cam'"):
        viz.as_map(cam, "cam")
    # The kinds the registry's methods declare are the ones as_map knows.
    kinds = {name: output_of(fn, {}) for name, fn in registry.METHODS.items()}
    assert (kinds["gradient"], kinds["grad_cam"], kinds["rise"], kinds["layer_integrated_gradients"]) == (
        "pixels", "map", "map", "layer")


def test_overlay_refuses_bad_boxes_and_maps():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(InputError, match="box must be finite"):
        viz.overlay(image, np.ones((2, 2)), box=(4, 0, 2, 8))
    with pytest.raises(InputError, match=r"box must be \(left, top, right, bottom\)"):
        viz.overlay(image, np.ones((2, 2)), box=(0, 0, 8))
    with pytest.raises(InputError, match="1 NaN or infinite values"):
        viz.overlay(image, np.array([[0.0, np.nan], [1.0, 2.0]]))


# ---------------------------------------------------------------- overlays over the original picture


def _model(source, input_size=(224, 224)):
    """A Model built by hand with ``source``'s resize and input box (never run)."""
    return Model(apply=None, params=None, layers=(), preprocess=imagenet.PREPROCESS[source], input_size=input_size,
                 resize=imagenet.RESIZE[source], input_box=imagenet.INPUT_BOX[source])


def _grey_photo(tmp_path, value=200):
    path = tmp_path / "photo.png"
    Image.fromarray(np.full((240, 320, 3), value, np.uint8)).save(path)  # 320 wide, 240 high
    return path


def _spot(y, x, size=(224, 224)):
    m = np.zeros(size)
    m[y, x] = 1.0
    return m


def _peak(drawn, picture):
    """(row, column) where the overlay departs most from the picture (by more than dimming it)."""
    change = np.abs(drawn.astype(int) - picture.astype(int)).sum(-1)
    change[(drawn == np.round(picture * viz.OUTSIDE)).all(-1)] = 0
    return np.unravel_index(np.argmax(change), change.shape)


def test_torchvision_overlay_is_drawn_where_the_crop_was(tmp_path):
    loaded = load_for_model(_grey_photo(tmp_path), _model("torchvision"))
    assert loaded.original.shape == (240, 320, 3) and loaded.image.shape == (224, 224, 3)
    # By hand: the shorter side 240 -> 256, the longer int(256 * 320/240) = 341; the centre crop's
    # left round((341 - 224)/2) = round(58.5) = 58, top (256 - 224)/2 = 16; back in the original's
    # pixels: x * 320/341, y * 240/256.
    sx, sy = 320 / 341, 240 / 256
    np.testing.assert_allclose(loaded.box, (58 * sx, 16 * sy, 282 * sx, 240 * sy), rtol=1e-12)
    drawn = viz.overlay(loaded.original, _spot(100, 50), box=loaded.box)
    assert drawn.shape == (240, 320, 3)
    # The map's pixel (100, 50), centre (100.5, 50.5) in the input, is at ((16 + 100.5) * sy, (58 + 50.5) * sx)
    # = (109.22, 101.82) in the original: the pixel whose centre is nearest is (109, 101).
    y, x = _peak(drawn, loaded.original)
    assert abs(y + 0.5 - 116.5 * sy) <= 1 and abs(x + 0.5 - 108.5 * sx) <= 1
    # Outside the box (x < 54.43 or x >= 264.63, y < 15 or y >= 225, by pixel centres) the picture is dimmed.
    dim = round(200 * viz.OUTSIDE)
    for outside in (drawn[:, :54], drawn[:, 265:], drawn[:15], drawn[225:]):
        assert (outside == dim).all()
    inside = drawn[15:225, 54:265].copy()
    inside[109 - 15 - 8: 109 - 15 + 9, 101 - 54 - 8: 101 - 54 + 9] = 200  # the spot's neighbourhood
    assert (inside == 200).all()  # a zero map leaves the picture as it is


def test_keras_squash_stretches_the_map_over_the_whole_picture(tmp_path):
    loaded = load_for_model(_grey_photo(tmp_path), _model("keras"))
    assert loaded.box == (0.0, 0.0, 320.0, 240.0)
    drawn = viz.overlay(loaded.original, _spot(100, 50), box=loaded.box)
    np.testing.assert_array_equal(drawn, viz.overlay(loaded.original, _spot(100, 50)))  # box None: the same
    # Squashed 320x240 -> 224x224: the map's (100.5, 50.5) is at (100.5 * 240/224, 50.5 * 320/224) = (107.68, 72.14).
    y, x = _peak(drawn, loaded.original)
    assert abs(y + 0.5 - 100.5 * 240 / 224) <= 1 and abs(x + 0.5 - 50.5 * 320 / 224) <= 1
    assert (drawn[[0, 0, -1, -1], [0, -1, 0, -1]] == 200).all()  # nothing dimmed


def test_overlay_without_a_box_matches_pillows_resize_of_the_map():
    """Upscaled over the whole picture, the placed map is Pillow's bilinear resize (as before boxes)."""
    m = np.random.default_rng(2).random((14, 14)).astype(np.float32)
    placed, inside = viz.place(m, (224, 300))
    np.testing.assert_allclose(placed, viz.resize_map(m, (224, 300)), atol=1e-5)
    assert inside.all()


def test_without_matplotlib_the_message_names_the_install(monkeypatch):
    import sys

    from jaxplain import MissingDependency

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    viz._table.cache_clear()
    try:
        with pytest.raises(MissingDependency, match="colour maps need matplotlib: pip install matplotlib"):
            viz.colormap("magma")
    finally:
        viz._table.cache_clear()
