"""Train the synthetic benchmark's VGG (``models/synthetic.py``) and write its weights.

    python -m benchmarks.train_synthetic --out models/synthetic_vgg.safetensors   # from the repository root

Seeded throughout: the training and test sets are ``jaxplain.synthetic.make`` with their seeds,
the initial weights ``vgg.random_params(seed)``, the batch order and the flips (each image is
mirrored left-right and/or up-down at random; every class is closed under reflection) a NumPy
generator of ``seed``. The first ``clean_epochs`` see the training images without their
distractors (``make(..., distractors=False)``): on the full images from the start, this network
sits at chance for thousands of steps, since nothing but shape tells the classes apart. Prints the
loss every 200 steps, the test accuracy per epoch, and the final train and test accuracy.
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxplain import synthetic
from jaxplain.types import Array, PyTree

from jaxplain.models import weights as _weights
from jaxplain.models.synthetic import CONFIG, SOURCE, apply_fn, preprocess
from jaxplain.models.vgg import random_params


class Settings(NamedTuple):
    """Everything that decides the trained weights."""

    seed: int = 0
    train: int = 32_000
    train_seed: int = 0
    test: int = 2_000
    test_seed: int = 1
    epochs: int = 4
    clean_epochs: int = 1
    batch: int = 32
    lr: float = 2e-3
    warmup: int = 100


def initial_params(seed: int) -> PyTree:
    """``vgg.random_params(seed)`` with the dense kernels rescaled to He's ``sqrt(2 / fan_in)``
    (``sqrt(1 / fan_in)`` for the logits): torchvision's 0.01 leaves this small network's logits
    near 1e-4, and training stalls."""
    params = random_params(CONFIG, seed)
    for name, gain in (("fc1", 2.0), ("fc2", 2.0), ("predictions", 1.0)):
        kernel = params[name]["kernel"]
        kernel *= np.float32(np.sqrt(gain / kernel.shape[0]) / 0.01)
    return params


def logits_of(params: PyTree, images: Array) -> Array:
    """``uint8 [B, H, W, 3] -> float32 [B, K]``."""
    return jax.vmap(lambda x: apply_fn()(params, x)[0])(preprocess(images))


def make_step(optimiser: optax.GradientTransformation):
    """The jitted ``(params, state, images, labels) -> (params, state, loss)``."""

    def loss_fn(params: PyTree, images: Array, labels: Array) -> Array:
        return optax.softmax_cross_entropy_with_integer_labels(logits_of(params, images), labels).mean()

    @jax.jit
    def step(params: PyTree, state: PyTree, images: Array, labels: Array):
        loss, grads = jax.value_and_grad(loss_fn)(params, images, labels)
        updates, state = optimiser.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    return step


@jax.jit
def _predict(params: PyTree, images: Array) -> Array:
    return jnp.argmax(logits_of(params, images), axis=-1)


def accuracy(params: PyTree, images: np.ndarray, labels: np.ndarray, batch: int = 500) -> float:
    """The fraction of ``images [N, H, W, 3]`` whose top class is ``labels [N]``."""
    hits = sum(int((np.asarray(_predict(params, images[i : i + batch])) == labels[i : i + batch]).sum())
               for i in range(0, len(images), batch))
    return hits / len(images)


def _flip(rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
    lr, ud = rng.random((2, len(images))) < 0.5
    images = images.copy()
    images[lr] = images[lr, :, ::-1]
    images[ud] = images[ud, ::-1]
    return images


def train(s: Settings, log=functools.partial(print, flush=True)) -> tuple[PyTree, dict[str, float]]:
    """Train from scratch; returns the parameters and ``{"train": acc, "test": acc, "seconds": t}``."""
    start = time.perf_counter()
    data = synthetic.make(s.train, seed=s.train_seed)
    clean = synthetic.make(s.train, seed=s.train_seed, distractors=False) if s.clean_epochs else data
    test = synthetic.make(s.test, seed=s.test_seed)
    steps = s.epochs * (s.train // s.batch)
    optimiser = optax.adam(optax.warmup_cosine_decay_schedule(0.0, s.lr, s.warmup, steps))
    params = jax.device_put(initial_params(s.seed))
    state = optimiser.init(params)
    step = make_step(optimiser)
    rng = np.random.default_rng(s.seed)
    for epoch in range(1, s.epochs + 1):
        order = rng.permutation(s.train)
        images = (clean if epoch <= s.clean_epochs else data).images
        losses = []
        for i in range(0, s.train - s.batch + 1, s.batch):
            idx = order[i : i + s.batch]
            params, state, loss = step(params, state, _flip(rng, images[idx]), data.labels[idx])
            losses.append(loss)
            if len(losses) % 200 == 0:
                log(f"  step {len(losses)}: loss {float(np.mean(jax.device_get(losses[-200:]))):.4f}")
        log(f"epoch {epoch}/{s.epochs}: loss {float(np.mean(jax.device_get(losses))):.4f}, "
            f"test accuracy {accuracy(params, test.images, test.labels):.4f} "
            f"({time.perf_counter() - start:.0f} s)")
    result = {"train": accuracy(params, data.images, data.labels),
              "test": accuracy(params, test.images, test.labels),
              "seconds": time.perf_counter() - start}
    return params, result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="the safetensors file to write")
    for name, default in Settings._field_defaults.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default)
    args = parser.parse_args(argv)
    settings = Settings(**{k: getattr(args, k) for k in Settings._fields})
    params, result = train(settings)
    _weights.save_params(jax.device_get(params), args.out, SOURCE)
    print(f"train accuracy {result['train']:.4f} on {settings.train} images (seed {settings.train_seed}), "
          f"test accuracy {result['test']:.4f} on {settings.test} images (seed {settings.test_seed}), "
          f"{result['seconds'] / 60:.1f} min; wrote {args.out}")


if __name__ == "__main__":
    main()
