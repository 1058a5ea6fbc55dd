"""ViT weights in timm's safetensors layout and in google-research's ``.npz`` layout give the
logits (and attention probabilities, and tokens) of a torch ViT written with timm's module names
(``tests/torch_vit.py``), at 224x224 in float32.

The full ViT-B/16 is checked with one forward pass (its safetensors file), and its ``.npz``
conversion parameter by parameter against the safetensors one; every other check runs on a
2-block ViT of width 64 at 224x224 (196 patches, like B/16)."""


import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from jaxplain import models
from jaxplain.models import vit as vit_module
from jaxplain.models import vit_weights
from tests.torch_vit import TorchViT, google_npz, numpy_state

# max |ours - torch| <= TOL * max |torch|: float32 sums of up to 3072 products per layer, 12 blocks
# deep (the bound). The 2-block ViT is held to TIGHT (measured: 4e-7 to 5e-7 on its logits),
# ten times below the 1e-4 to 1.3e-4 that swapping the exact and tanh GELU makes there, so the
# tests tell the two forms apart.
TOL = 1e-4
TIGHT = 1e-5

SMALL = vit_module.ViTConfig(patch=16, depth=2, width=64, heads=4, mlp=128, classes=10, image_size=224,
                             name="vit_small_test")


def _net(cfg, seed, approximate="none"):
    torch.manual_seed(seed)
    return TorchViT(cfg.patch, cfg.depth, cfg.width, cfg.heads, cfg.mlp, cfg.classes, cfg.image_size,
                    approximate).eval()


def _images(n, size, seed):
    return np.random.default_rng(seed).normal(size=(n, 3, size, size)).astype(np.float32)


def _close(got, want, tol=TOL):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    err, scale = np.abs(got - want).max(), np.abs(want).max()
    assert scale > 0 and err <= tol * scale, (err, scale, err / scale)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    net = _net(SMALL, 0)
    d = tmp_path_factory.mktemp("vit")
    sd = numpy_state(net)
    save_file(sd, d / "small-timm.safetensors")
    np.savez(d / "small-google.npz", **google_npz(sd, SMALL.heads))
    return net, d


@pytest.mark.parametrize("fname,source,gelu", [("small-timm.safetensors", "timm", "none"),
                                               ("small-google.npz", "google", "tanh")])
def test_small_vit_logits_attention_and_tokens_match_torch(small, fname, source, gelu):
    net, d = small
    net.set_gelu(gelu)  # google's flax ViT uses the tanh approximation of GELU, timm the exact one
    try:
        _check_small(net, d, fname, source)
    finally:
        net.set_gelu("none")


def _check_small(net, d, fname, source):
    model = vit_weights.vit(SMALL, d / fname)
    assert model.source == source and model.input_size == (224, 224) and model.channel_order == "RGB"
    x = _images(2, 224, seed=1)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    _close(model(x.transpose(0, 2, 3, 1)), want, TIGHT)
    _, acts = model.apply(model.params, x[0].transpose(1, 2, 0))
    for i, blk in enumerate(net.blocks):
        _close(acts[f"blocks.{i}.attn"], blk.attn.probs[0].numpy(), TIGHT)
        _close(acts[f"blocks.{i}"], net.tokens[i][0].numpy(), TIGHT)


def test_gelu_form_matters(small):
    """The two GELU forms differ by more than five times TIGHT on these weights (measured: 9.7e-5
    relative on this image), so the test above tells them apart."""
    net, d = small
    net.set_gelu("none")
    model = vit_weights.vit(SMALL, d / "small-timm.safetensors", source="google")  # tanh GELU
    x = _images(1, 224, seed=1)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = np.asarray(model(x.transpose(0, 2, 3, 1)))
    assert np.abs(got - want).max() > 5 * TIGHT * np.abs(want).max()


def test_pth_file(small, tmp_path):
    net, _ = small
    net.set_gelu("none")
    torch.save(net.state_dict(), tmp_path / "small.pth")
    model = vit_weights.vit(SMALL, tmp_path / "small.pth")
    x = _images(1, 224, seed=2)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    _close(model(x.transpose(0, 2, 3, 1)), want, TIGHT)


def test_vit_b16_matches_torch(tmp_path):
    """The full ViT-B/16: one forward pass of two images from the safetensors file; the .npz
    conversion of the same weights gives the same parameters (and the tanh GELU)."""
    net = _net(models.VIT_B16, 3)
    sd = numpy_state(net)
    save_file(sd, tmp_path / "b16.safetensors")
    np.savez(tmp_path / "b16.npz", **google_npz(sd, 12))
    del sd
    model = models.vit_b16(tmp_path / "b16.safetensors")
    assert model.name == "vit_b16" and model.source == "timm" and len(model.layers) == 1 + 2 * 12 + 2
    x = _images(2, 224, seed=4)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    _close(model(x.transpose(0, 2, 3, 1)), want)
    google = models.vit_b16(tmp_path / "b16.npz")
    assert google.source == "google"
    import jax

    flat_t, flat_g = jax.tree.leaves_with_path(model.params), jax.tree.leaves_with_path(google.params)
    assert [p for p, _ in flat_t] == [p for p, _ in flat_g]
    for (path, a), (_, b) in zip(flat_t, flat_g):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
