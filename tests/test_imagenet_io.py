"""Labels, preprocessing and image loading against Keras and hand-computed geometry; the resize
and channel order a Model carries; pictures too large to decode."""

import math
import struct
import zlib

import keras
import numpy as np
import pytest
import torch
from PIL import Image

from jaxplain import ImageError, InputError, models, viz
from jaxplain.io import load_for_model, load_image, read_image
from jaxplain.models import imagenet
from jaxplain.types import Model


def test_classes():
    c = imagenet.classes()
    assert len(c) == 1000 and len({w for w, _ in c}) == 1000
    assert c[0] == ("n01440764", "tench")
    assert c[281] == ("n02123045", "tabby")
    assert c[999] == ("n15075141", "toilet tissue")


def test_decode():
    logits = np.zeros((2, 1000), np.float32)
    logits[0, [3, 7, 281]] = [5.0, 4.0, 9.0]
    logits[1, 999] = 1.0
    top = imagenet.decode(logits, top=3)
    assert [t[1] for t in top[0]] == ["tabby", "tiger shark", imagenet.classes()[7][1]]
    p = np.exp(9.0) / (np.exp(9.0) + np.exp(5.0) + np.exp(4.0) + 997)
    assert top[0][0][2] == pytest.approx(p, rel=1e-6)
    assert top[1][0][1] == "toilet tissue"
    with pytest.raises(InputError):
        imagenet.decode(np.zeros((1, 10)))


def test_torch_preprocessing_is_normalize():
    img = np.random.default_rng(0).integers(0, 256, (2, 5, 5, 3)).astype(np.uint8)
    t = torch.tensor(img, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    want = ((t - mean) / std).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(imagenet.preprocess_torch(img), want, rtol=1e-5, atol=1e-5)


def _zoo_model(source):
    """A model as the zoo builds it for ``source`` (VGG16's depth and head, one channel a layer)."""
    cfg = models.VGGConfig(widths=(1, 1, 1, 1, 1), fc=2, classes=2, head=source, name="narrow")
    return models.build(cfg, models.random_params(cfg), source=source)


def _keras_model():
    return _zoo_model("keras")


def _tv_model():
    return _zoo_model("torchvision")


def test_zoo_models_carry_their_sources_facts():
    k, t = _keras_model(), _tv_model()
    assert (k.resize, k.input_box, k.channel_order, k.input_size) == (imagenet.resize_keras, None, "BGR", (224, 224))
    assert (t.resize, t.input_box, t.channel_order, t.input_size) == (
        imagenet.resize_torchvision, imagenet.box_torchvision, "RGB", None)


def test_keras_loading_matches_keras_load_img(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 256, (300, 410, 3)).astype(np.uint8)).save(path)
    want = np.asarray(keras.utils.load_img(path, target_size=(224, 224)), np.uint8)
    np.testing.assert_array_equal(load_image(path, _keras_model()), want)


def test_torchvision_resize_and_centre_crop(tmp_path):
    # 300x400 (h x w): shorter side 300 -> 256, longer int(256*400/300) = 341;
    # crop top round((256-224)/2) = 16, left round((341-224)/2) = round(58.5) = 58.
    img = np.zeros((300, 400, 3), np.uint8)
    img[:, :, 0] = np.arange(400)[None, :] * 255 // 399  # red ramps left to right
    img[:, :, 1] = np.arange(300)[:, None] * 255 // 299  # green ramps top to bottom
    path = tmp_path / "r.png"
    Image.fromarray(img).save(path)
    got = load_image(path, _tv_model())
    assert got.shape == (224, 224, 3)
    resized = np.asarray(Image.fromarray(img).resize((341, 256), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(got, resized[16:240, 58:282])


# Original sizes (h, w): portrait, landscape, square, odd, tiny, and far from square.
BOX_SIZES = [(400, 300), (300, 400), (256, 256), (333, 517), (33, 40), (40, 33), (90, 1000), (1000, 90), (1200, 1600)]
MARKERS = [((0.2, 0.25), 0), ((0.5, 0.6), 1), ((0.75, 0.8), 2)]  # (fractions (y, x) of the box, colour channel)


@pytest.mark.parametrize("input_size", [(224, 224), (128, 128)])
@pytest.mark.parametrize("original", BOX_SIZES)
def test_box_torchvision_follows_the_real_resize(original, input_size):
    """Blocks painted at known places of the original land, after the REAL resize_torchvision, where
    box_torchvision's box says (their centroids, weighted by the block's colour, within a quarter
    pixel of the input)."""
    h, w = original
    H, W = input_size
    left, top, right, bottom = imagenet.box_torchvision(original, input_size)
    assert 0 <= left < right <= w and 0 <= top < bottom <= h
    side = max(2, int(0.12 * min(right - left, bottom - top)))
    img = np.zeros((h, w, 3), np.uint8)
    want = {}
    for (fy, fx), channel in MARKERS:
        y0, x0 = int(top + fy * (bottom - top)), int(left + fx * (right - left))
        img[y0:y0 + side, x0:x0 + side, channel] = 255
        # The block's centre, in the original's pixels, mapped linearly from the box onto the input.
        want[channel] = ((y0 + side / 2 - top) * H / (bottom - top), (x0 + side / 2 - left) * W / (right - left))
    got = np.asarray(imagenet.resize_torchvision(Image.fromarray(img), input_size), np.float64)
    assert got.shape == (H, W, 3)
    ys, xs = np.mgrid[:H, :W] + 0.5  # pixel centres
    for channel, (wy, wx) in want.items():
        weight = got[..., channel]
        cy, cx = (weight * ys).sum() / weight.sum(), (weight * xs).sum() / weight.sum()
        # Within a quarter pixel (seen: under 0.05): a crop off by one resized pixel moves a block by one.
        assert abs(cy - wy) <= 0.25 and abs(cx - wx) <= 0.25, (channel, (cy, cx), (wy, wx))


def test_box_torchvision_by_hand():
    # 300x400 (h x w): 256x341, crop left 58, top 16 (test above); scaled back by 400/341 and 300/256.
    np.testing.assert_allclose(imagenet.box_torchvision((300, 400), (224, 224)),
                               (58 * 400 / 341, 16 * 300 / 256, 282 * 400 / 341, 240 * 300 / 256), rtol=1e-12)
    # A square picture: 256x256, crop 16 each side; scaled back by 512/256.
    np.testing.assert_allclose(imagenet.box_torchvision((512, 512), (224, 224)), (32, 32, 480, 480), rtol=1e-12)


def test_load_for_model_reads_once_and_gives_the_box(tmp_path, monkeypatch):
    path = tmp_path / "p.png"
    img = np.random.default_rng(4).integers(0, 256, (300, 400, 3)).astype(np.uint8)
    Image.fromarray(img).save(path)
    from jaxplain import io

    reads = []
    real = io.read_image
    monkeypatch.setattr(io, "read_image", lambda p, *mode: reads.append(p) or real(p, *mode))
    loaded = load_for_model(path, _tv_model())
    assert len(reads) == 1
    np.testing.assert_array_equal(loaded.original, img)
    resized = imagenet.resize_torchvision(Image.fromarray(img), (224, 224))
    np.testing.assert_array_equal(loaded.image, np.asarray(resized))
    assert loaded.box == imagenet.box_torchvision((300, 400), (224, 224))
    # No input_box (the Keras squash, a bare model, no model): the whole picture.
    assert load_for_model(path, _keras_model()).box == (0.0, 0.0, 400.0, 300.0)
    assert load_for_model(path, size=(16, 24)).box == (0.0, 0.0, 400.0, 300.0)
    np.testing.assert_array_equal(load_image(path, _tv_model()), loaded.image)


def test_exif_orientation(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:5, :5] = 255  # a white marker top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "e.jpg"
    Image.fromarray(img).save(path, exif=exif, quality=100)
    up = np.asarray(read_image(path))
    assert up.shape == (40, 20, 3)
    assert up[:5, -5:].mean() > 200 and up[:5, :5].mean() < 50  # marker now top-right


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1"])
def test_modes(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(2).integers(0, 256, (16, 16, 3)).astype(np.uint8))
    img = rgb.convert(mode)
    path = tmp_path / ("m.jpg" if mode == "CMYK" else "m.png")
    img.save(path)
    a = np.asarray(read_image(path))
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8
    if mode == "RGBA":
        np.testing.assert_array_equal(a, np.asarray(rgb))


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (8, 8), 1)
    img.putpalette([0, 0, 0, 200, 10, 20] + [0] * 762)
    path = tmp_path / "t.png"
    img.save(path, transparency=0)
    assert tuple(np.asarray(read_image(path))[0, 0]) == (200, 10, 20)


def test_16_bit(tmp_path):
    a = np.array([[0, 257, 32896, 65535]], np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(a).save(path)
    got = np.asarray(read_image(path))
    np.testing.assert_array_equal(got[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(got[..., 0], got[..., 2])


@pytest.mark.parametrize("content", [b"", b"definitely not an image", None])
def test_bad_images(tmp_path, content):
    path = tmp_path / "bad.jpg"
    if content is None:  # a truncated real JPEG
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match="bad.jpg"):
        read_image(path)
    with pytest.raises(ImageError, match="no such file"):
        read_image(tmp_path / "missing.png")


# ---------------------------------------------------------------- a Model's own resize and channel order


def _bare_model(**fields):
    return Model(apply=None, params=None, layers=(), preprocess=imagenet.preprocess_torch, input_size=None, **fields)


def test_load_image_uses_the_models_resize(tmp_path):
    path = tmp_path / "s.png"
    img = np.random.default_rng(3).integers(0, 256, (40, 60, 3)).astype(np.uint8)
    Image.fromarray(img).save(path)
    seen = []

    def top_left(picture, size):  # crop instead of resizing: nothing Pillow's resizes give
        seen.append((picture.size, size))
        return picture.crop((0, 0, size[1], size[0]))

    got = load_image(path, _bare_model(resize=top_left), size=(16, 24))
    assert seen == [((60, 40), (16, 24))]  # the whole picture in, (H, W) asked for
    np.testing.assert_array_equal(got, img[:16, :24])
    # No resize on the model (or no model): a bilinear resize to (H, W).
    want = np.asarray(Image.fromarray(img).resize((24, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(load_image(path, _bare_model(), size=(16, 24)), want)
    np.testing.assert_array_equal(load_image(path, size=(16, 24)), want)


def test_resize_of_the_wrong_size_and_bad_fields(tmp_path):
    path = tmp_path / "s.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
    half = _bare_model(resize=lambda p, size: p.resize((size[1] // 2, size[0] // 2)))
    with pytest.raises(InputError, match=r"s.png: the model's resize gave a 4x6 picture, not 8x12"):
        load_image(path, half, size=(8, 12))
    with pytest.raises(InputError, match="channel_order must be 'RGB' or 'BGR', got 'GBR'"):
        _bare_model(channel_order="GBR")
    with pytest.raises(InputError, match="resize must be a function"):
        _bare_model(resize="nearest")
    with pytest.raises(InputError, match=r"input_box must be a function \(\(h, w\), \(H, W\)\)"):
        _bare_model(input_box=(0, 0, 8, 8))
    flat = _bare_model(input_box=lambda original, size: (0, 0, 8, 0))
    with pytest.raises(InputError, match=r"s.png: the model's input_box gave \(0.0, 0.0, 8.0, 0.0\)"):
        load_for_model(path, flat, size=(8, 8))


def test_filters_read_the_models_channel_order():
    # Filter 0 weighs only input channel 0, filter 1 only channel 2 (1x1 kernels).
    kernel = np.zeros((1, 1, 3, 2), np.float32)
    kernel[0, 0, 0, 0] = kernel[0, 0, 2, 1] = 1.0
    pixels = {}
    for order in ("RGB", "BGR"):
        m = _bare_model(channel_order=order).replace(params={"conv": {"kernel": kernel}}, layers=("conv",))
        pic = viz.filters(m, cols=2, scale=1)  # 2-pixel white padding around 1x1 tiles
        pixels[order] = [tuple(pic[2, 2]), tuple(pic[2, 5])]
    assert pixels["RGB"] == [(255, 0, 0), (0, 0, 255)]  # channel 0 is red
    assert pixels["BGR"] == [(0, 0, 255), (255, 0, 0)]  # channel 0 is blue


# ---------------------------------------------------------------- decompression bombs


def _png_header(path, width, height):
    """A PNG of signature, IHDR (8-bit RGB) and IEND only: its size is claimed, nothing is stored."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_is_an_image_error(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    assert 20000 * 20000 > 2 * limit  # Pillow raises its DecompressionBombError here
    path = _png_header(tmp_path / "bomb.png", 20000, 20000)
    with pytest.raises(ImageError, match=rf"bomb.png: 400000000 pixels, above the limit of {limit} pixels"):
        read_image(path)


def test_just_above_max_image_pixels_is_refused(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    side = math.isqrt(limit) + 1
    assert limit < side * side <= 2 * limit  # Pillow only warns here
    path = _png_header(tmp_path / "big.png", side, side)
    with pytest.raises(ImageError, match=rf"big.png: {side * side} pixels, above the limit of {limit} pixels"):
        read_image(path)
    # The same header at a small size gets past the size check and fails for lack of data.
    with pytest.raises(ImageError, match="small.png: not a readable image"):
        read_image(_png_header(tmp_path / "small.png", side // 100, side // 100))


# ---------------------------------------------------------------- degenerate pictures and masks


def _random_picture(path, h, w, seed=0, **save):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)).save(path, **save)
    return path


@pytest.mark.parametrize("h, w", [(1, 1), (3, 240), (1, 60000), (240, 7)])
def test_pictures_under_the_minimum_side_are_refused(tmp_path, h, w):
    from jaxplain.io import MIN_SIDE

    assert MIN_SIDE == 8
    path = _random_picture(tmp_path / "small.png", h, w)
    with pytest.raises(ImageError, match=rf"small.png: a {h}x{w} picture \(height x width\) is refused: a side under 8 "
                                         r"pixels has too little to explain once stretched to 224x224"):
        load_for_model(path)


def test_pictures_far_from_square_are_warned(tmp_path, recwarn):
    from jaxplain import InputWarning

    path = _random_picture(tmp_path / "wide.png", 20, 400)
    with pytest.warns(InputWarning, match=r"wide.png: a 20x400 picture \(height x width\), sides more than 10 times "
                                          r"apart: squashed to 224x224$"):
        load_for_model(path)
    # torchvision's resize (shorter side to 256: 256x5120) and centre crop keep 224/256 x 224/5120 of it.
    kept = (224 / 256) * (224 / int(256 * 400 / 20))
    with pytest.warns(InputWarning, match=rf"the model's crop keeps {kept:.0%} of it$"):
        load_for_model(path, _tv_model())
    recwarn.clear()
    for h, w in [(8, 80), (300, 40)]:  # 10:1 and 7.5:1: used as they are, without a word
        load_for_model(_random_picture(tmp_path / f"{h}x{w}.png", h, w))
    assert not [w for w in recwarn if issubclass(w.category, InputWarning)]


@pytest.mark.parametrize("name, what", [("anim.gif", "an animated GIF of 3 frames"),
                                        ("pages.tif", "a multipage TIFF of 3 pages")])
def test_several_frames_first_used_with_a_warning(tmp_path, name, what):
    from jaxplain import InputWarning

    frames = [np.random.default_rng(s).integers(0, 256, (12, 16, 3)).astype(np.uint8) for s in range(3)]
    if name.endswith(".gif"):  # a GIF of one colour per frame: its palette keeps the colours exact
        frames = [np.full((12, 16, 3), (40 * s, 200 - 50 * s, 90), np.uint8) for s in range(3)]
    pictures = [Image.fromarray(f) for f in frames]
    path = tmp_path / name
    pictures[0].save(path, save_all=True, append_images=pictures[1:])
    with pytest.warns(InputWarning, match=rf"{name}: {what}; only the first is used"):
        got = np.asarray(read_image(path))
    np.testing.assert_array_equal(got, frames[0])


def test_a_mask_of_another_size_is_refused(tmp_path):
    from jaxplain.io import load_mask

    picture = load_for_model(_random_picture(tmp_path / "p.png", 32, 48), size=(16, 16))
    small = np.zeros((10, 10), np.uint8)
    Image.fromarray(small).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match=r"small.png: a 10x10 mask for a 32x48 picture \(height x width\): a mask must "
                                         "be its picture's size, pixel for pixel"):
        load_mask(tmp_path / "small.png", picture, size=(16, 16))
    mask = np.zeros((32, 48), np.uint8)
    mask[8:24, 24:] = 255  # the right half of the middle rows
    Image.fromarray(mask).save(tmp_path / "m.png")
    got = load_mask(tmp_path / "m.png", picture, size=(16, 16))
    want = np.zeros((16, 16), bool)
    want[4:12, 8:] = True  # 32 -> 16 rows (x1/2), 48 -> 16 columns (x1/3): the same region
    np.testing.assert_array_equal(got, want)


def test_evaluate_refuses_a_mask_of_another_size(tmp_path, capsys):
    from jaxplain import cli

    pic = _random_picture(tmp_path / "p.png", 40, 50)
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "m.png")
    code = cli.main(["evaluate", str(pic), "--masks", str(tmp_path / "m.png"), "--model", "synthetic_vgg", "--weights",
                     "random", "--methods", "gradient", "--metrics", "pointing_game", "--json", str(tmp_path / "e.json")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and err[0].startswith(f"jaxplain: failed {tmp_path / 'm.png'}: a 20x20 mask for a 40x50 picture")
    assert err[-1] == "jaxplain: error: none of the images could be read"
