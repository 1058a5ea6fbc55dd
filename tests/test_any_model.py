"""Any JAX image model, as its owner wrote it: a grayscale CNN in Linen, NNX, Keras 3 and Equinox,
a Linen CNN with ``train``, BatchNorm and Dropout, and a Linen CNN returning a dict
(``tests/any_models.py``), each explained by gradient, integrated gradients, Grad-CAM and occlusion,
evaluated by deletion and model randomisation, and run from the command line (Grad-CAM) over a
folder of grayscale PNGs with ``--report`` (``--model tests.any_models:NAME``).

References, independent of jaxplain's adapters: the gradient is ``jax.grad`` of the network called
as its owner calls it; integrated gradients (8 midpoint steps) is that gradient averaged along the
path, times the input. Grad-CAM's default layer must be each network's last convolution,
``features`` (``tests/test_channels.py`` checks the map against the paper's formula)."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxplain
from jaxplain import cli
from jaxplain.engine.shapes import default_layer
from tests import any_models

NAMES = list(any_models.PAIRS)
RTOL = 1e-5


def close(a, b, rtol=RTOL):
    a, b = np.asarray(a), np.asarray(b)
    scale = np.abs(b).max()
    assert a.shape == b.shape and scale > 0, (a.shape, b.shape, scale)
    assert np.abs(a - b).max() <= rtol * scale, (np.abs(a - b).max(), scale)


@pytest.fixture(scope="module", params=NAMES)
def pair(request):
    return request.param, *any_models.PAIRS[request.param]()


def images(n: int = 2) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.uniform(size=(n, any_models.SIZE, any_models.SIZE, 1)).astype(np.float32)


def test_explained_and_evaluated_as_written(pair):
    name, model, native = pair
    x = images()
    assert model.channels == 1 and model.input_shape[2] == 1
    close(model(jnp.asarray(x)), native(jnp.asarray(x)))
    target = np.asarray(native(jnp.asarray(x))).argmax(axis=1)
    picked = lambda v, t: native(v[None])[0, t]  # noqa: E731

    grad = jaxplain.explain(model, x, target, "gradient")
    close(grad, jnp.stack([jax.grad(picked)(v, t) for v, t in zip(jnp.asarray(x), target)]))

    ig = jaxplain.explain(model, x, target, "integrated_gradients", steps=8, rule="riemann_middle")
    alphas = (np.arange(8) + 0.5) / 8
    want = jnp.stack([v * jnp.mean(jnp.stack([jax.grad(picked)(a * v, t) for a in alphas]), axis=0)
                      for v, t in zip(jnp.asarray(x), target)])
    close(ig, want, 1e-4)

    cam = jaxplain.explain(model, x, target, "grad_cam")
    assert cam.shape == (2, any_models.SIZE, any_models.SIZE) and bool(jnp.isfinite(cam).all())
    assert float(jnp.abs(cam).max()) > 0
    # the default layer is the last spatial one, whatever its name: each network's last conv, "features"
    assert default_layer(model, x.shape[1:]).split(".")[-1] == "features", model.layers

    occ = jaxplain.explain(model, x, target, "occlusion", window=(4, 4), strides=(4, 4))
    assert occ.shape == x.shape and bool(jnp.isfinite(occ).all())

    deletion = jaxplain.evaluate(model, x, target, grad, "deletion", steps=4)
    assert deletion["score"].shape == (2,) and bool(jnp.isfinite(deletion["score"]).all())
    rand = jaxplain.evaluate(model, x, target, grad, "model_randomisation", method="gradient", key=0)
    layers = list(np.asarray(rand["layers"]))
    assert len(layers) >= 3 and all(str(n) in model.layers or str(n) == "all" for n in layers), layers
    assert bool(jnp.isfinite(rand["spearman"]).all())
    assert float(jnp.abs(rand["spearman"][:, -1]).mean()) < 0.9  # the randomised net's map is another


def test_folder_of_grayscale_pictures_from_the_command_line(tmp_path, pair, capsys):
    name = pair[0]
    folder = tmp_path / "digits"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (any_models.SIZE, any_models.SIZE), np.uint8), mode="L").save(folder / f"d{i}.png")
    out = tmp_path / "out"
    spec = f"tests.any_models:{ {'nnx': 'nnx_gray', 'keras': 'keras_gray', 'equinox': 'equinox_gray'}.get(name, name) }"
    code = cli.main(["explain", str(folder), "--model", spec, "--method", "grad_cam", "--out", str(out), "--report"])
    assert code == 0, capsys.readouterr()
    for i in range(2):
        shown = Image.open(out / "grad_cam" / f"d{i}.png")
        assert shown.size == (any_models.SIZE, any_models.SIZE)
    assert (out / "index.html").read_text().count("<img") >= 2
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
