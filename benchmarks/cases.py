"""The benchmark matrix: (model, method spec, batch), and which of them --quick keeps."""

import pytest

from jaxplain.registry import METHODS

COMMON = ("gradient", "integrated_gradients", "smoothgrad", "grad_cam")
BEYOND_VGG = {"resnet50": (*COMMON, "guided_backprop"),
              "vit_b16": (*COMMON, "attention_rollout", "transformer_attribution")}
GRADIENT_ANCHORS = ["gradient", "gradient_x_input", "guided_backprop", "deconvnet"]
QUICK_VGG16 = [
    ("gradient", 1), ("gradient", 8), ("guided_backprop", 8),
    ("integrated_gradients(steps=8)", 1), ("smoothgrad(samples=8)", 1),
]


def cases():
    out = []
    for name in sorted(METHODS):
        spec = name  # compile_case adds bench.USUAL's settings
        for batch in (1, 8):
            out.append(pytest.param("tiny", spec, batch, marks=pytest.mark.quick, id=f"tiny-{name}-{batch}"))
        for batch in (1, 8, 32, 128):
            if batch == 128 and name not in GRADIENT_ANCHORS:
                continue  # 128 images x 16 path points does not fit one device's memory
            out.append(pytest.param("vgg16", spec, batch, id=f"vgg16-{name}-{batch}"))
    for batch in (1, 8):  # exact mode's third-order passes: the tiny model only (VGG16: ~1e14 FLOP per image)
        out.append(pytest.param("tiny", "grad_cam_pp(derivatives='exact')", batch, marks=pytest.mark.quick,
                                id=f"tiny-grad_cam_pp_exact-{batch}"))
    for model, specs in BEYOND_VGG.items():  # the methods people run on them, at the usual settings
        for spec in specs:
            for batch in (1, 8, 32):
                out.append(pytest.param(model, spec, batch, id=f"{model}-{spec}-{batch}"))
    for spec, batch in QUICK_VGG16:
        out.append(pytest.param("vgg16", spec, batch, marks=pytest.mark.quick, id=f"vgg16-quick-{spec}-{batch}"))
    return out
