"""Transformers in the kernel: token layers seen as their patch grid (CAMs and layer methods on a
ViT), attention layers refused where a spatial layer is needed, and the two attention methods
against plain NumPy implementations of the papers' formulas.

The reference side is the torch twin of tests/torch_vit.py with the same weights (timm's layout
converted by the loader already tested for parity in test_vit_parity.py): torch autograd gives
the attention probabilities, the block outputs and their gradients with respect to the target
logit, and NumPy (float64) applies the formulas. Nothing on the reference side calls jaxplain.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import jaxplain
from jaxplain import InputError
from jaxplain.models import vit as vit_module
from jaxplain.models import vit_weights
from jaxplain.models.vit import ViTConfig
from jaxplain.engine.tokens import grid_view
from tests.torch_vit import TorchViT, numpy_state

CFG = ViTConfig(patch=8, depth=2, width=32, heads=4, mlp=64, classes=10, image_size=32, name="twin_vit")
G = CFG.grid  # 4: a 4x4 grid of patches, T = 17 tokens with the class token first
TARGETS = np.array([3, 7])
# float32 on both sides (the NumPy formulas in float64 on torch's float32 values); torch and XLA
# order their reductions differently. Measured worst differences, as a fraction of the reference
# map's largest magnitude, are given per test (all under 9e-7); the bound leaves 10x room.
RTOL = 1e-5


@pytest.fixture(scope="module")
def twin():
    torch.manual_seed(5)
    net = TorchViT(patch=8, depth=2, width=32, heads=4, mlp=64, classes=10, image_size=32).eval()
    params = vit_weights.convert(numpy_state(net), CFG, "timm")
    return net, vit_module.build(CFG, params, source="timm")


@pytest.fixture(scope="module")
def xs():
    return np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)


def torch_pass(net, x, target):
    """Float64 NumPy copies of the attention probabilities ``[heads, T, T]``, the block outputs
    ``[T, D]`` and the gradients of ``logits[target]`` with respect to both, per block."""
    logits = net(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))
    probs = [blk.attn.probs for blk in net.blocks]
    for t in (*probs, *net.tokens):
        t.retain_grad()
    logits[0, int(target)].backward()
    net.zero_grad()

    def f64(ts, grad=False):
        return [(t.grad if grad else t).detach().numpy()[0].astype(np.float64) for t in ts]

    return dict(probs=f64(probs), probs_grad=f64(probs, True), tokens=f64(net.tokens), tokens_grad=f64(net.tokens, True))


def upsample(m):
    """``[g, g] -> [32, 32]`` bilinear with half-pixel centres (torch's ``align_corners=False``)."""
    t = torch.from_numpy(np.asarray(m, np.float32)[None, None])
    return F.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False).numpy()[0, 0]


def numpy_rollout(probs, fusion="mean", discard_ratio=0.0):
    """Abnar & Zuidema 2020: ``A' = 0.5 A + 0.5 I`` per block (heads fused), rows renormalised,
    ``R = A'_L ... A'_1``; the class token's row over the patches. ``discard_ratio`` zeroes the
    smallest entries of each fused matrix but the class token's self-attention."""
    t = probs[0].shape[-1]
    r = np.eye(t)
    for a in probs:
        f = {"mean": a.mean(0), "max": a.max(0), "min": a.min(0)}[fusion].copy()
        flat = f.reshape(-1)
        drop = np.argsort(flat, kind="stable")[: int(discard_ratio * flat.size)]
        flat[drop[drop != 0]] = 0.0
        a2 = 0.5 * flat.reshape(t, t) + 0.5 * np.eye(t)
        r = (a2 / a2.sum(-1, keepdims=True)) @ r
    return r[0, 1:].reshape(G, G)


def numpy_chefer(probs, grads):
    """Chefer, Gur & Wolf 2021 (ICCV), self-attention rule: ``R = I``; per block in order
    ``Abar = mean_h (grad * A)^+``, ``R = R + Abar R``; the class token's row over the patches."""
    t = probs[0].shape[-1]
    r = np.eye(t)
    for a, g in zip(probs, grads):
        abar = np.maximum(g * a, 0.0).mean(0)
        r = r + abar @ r
    return r[0, 1:].reshape(G, G)


def numpy_grad_cam(act, grad):
    """Grad-CAM on a token layer: patch tokens ``[T-1, D]`` (class token dropped) as the grid
    ``[g, g, D]``, channel weights the mean gradient, ReLU of the weighted sum."""
    a, g = act[1:].reshape(G, G, -1), grad[1:].reshape(G, G, -1)
    return np.maximum((a * g.mean((0, 1))).sum(-1), 0.0)


def close(got, want, rtol=RTOL):
    """Within ``rtol`` of the reference's largest magnitude, element by element."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max() / np.abs(want).max()
    assert err < rtol, err


@pytest.fixture(scope="module")
def ref(twin, xs):
    net, _ = twin
    return [torch_pass(net, x, t) for x, t in zip(xs, TARGETS)]


def test_the_twin_is_the_same_network(twin, xs, ref):
    net, model = twin
    want = net(torch.from_numpy(xs.transpose(0, 3, 1, 2).copy())).detach().numpy()
    close(jaxplain.predict(model, xs), want)  # measured: 7.4e-7 (logits and attention)
    _, acts = model.apply(model.params, jnp.asarray(xs[0]))
    close(acts["blocks.1.attn"], ref[0]["probs"][1])


# ---------------------------------------------------------------- token layers as a grid


def test_grid_view_shapes_and_taps(twin, xs):
    _, model = twin
    view = grid_view(model)
    assert view.token_layers == {} and grid_view(view) is view and view.attention_layers == model.attention_layers
    assert grid_view(model).apply is view.apply  # one function per model: explain's compiled calls are reused
    logits, acts = view.apply(view.params, jnp.asarray(xs[0]))
    raw = model.apply(model.params, jnp.asarray(xs[0]))[1]
    assert acts["patch_embed"].shape == (G, G, 32) and acts["blocks.1"].shape == (G, G, 32)
    assert acts["norm"].shape == (G, G, 32) and acts["blocks.0.attn"].shape == (4, 17, 17)
    np.testing.assert_array_equal(acts["blocks.0"], raw["blocks.0"][1:].reshape(G, G, 32))
    np.testing.assert_array_equal(acts["patch_embed"], raw["patch_embed"].reshape(G, G, 32))
    tap = jnp.asarray(np.random.default_rng(0).normal(size=(G, G, 32)).astype(np.float32))
    want = model.apply(model.params, jnp.asarray(xs[0]), taps={"blocks.0": jnp.concatenate([jnp.zeros((1, 32)),
                                                                                              tap.reshape(-1, 32)])})[0]
    np.testing.assert_array_equal(view.apply(view.params, jnp.asarray(xs[0]), taps={"blocks.0": tap})[0], want)
    with pytest.raises(InputError, match=r"tap on token layer 'blocks.0' is on its patch grid \[4, 4, ...\], got shape \(17, 32\)"):
        view.apply(view.params, jnp.asarray(xs[0]), taps={"blocks.0": jnp.zeros((17, 32))})


def test_settings_see_the_grid(twin, xs):
    """The command line resolves a method's settings on the model before explain runs: the layer
    checks there see token layers as their grid too (the default CAM layer and a named one)."""
    from jaxplain.engine.settings import resolve_for_model
    from jaxplain.engine.shapes import layer_shapes

    _, model = twin
    assert layer_shapes(model, xs.shape[1:])["blocks.0"] == (G, G, 32)
    for layer in (None, "blocks.1"):
        s = resolve_for_model(jaxplain.grad_cam, model, xs.shape[1:], {"layer": layer})
        assert s["layer"] == (layer or model.cam_layer)


def test_grad_cam_on_a_token_layer_equals_torch(twin, xs, ref):
    """Grad-CAM on ``blocks.0`` (the default: the last block's input) against torch's gradients.
    Measured: 6.9e-7 of the map's maximum (upsampled and not)."""
    _, model = twin
    for layer, block in (("blocks.0", 0), (None, 0)):
        got = jaxplain.explain(model, xs, TARGETS, "grad_cam", layer=layer)
        small = jaxplain.explain(model, xs, TARGETS, "grad_cam", layer=layer, upsample=False)
        for i, r in enumerate(ref):
            want = numpy_grad_cam(r["tokens"][block], r["tokens_grad"][block])
            assert want.max() > 0
            close(small[i], want)
            close(got[i], upsample(want))


def test_the_last_blocks_patch_tokens_have_no_gradient(twin, xs, ref):
    """The head reads only the class token and LayerNorm is per token: on the last block's output
    every patch token's gradient is exactly zero (torch's too), so a gradient CAM there is zero;
    hence the ViT's default CAM layer is the block before."""
    _, model = twin
    assert model.cam_layer == "blocks.0"
    for r in ref:
        assert not r["tokens_grad"][1][1:].any()
    assert not np.asarray(jaxplain.explain(model, xs, TARGETS, "grad_cam", layer="blocks.1")).any()


def test_token_grid_under_bfloat16(twin, xs):
    """The view's zero rows for the class token take the tap's dtype (strict promotion)."""
    _, model = twin
    a = np.asarray(jaxplain.explain(model, xs, TARGETS, "grad_cam", precision="bfloat16"))
    b = np.asarray(jaxplain.explain(model, xs, TARGETS, "transformer_attribution", precision="bfloat16"))
    assert a.shape == b.shape == (2, 32, 32) and np.isfinite(a).all() and np.isfinite(b).all()


@pytest.mark.parametrize("method, settings, shape", [
    ("grad_cam_pp", {}, (32, 32)),
    ("score_cam", dict(chunk=8), (32, 32)),
    ("eigen_cam", {}, (32, 32)),
    ("layer_cam", dict(layer="patch_embed"), (32, 32)),
    ("layer_gradient_x_activation", {}, (G, G, 32)),
    ("layer_integrated_gradients", dict(steps=4), (G, G, 32)),
    ("neuron_gradient", dict(neuron=(1, 2, 5)), (32, 32, 3)),
])
def test_spatial_methods_run_on_token_layers(twin, xs, method, settings, shape):
    _, model = twin
    a = np.asarray(jaxplain.explain(model, xs, TARGETS, method, **settings))
    assert a.shape == (2, *shape) and np.isfinite(a).all() and np.abs(a).max() > 0


def test_layer_cam_on_a_token_layer_equals_torch(twin, xs, ref):
    """LayerCAM ``relu(sum_k relu(G_k) A_k)`` on the grid: per-position weights meet the same
    reshape. Measured: 8.1e-7 of the maximum. (Not HiResCAM: a patch token of a pre-norm block's
    input reaches the logits only through the next block's LayerNorm, which is scale-invariant, so
    ``sum_k G_k A_k = 0`` at every patch: HiResCAM there is zero up to rounding, in torch too.)"""
    _, model = twin
    got = jaxplain.explain(model, xs, TARGETS, "layer_cam", layer="blocks.0", upsample=False)
    for i, r in enumerate(ref):
        a, g = r["tokens"][0][1:].reshape(G, G, -1), r["tokens_grad"][0][1:].reshape(G, G, -1)
        assert np.abs((a * g).sum(-1)).max() < 1e-6 * np.abs(a * g).sum(-1).max()
        close(got[i], np.maximum((a * np.maximum(g, 0)).sum(-1), 0.0))


# ---------------------------------------------------------------- the attention methods


@pytest.mark.parametrize("fusion, discard", [("mean", 0.0), ("max", 0.0), ("min", 0.0), ("mean", 0.5), ("max", 0.9)])
def test_attention_rollout_equals_numpy(twin, xs, ref, fusion, discard):
    """Against the paper's formulas on torch's attention. Measured: 4.6e-7 of the maximum."""
    _, model = twin
    s = dict(head_fusion=fusion, discard_ratio=discard)
    small = jaxplain.explain(model, xs, None, "attention_rollout", upsample=False, **s)
    big = jaxplain.explain(model, xs, None, "attention_rollout", **s)
    for i, r in enumerate(ref):
        want = numpy_rollout(r["probs"], fusion, discard)
        close(small[i], want)
        close(big[i], upsample(want))


def test_attention_rollout_ignores_the_target(twin, xs):
    _, model = twin
    a = jaxplain.explain(model, xs, [0, 1], "attention_rollout")
    np.testing.assert_array_equal(a, jaxplain.explain(model, xs, [5, 9], "attention_rollout"))


def test_transformer_attribution_equals_numpy(twin, xs, ref):
    """Against Chefer et al.'s rule on torch's attention and its gradients. Measured: 5.7e-7."""
    _, model = twin
    small = jaxplain.explain(model, xs, TARGETS, "transformer_attribution", upsample=False)
    big = jaxplain.explain(model, xs, TARGETS, "transformer_attribution")
    for i, r in enumerate(ref):
        want = numpy_chefer(r["probs"], r["probs_grad"])
        assert want.max() > 0
        close(small[i], want)
        close(big[i], upsample(want))
    other = jaxplain.explain(model, xs, TARGETS[::-1], "transformer_attribution")
    assert not np.allclose(other, big)  # it explains a class


def test_one_block_of_attention(twin, xs, ref):
    """``attention`` may name a subset of the declared layers. Measured: 8.6e-7."""
    _, model = twin
    got = jaxplain.explain(model, xs, TARGETS, "transformer_attribution", attention=["blocks.1.attn"], upsample=False)
    for i, r in enumerate(ref):
        close(got[i], numpy_chefer(r["probs"][1:], r["probs_grad"][1:]))


# ---------------------------------------------------------------- bad input


def test_a_model_without_attention_layers(tiny_model):
    x = np.zeros((1, 32, 32, 3), np.float32)
    for method in ("attention_rollout", "transformer_attribution"):
        with pytest.raises(InputError, match=rf"{method} needs a transformer's attention probabilities, and tiny "
                                             r"declares no attention layers \(Model.attention_layers\); its layers: block1_conv1"):
            jaxplain.explain(tiny_model, x, [0], method)
    with pytest.raises(InputError, match="attention_rollout needs attention=<the attention layers> and grid"):
        jaxplain.attention_rollout(tiny_model.apply, tiny_model.params, jnp.zeros((32, 32, 3)), 0)


def test_attention_layer_is_not_spatial(twin, xs):
    _, model = twin
    for method in ("grad_cam", "score_cam", "eigen_cam"):
        with pytest.raises(InputError, match=r"layer 'blocks.1.attn' holds attention probabilities \(4, 17, 17\) "
                                             r"\[heads, T, T\], not a spatial layer \[h, w, K\].*'blocks.0'"):
            jaxplain.explain(model, xs, TARGETS, method, layer="blocks.1.attn")


@pytest.mark.parametrize("method, settings, msg", [
    ("attention_rollout", dict(head_fusion="median"), r"head_fusion must be one of \('mean', 'max', 'min'\), not 'median'"),
    ("attention_rollout", dict(discard_ratio=1.0), r"discard_ratio must be in \[0, 1\), got 1.0"),
    ("transformer_attribution", dict(attention=["blocks.0"]), r"layer 'blocks.0' has shape \(4, 4, 32\), not attention"),
    ("transformer_attribution", dict(attention=["blocks.7.attn"]), r"unknown layer 'blocks.7.attn'; twin_vit's layers"),
    ("attention_rollout", dict(grid=(8, 8)), r"has 17 tokens, too few for a 8x8 grid"),
    ("attention_rollout", dict(attention=[]), r"attention must name at least one attention layer"),
    ("attention_rollout", dict(grid=(4,)), r"grid must be two positive ints \(gh, gw\), got \(4,\)"),
    ("attention_rollout", dict(discard_ratio="0.5"), r"discard_ratio must be in \[0, 1\), got '0.5'"),
])
def test_bad_settings(twin, xs, method, settings, msg):
    _, model = twin
    with pytest.raises(InputError, match=msg):
        jaxplain.explain(model, xs, TARGETS, method, **settings)


def test_transformer_attribution_needs_targets(twin, xs):
    _, model = twin
    with pytest.raises(InputError, match="targets=None is only for methods that ignore the target.*attention_rollout"):
        jaxplain.explain(model, xs, None, "transformer_attribution")


def test_bad_token_declarations(tiny_model):
    with pytest.raises(InputError, match=r"declares token or attention layers \(block1_conv1\) but no token_grid"):
        tiny_model.replace(token_layers={"block1_conv1": 0})
    with pytest.raises(InputError, match="declares token or attention layers it does not have: blocks.0.attn"):
        tiny_model.replace(token_grid=(4, 4), attention_layers=("blocks.0.attn",))
    with pytest.raises(InputError, match=r"token_grid must be two positive ints \(gh, gw\), got \(4, 0\)"):
        tiny_model.replace(token_grid=(4, 0))
    with pytest.raises(InputError, match="count of leading non-patch tokens"):
        tiny_model.replace(token_grid=(4, 4), token_layers={"block1_conv1": -1})
    with pytest.raises(InputError, match="declared both token and attention layers"):
        tiny_model.replace(token_grid=(4, 4), token_layers={"fc1": 1}, attention_layers=("fc1",))
