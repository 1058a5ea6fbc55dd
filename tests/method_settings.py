"""Small settings per registered method for the shared property tests; a method missing here is
tested with its defaults (plus a key when it takes one), so a new method is covered for free."""

import jax
import numpy as np

from jaxplain.registry import METHODS, settings_of

SMALL = {
    "integrated_gradients": dict(steps=7, chunk=3),
    "expected_gradients": dict(samples=7, chunk=3),
    "blur_ig": dict(steps=4, chunk=3, max_sigma=4.0),
    "guided_ig": dict(steps=6),
    "smoothgrad": dict(samples=7, chunk=3),
    "squaregrad": dict(samples=7, chunk=3),
    "vargrad": dict(samples=7, chunk=3, base="gradient_x_input"),
    "grad_cam_pp": dict(derivatives="exact", chunk=100),  # the chunked mode (the default has no sum)
    "score_cam": dict(chunk=3),
    "layer_integrated_gradients": dict(steps=7, chunk=3),
    "neuron_gradient": dict(neuron=6),
    "neuron_integrated_gradients": dict(neuron=5, steps=7, chunk=3),
    "occlusion": dict(window=(8, 8), strides=(6, 6), chunk=5),
    "rise": dict(masks=20, cells=4, chunk=8),
    # The surrogate family: a few grid segments, a handful of passes, chunks of 5 so the loop runs.
    "feature_ablation": dict(cells=(3, 4), chunk=5),
    "lime": dict(cells=3, samples=24, chunk=5),
    "kernel_shap": dict(cells=(2, 3), samples=40, exact=False, chunk=5),  # sampled: 2^6 > 40 >= 6 segments
    "xrai": dict(segments="grid(cells=4)", base="integrated_gradients(steps=5, chunk=2)", baselines=(0.0, 0.5),
                 min_pixel_diff=4),
    # Run on the tiny ViT (conftest's tiny_vit); explicit here because the direct calls bypass explain.
    "attention_rollout": dict(attention=("blocks.0.attn", "blocks.1.attn"), grid=(4, 4), discard_ratio=0.25),
    "transformer_attribution": dict(attention=("blocks.0.attn", "blocks.1.attn"), grid=(4, 4)),
    "deeplift": dict(baseline="zeros"),  # "black" (the default) needs explain's model: the direct calls bypass it
}
# Methods that need a transformer's attention layers: the property tests run them on the tiny ViT.
TRANSFORMER = {"attention_rollout", "transformer_attribution"}
MAPS = {"rise", "feature_ablation", "lime", "kernel_shap", "xrai", *TRANSFORMER}  # one value per pixel: [B, H, W]
# Methods whose jit = eager check runs on a smaller network in their own tests (eager, op by op, the
# tiny VGG's relevance walk vmapped over 8 channels takes 12-23 s on the shared 2-core machine).
# Methods that draw from their key whatever the baseline (masks, coalitions): test_keys keeps their baseline.
KEYED_DRAWS = {"rise", "lime", "kernel_shap"}
# Methods whose key only reaches a random base: test_keys gives them one.
RANDOM_BASE = {"xrai": dict(base="smoothgrad(samples=2, chunk=2)")}


def expected_shape(name: str, x_shape: tuple) -> tuple:
    """Gradient family and occlusion: the input's shape; CAMs, RISE and the surrogates: [B, H, W]; layer methods: the layer's shape
    (the tiny model's last conv layer is [8, 8, 8])."""
    fn = METHODS[name]
    b, h, w, c = x_shape
    if name in MAPS:
        return (b, h, w)
    if name == "crp":  # a map per channel of the layer (all 8 by default)
        return (b, 8, h, w, c)
    if name == "guided_grad_cam" or "layer" not in settings_of(fn) or name.startswith("neuron"):
        return x_shape
    if getattr(fn, "spatial_layer", False):
        return (b, h, w)
    return (b, 8, 8, 8)


def settings_for(name: str, images: np.ndarray) -> dict:
    fn = METHODS[name]
    s = dict(SMALL.get(name, {}))
    known = settings_of(fn)
    if "key" in known:
        s["key"] = jax.random.key(7)
    if "layer" in known:
        s["layer"] = "block3_conv2"  # the tiny model's last conv layer (explain's default)
    if "references" in known:
        s["references"] = np.asarray(images[::-1] * 0.5)
    if name == "deeplift_shap":
        s["baselines"] = np.asarray(images[::-1][:2] * 0.5)
    return s


def images(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 32, 32, 3)).astype(np.float32)
