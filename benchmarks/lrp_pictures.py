"""The README's LRP and CRP pictures: maps of the shipped synthetic VGG (trained) on benchmark images.

``python -m benchmarks.lrp_pictures --out docs`` writes ``lrp.png`` (a row per image: the picture,
gradient x input, and LRP under three composites, red positive, blue negative) and ``crp.png``
(a row per image: the picture, the LRP map, then the conditional maps of the four channels of
``block3_conv1`` most relevant to its class).
"""

from __future__ import annotations

import argparse
import os

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

import jaxplain
from jaxplain import synthetic, viz
from jaxplain.methods.relevance import channel_relevance
from jaxplain.models import synthetic_vgg

LAYER = "block3_conv1"
COMPOSITES = ("epsilon_plus", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat")
SCALE = 3


def tile(rgb: np.ndarray, label: str = "") -> np.ndarray:
    img = Image.fromarray(rgb).resize((rgb.shape[1] * SCALE, rgb.shape[0] * SCALE), Image.NEAREST)
    canvas = Image.new("RGB", (img.width, img.height + 14), "white")
    canvas.paste(img, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), label, fill="black")
    return np.asarray(canvas)


def signed(m: np.ndarray) -> np.ndarray:
    """``[H, W]`` relevance as a red (positive) / blue (negative) picture, symmetric scale."""
    return viz.heatmap(m, cmap="bwr", signed=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs")
    ap.add_argument("-n", type=int, default=4)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    model = synthetic_vgg()
    data = synthetic.make(64, seed=7)
    picks = [int(np.flatnonzero(data.labels == c)[0]) for c in range(args.n)]
    images = model.preprocess(data.images[picks])
    labels = data.labels[picks]
    rows = [[tile(data.images[i], synthetic.CLASSES[labels[k]]) for k, i in enumerate(picks)]]
    gxi = np.asarray(jaxplain.explain(model, images, labels, method="gradient_x_input")).sum(-1)
    rows.append([tile(signed(m), "gradient x input") for m in gxi])
    for comp in COMPOSITES:
        r = np.asarray(jaxplain.explain(model, images, labels, method=f"lrp(composite={comp!r})")).sum(-1)
        rows.append([tile(signed(m), comp) for m in r])
    Image.fromarray(viz.grid([t for col in zip(*rows) for t in col], cols=len(rows), pad=4)).save(
        os.path.join(args.out, "lrp.png"))
    print("wrote", os.path.join(args.out, "lrp.png"))

    tiles = []
    lrp = np.asarray(jaxplain.explain(model, images, labels, method="lrp")).sum(-1)
    for k, i in enumerate(picks):
        one = images[k:k + 1]
        rel = np.asarray(channel_relevance(model.apply, model.params, jnp.asarray(one[0]), int(labels[k]),
                                           layer=LAYER))
        top = [int(c) for c in np.argsort(-rel)[:4]]
        maps = np.asarray(jaxplain.explain(model, one, labels[k:k + 1],
                                           method=f"crp(layer={LAYER!r}, channels={top})"))[0].sum(-1)
        tiles += [tile(data.images[i], synthetic.CLASSES[labels[k]]), tile(signed(lrp[k]), "lrp")]
        tiles += [tile(signed(m), f"{LAYER} ch {c}") for c, m in zip(top, maps)]
    Image.fromarray(viz.grid(tiles, cols=6, pad=4)).save(os.path.join(args.out, "crp.png"))
    print("wrote", os.path.join(args.out, "crp.png"))


if __name__ == "__main__":
    main()
