"""The surrogate family beside its anchors: ``feature_ablation`` against Captum's
``FeatureAblation``; ``lime`` against the ``lime`` package's ``LimeImageExplainer`` and Captum's
``Lime``; ``kernel_shap`` against Captum's ``KernelShap``; ``xrai`` (when registered) against
PAIR's ``saliency.core.XRAI``. The same weights (a torch twin of the jaxplain model), images,
targets, label maps and number of forward passes on both sides, in one process, on one device,
ours and the peers alternating; images/s, model passes/s, the ratio, and how far the results are apart.

``python -m benchmarks.surrogates_vs_peers [--model tiny|vgg16] [--batch B] [--segments SPEC]
[--samples N] [--steps S] [--methods feature_ablation lime kernel_shap xrai] [--rounds 5] [--compete N]
[--peer-warmup call|forward] [--per-eval P] [--json out.json]``. Defaults: tiny (32x32, tests/conftest.py)
batch 8, an 8x8 grid, lime's 1000 samples; VGG16 (random weights, 224x224) batch 2, a 4x4 grid, 64
samples (its forward pass costs ~0.2-1 s on a shared 2-core CPU: a round takes minutes).

- Images: smooth random pictures (uint8, a bilinear upsampling of a few random colours), put
  through ``model.preprocess``; targets: the predicted classes. Label maps: ``jaxplain.segments``
  of the pictures (``--segments``, default ``grid(cells=8)`` on the tiny model, ``grid(cells=4)`` on
  VGG16), handed to both sides (our ``segments=``, Captum's ``feature_mask``, lime's
  ``segmentation_fn``). XRAI segments its image itself on both sides (PAIR's Felzenszwalb masks).
- Ours: one ``jaxplain.explain`` call on the batch, timed after a warm-up call with identical
  shapes (the compile). The peers: a loop over the images as their users write it (Captum's
  ``FeatureAblation`` takes the batch, as its users pass it); their first call is timed too and
  excluded. Each model call of a peer takes as many images as one call of ours (explain's chunk
  rule; ``--per-eval`` overrides): Captum's ``perturbations_per_eval``, lime's ``batch_size``, PAIR's
  IG ``batch_size``. The peers run the torch twin (``benchmarks.torch_vgg``), as their users run
  their torch model; lime's ``classifier_fn`` turns its NHWC float batch into a tensor and returns
  softmax probabilities (that conversion and lime's own image assembly, one ``deepcopy`` and mask
  per sample, count as lime's cost).
- Passes: ours by the method's count (feature_ablation ``M + 1``, lime ``N``, kernel_shap
  ``N + 2``, xrai ``2 baselines x S`` forward+backward passes); the peers' counted by a wrapper
  on the torch model.
- Agreement: feature_ablation max |ours - Captum| (deterministic, the same computation); lime
  against the ``lime`` package max |difference| of the segment coefficients (ours is given the
  package's own coalitions, redrawn from its seed); the random peers (Captum Lime, KernelShap) mean
  Pearson correlation of per-segment values (each side its own draws); xrai mean Pearson
  correlation of the maps (not the same numbers by design: PAIR's IG sums ``S`` points of
  ``linspace(0, 1, S)`` over ``S``, ours Gauss-Legendre; PAIR segments the preprocessed image
  scaled by its range, ours the picture; given the same masks and base attribution the two
  selections agree to 1e-9).
- Timing: ``jaxplain.timing``'s method (``benchmarks.sides.compare``), ours beside each peer in
  turn: after the first calls, one more call of ours (the warm-up; the peer's first call is its
  own), ``--rounds`` interleaved ABBA rounds (a call under 0.5 s repeated to fill one), images/s
  median (min-max) of each side and the ratio (min-max), or "noisy, rerun" over a 25% spread;
  torch's threads set to XLA's (``timing.equal_threads``), the load before and after;
  ``--compete N`` runs N busy processes beside it (the shared-machine regime).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import time
import warnings
from typing import Any, Callable

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch beside JAX on a GPU (as benchmarks.compare)
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxplain  # noqa: E402
from jaxplain import METHODS, bench, registry, timing  # noqa: E402
from jaxplain import chunks  # noqa: E402

from benchmarks import sides  # noqa: E402

METHOD_NAMES = ("feature_ablation", "lime", "kernel_shap", "xrai")
DEFAULTS = {  # per model: batch, segments, samples (lime, kernel_shap), XRAI's IG steps, the peers' warm-up
    "tiny": dict(batch=8, segments="grid(cells=8)", samples=1000, steps=20, peer_warmup="call"),
    "vgg16": dict(batch=2, segments="grid(cells=4)", samples=64, steps=20, peer_warmup="forward"),
}


@dataclasses.dataclass(frozen=True)
class Batch:
    """What both sides explain: channel-last for us, channel-first (``x_nchw``) for torch."""

    x: np.ndarray  # [B, H, W, 3] preprocessed float32
    pictures: np.ndarray  # [B, H, W, 3] uint8
    y: np.ndarray  # [B] int: the predicted classes
    labels: np.ndarray  # [B, H, W] int32, labels 0 .. M - 1
    black: np.ndarray  # [H, W, 3]: a black picture, preprocessed
    white: np.ndarray  # [H, W, 3]: a white one

    @property
    def x_nchw(self) -> np.ndarray:
        return np.ascontiguousarray(self.x.transpose(0, 3, 1, 2))

    @property
    def m(self) -> int:
        return int(self.labels.max()) + 1


def make_batch(model: Any, batch: int, segments: str, seed: int = 0) -> Batch:
    """Smooth random pictures (a few random colours upsampled bilinearly), preprocessed."""
    from skimage.transform import resize

    h, w = model.input_size or (32, 32)
    rng = np.random.default_rng(seed)
    pics = np.stack([resize(rng.random((5, 5, 3)), (h, w), order=1) for _ in range(batch)])
    pics = np.clip(np.rint(pics * 255), 0, 255).astype(np.uint8)
    x = np.asarray(model.preprocess(pics), np.float32)
    y = np.asarray(jax.vmap(lambda v: model.apply(model.params, v)[0].argmax())(x)).astype(np.int64)
    labels = jaxplain.segments(pics, segments)
    ends = np.asarray(model.preprocess(np.stack([np.zeros((h, w, 3), np.uint8), np.full((h, w, 3), 255, np.uint8)])),
                      np.float32)
    return Batch(x, pics, y, labels, ends[0], ends[1])


class Counted:
    """The torch model, counting the images each call passes through it."""

    def __init__(self, net: Any):
        import torch

        self.torch = torch
        self.net = net
        self.images = 0

    def __call__(self, x: Any) -> Any:
        self.images += int(x.shape[0])
        return self.net(x)

    def softmax(self, x: Any) -> Any:
        return self.torch.softmax(self(x), -1)


@dataclasses.dataclass
class Peer:
    """One peer's call on the batch: ``run()`` returns what ``agree`` compares with ours."""

    name: str
    run: Callable[[], Any]
    settings: dict[str, Any]
    agree: Callable[[np.ndarray, Any], tuple[float, str]]
    note: str = ""


@dataclasses.dataclass
class Pair:
    """Our call (``[B, H, W]`` out, blocked) and its peers on the same batch."""

    method: str
    ours: Callable[[], np.ndarray]
    ours_settings: dict[str, Any]
    passes: int  # our model passes per image
    peers: list[Peer]
    note: str = ""


def segment_means(maps: np.ndarray, labels: np.ndarray, m: int) -> np.ndarray:
    """``[B, M]``: each segment's mean value in ``maps [B, H, W]`` (NaN for an empty label)."""
    out = np.full((len(maps), m), np.nan)
    for i, (a, lab) in enumerate(zip(maps, labels)):
        sums = np.bincount(lab.ravel(), np.asarray(a, np.float64).ravel(), m)
        counts = np.bincount(lab.ravel(), minlength=m)
        out[i] = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return out


def mean_pearson(a: np.ndarray, b: np.ndarray) -> float:
    """The mean over images of the Pearson correlation of ``a[i]`` and ``b[i]`` (finite entries)."""
    rs = []
    for u, v in zip(np.asarray(a, np.float64), np.asarray(b, np.float64)):
        ok = np.isfinite(u) & np.isfinite(v)
        u, v = u[ok], v[ok]
        if u.std() > 0 and v.std() > 0:
            rs.append(float(np.corrcoef(u, v)[0, 1]))
    return float(np.mean(rs)) if rs else float("nan")


def images_per_call(method: Callable, b: int, hw: int) -> int:
    """How many images one model call of ours takes on the batch: ``B x`` explain's chunk (its
    host-loop rule on the CPU, the method's default chunk elsewhere)."""
    if chunks.loop_mode() == "host" and hasattr(method, "chunk_call_pixels"):
        return b * chunks.host_chunk(b, hw, method.chunk_call_pixels)
    return b * int(registry.settings_of(method).get("chunk") or 16)


def lime_coalitions(seed: int, samples: int, m: int) -> np.ndarray:
    """``[samples, M]``: the coalitions ``LimeImageExplainer(random_state=seed)`` draws in
    ``explain_instance(..., random_seed=...)`` (its first row all ones)."""
    data = np.random.RandomState(seed).randint(0, 2, samples * m).reshape(samples, m)
    data[0] = 1
    return data.astype(np.float32)


def _blocked(fn: Callable[[], Any]) -> Callable[[], np.ndarray]:
    return lambda: np.asarray(jax.block_until_ready(fn()))


def pairs(model: Any, counted: Counted, data: Batch, names: list[str], samples: int, steps: int,
          per_eval: int | None, seed: int = 0) -> tuple[list[Pair], list[dict[str, Any]]]:
    """The pairs to time (the peers call the torch twin through ``counted``), and rows for the
    methods skipped (with the reason)."""
    import torch

    net = counted.net
    b, h, w = data.labels.shape
    m = data.m
    device = next(net.parameters()).device
    xt = torch.from_numpy(data.x_nchw).to(device)
    yt = torch.from_numpy(data.y).to(device)
    mask = torch.from_numpy(data.labels[:, None].astype(np.int64)).to(device)  # [B, 1, H, W]
    out, skipped = [], []

    def per_call(name: str, cap: int) -> int:
        return per_eval or min(cap, images_per_call(METHODS[name], b, h * w))

    for name in names:
        if name not in METHODS:
            skipped.append({"method": name, "skipped": "not in jaxplain.METHODS (yet)"})
            continue
        if name == "feature_ablation":
            from captum.attr import FeatureAblation

            s = dict(segments=data.labels, baseline=0.0, score="logit")
            p = max(1, per_call(name, b * (m + 1)) // b)  # Captum perturbs the whole batch: B * P images a call
            fa = FeatureAblation(counted)

            def captum_fa(fa=fa, p=p) -> np.ndarray:
                a = fa.attribute(xt, target=yt, baselines=0.0, feature_mask=mask, perturbations_per_eval=p)
                return a[:, 0].detach().cpu().numpy()

            out.append(Pair(name, _blocked(lambda s=s: jaxplain.explain(model, data.x, data.y, "feature_ablation", **s)),
                            s, m + 1, [Peer("captum.FeatureAblation", captum_fa,
                                            dict(baselines=0.0, perturbations_per_eval=p, feature_mask="the label maps"),
                                            lambda ours, theirs: (float(np.abs(ours - theirs).max()), "max |diff| (logit)"))]))
        elif name == "lime":
            from captum._utils.models.linear_model import SkLearnRidge
            from captum.attr import Lime
            from lime.lime_image import LimeImageExplainer

            p = per_call(name, samples)
            table = np.stack([lime_coalitions(seed + i, samples, m) for i in range(b)])
            s = dict(segments=data.labels, coalitions=table, baseline="mean", kernel_width=0.25, alpha=1.0, score="softmax")

            def classifier_fn(batch: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    t = torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), np.float32)).to(device)
                    return counted.softmax(t).cpu().numpy()

            def lime_package(p=p) -> np.ndarray:
                coef = np.zeros((b, m))
                with contextlib.redirect_stderr(io.StringIO()):  # lime 0.2.0.1 always draws a tqdm bar
                    for i in range(b):
                        explainer = LimeImageExplainer(kernel_width=0.25, random_state=seed + i)
                        e = explainer.explain_instance(data.x[i], classifier_fn, labels=(int(data.y[i]),), hide_color=None,
                                                       top_labels=None, num_features=m, num_samples=samples, batch_size=p,
                                                       segmentation_fn=lambda image, lab=data.labels[i]: lab,
                                                       random_seed=seed)
                        for seg, c in e.local_exp[int(data.y[i])]:
                            coef[i, seg] = c
                return coef

            # Captum Lime set up as lime's image explainer: segment-mean fill, softmax, Ridge(alpha=1),
            # weights exp(-d^2 / (2 w^2)) = sqrt(exp(-d^2 / w^2)), d the cosine distance of the
            # coalition to all-kept, w = 0.25 (Captum's default distance is on the raw inputs).
            fill = np.stack([segment_means(data.x[i].transpose(2, 0, 1), np.broadcast_to(data.labels[i], (3, h, w)), m)
                             for i in range(b)])  # [B, 3, M]
            fill_img = torch.from_numpy(np.stack([f[:, lab] for f, lab in zip(fill, data.labels)]).astype(np.float32)).to(device)

            def similarity(original: Any, perturbed: Any, z: Any, **kwargs: Any) -> Any:
                z = z.float().flatten()
                d = 1.0 - torch.sqrt(z.sum() / z.numel()) if z.sum() > 0 else torch.tensor(1.0)
                return torch.exp(-(d**2) / (2 * 0.25**2))

            captum_lime = Lime(counted.softmax, interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=similarity)

            def captum_lime_run(p=p) -> np.ndarray:
                maps = [captum_lime.attribute(xt[i:i + 1], target=int(data.y[i]), baselines=fill_img[i:i + 1],
                                              feature_mask=mask[i:i + 1], n_samples=samples, perturbations_per_eval=p)
                        for i in range(b)]
                return torch.cat(maps)[:, 0].detach().cpu().numpy()

            def package_agree(ours: np.ndarray, coef: np.ndarray) -> tuple[float, str]:
                return float(np.abs(segment_means(ours, data.labels, m) - coef).max()), "max |diff| of coefficients"

            def captum_agree(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, str]:
                return (mean_pearson(segment_means(ours, data.labels, m), segment_means(theirs, data.labels, m)),
                        "mean Pearson r of segment values (own draws)")

            out.append(Pair(name, _blocked(lambda s=s: jaxplain.explain(model, data.x, data.y, "lime", **s)),
                            {**s, "coalitions": f"lime's draws [{b}, {samples}, {m}]"}, samples, [
                                Peer("lime.LimeImageExplainer", lime_package,
                                     dict(num_samples=samples, batch_size=p, hide_color=None, kernel_width=0.25,
                                          top_labels=None, num_features=m),
                                     package_agree, "the package's own loop (deepcopy + mask per sample), a Ridge "
                                                    "feature selection fit then the Ridge fit; torch twin in classifier_fn"),
                                Peer("captum.Lime", captum_lime_run,
                                     dict(n_samples=samples, perturbations_per_eval=p, interpretable_model="SkLearnRidge(alpha=1)",
                                          baselines="segment means", similarity="cosine kernel on coalitions, width 0.25"),
                                     captum_agree, "one image a call, as Captum recommends"),
                            ], note="ours given the lime package's coalitions"))
        elif name == "kernel_shap":
            from captum.attr import KernelShap

            p = per_call(name, samples)
            s = dict(segments=data.labels, samples=samples, exact=False, baseline=0.0, score="logit", key=seed)
            ks = KernelShap(counted)

            def captum_ks(p=p) -> np.ndarray:
                maps = [ks.attribute(xt[i:i + 1], target=int(data.y[i]), baselines=0.0, feature_mask=mask[i:i + 1],
                                     n_samples=samples, perturbations_per_eval=p) for i in range(b)]
                return torch.cat(maps)[:, 0].detach().cpu().numpy()

            def ks_agree(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, str]:
                return (mean_pearson(segment_means(ours, data.labels, m), segment_means(theirs, data.labels, m)),
                        "mean Pearson r of segment values (own draws)")

            out.append(Pair(name, _blocked(lambda s=s: jaxplain.explain(model, data.x, data.y, "kernel_shap", **s)),
                            s, samples + 2, [Peer("captum.KernelShap", captum_ks,
                                                  dict(n_samples=samples, perturbations_per_eval=p, baselines=0.0),
                                                  ks_agree, "one image a call, as Captum recommends")]))
        elif name == "xrai":
            import saliency.core as saliency

            p = per_eval or min(steps, images_per_call(METHODS["integrated_gradients"], b, h * w))
            s = dict(base=f"integrated_gradients(steps={steps})", baselines=("black", "white"), algorithm="full")

            def call_model(x_batch: np.ndarray, call_model_args: dict | None = None,
                           expected_keys: Any = None) -> dict[str, np.ndarray]:
                t = torch.from_numpy(np.ascontiguousarray(x_batch.transpose(0, 3, 1, 2), np.float32)).to(device)
                t.requires_grad_(True)
                logit = counted(t)[:, call_model_args["target"]]
                (g,) = torch.autograd.grad(logit.sum(), t)
                return {saliency.INPUT_OUTPUT_GRADIENTS: g.permute(0, 2, 3, 1).detach().cpu().numpy()}

            params = saliency.XRAIParameters(steps=steps, algorithm="full")
            xrai = saliency.XRAI()

            def pair_xrai(p=p) -> np.ndarray:
                return np.stack([xrai.GetMask(data.x[i], call_model, call_model_args={"target": int(data.y[i])},
                                              baselines=[data.black, data.white], batch_size=p, extra_parameters=params)
                                 for i in range(b)])

            def xrai_agree(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, str]:
                return mean_pearson(ours.reshape(b, -1), theirs.reshape(b, -1)), "mean Pearson r of the maps"

            out.append(Pair(name, _blocked(lambda s=s: jaxplain.explain(model, data.x, data.y, "xrai", **s)),
                            s, 2 * steps, [Peer("saliency.core.XRAI", pair_xrai,
                                                dict(steps=steps, algorithm="full", batch_size=p,
                                                     baselines="black and white pictures, preprocessed", segments=None),
                                                xrai_agree, "PAIR's Felzenszwalb masks on each image, IG x 2 baselines, "
                                                            "full selection; torch twin gradients of the logit")],
                            note=f"IG with {steps} steps on both sides (PAIR's default 100)"))
        else:
            skipped.append({"method": name, "skipped": f"unknown; one of {', '.join(METHOD_NAMES)}"})
    return out, skipped


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def case(pair: Pair, counted: Counted, b: int, rounds: int, peer_warmup: bool = True,
         min_round: float = 0.5) -> list[dict[str, Any]]:
    """One row per peer: our first call (the compile), each peer's first call unless not
    ``peer_warmup`` (they compile nothing: ``main`` warms the torch model up instead), then ours
    and the peer by ``jaxplain.timing``'s method (``benchmarks.sides.compare``: ``rounds``
    interleaved rounds after a warm-up). The peer's model passes are counted over its calls."""
    rows = []
    try:
        warm, out_ours = _timed(pair.ours)
    except Exception as e:  # a library error is a result of the benchmark: report it, go on
        sides.log(f"{pair.method}: ours failed: {type(e).__name__}: {e}")
        return [{"method": pair.method, "peer": p.name, "skipped": f"ours failed: {type(e).__name__}: {e}"} for p in pair.peers]
    sides.log(f"{pair.method}: ours' first call (compiling) {warm:.1f} s")
    for p in pair.peers:
        out: dict[str, Any] = {}

        def peer(p: Peer = p, out: dict[str, Any] = out) -> Any:
            out["value"] = p.run()
            out["calls"] = out.get("calls", 0) + 1
            return out["value"]

        counted.images = 0
        try:
            warm_peer = None
            if peer_warmup:
                warm_peer, _ = _timed(peer)
                sides.log(f"{pair.method}: {p.name}'s first call {warm_peer:.1f} s, "
                          f"{counted.images / b:.0f} model passes per image")
            cmp, counts = sides.compare(pair.ours, peer, names=("jaxplain", p.name), items=b, rounds=rounds,
                                        known={p.name: warm_peer} if peer_warmup else None, min_round=min_round,
                                        size=peer_warmup)
        except Exception as e:
            sides.log(f"{pair.method}: {p.name} failed: {type(e).__name__}: {e}")
            rows.append({"method": pair.method, "peer": p.name, "skipped": f"peer failed: {type(e).__name__}: {e}"})
            continue
        passes = counted.images / (b * out["calls"])  # model passes per image of one call
        ours_ps, peer_ps = cmp.per_s("jaxplain").median, cmp.per_s(p.name).median
        sides.log(f"{pair.method} vs {p.name}: ours {sides.rate(cmp, 'jaxplain')}, peer {sides.rate(cmp, p.name)} "
                  f"images/s, {cmp.ratio_text()}")
        agree, compared = p.agree(out_ours, out["value"])
        rows.append({
            "method": pair.method, "peer": p.name, "batch": b,
            "ours_images_per_s": ours_ps, "peer_images_per_s": peer_ps, "ratio": None if cmp.noisy else cmp.ratio.median,
            "ours_images_per_s_text": sides.rate(cmp, "jaxplain"), "peer_images_per_s_text": sides.rate(cmp, p.name),
            "ratio_text": cmp.ratio_text(), "timing": cmp.as_dict(), "calls_per_round": [counts["jaxplain"], counts[p.name]],
            "ours_passes_per_image": pair.passes, "peer_passes_per_image": passes,
            "ours_passes_per_s": pair.passes * ours_ps, "peer_passes_per_s": passes * peer_ps,
            "ours_warmup_s": warm, "peer_warmup_s": warm_peer,
            "agreement": agree, "compared": compared,
            "ours_settings": {k: (v if isinstance(v, (int, float, str, bool, type(None))) else
                                  "the label maps" if k == "segments" else repr(v)) for k, v in pair.ours_settings.items()},
            "peer_settings": {k: repr(v) for k, v in p.settings.items()},
            "note": "; ".join(n for n in (pair.note, p.note) if n),
        })
    return rows


def warm_torch(net: Any, x_nchw: np.ndarray) -> None:
    """One forward and backward pass of the torch model on one image (its allocator, oneDNN's kernels)."""
    import torch

    t = torch.from_numpy(x_nchw[:1]).to(next(net.parameters()).device).requires_grad_(True)
    net(t).sum().backward()


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| method | peer | ours img/s | peer img/s | ratio | ours passes/s | peer passes/s | passes/img ours/peer "
             "| warm-up s ours/peer | agreement |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['method']} | {r.get('peer', '')} | skipped: {r['skipped']} | | | | | | | |")
            continue
        lines.append(f"| {r['method']} | {r['peer']} | {r['ours_images_per_s_text']} | {r['peer_images_per_s_text']} "
                     f"| {r['ratio_text']} | {r['ours_passes_per_s']:.4g} | {r['peer_passes_per_s']:.4g} "
                     f"| {r['ours_passes_per_image']}/{r['peer_passes_per_image']:.0f} "
                     f"| {r['ours_warmup_s']:.1f}/{_num(r['peer_warmup_s'])} | {r['agreement']:.3g} ({r['compared']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", choices=sorted(DEFAULTS))
    p.add_argument("--batch", type=int, default=None, help="images (default 8 tiny, 2 vgg16)")
    p.add_argument("--segments", default=None, help="a jaxplain.segments kind (default grid(cells=8) tiny, grid(cells=4) vgg16)")
    p.add_argument("--samples", type=int, default=None, help="lime / kernel_shap samples (default 1000 tiny (lime's), 64 vgg16)")
    p.add_argument("--steps", type=int, default=None, help="XRAI's IG steps on both sides (default 20; PAIR's 100)")
    p.add_argument("--methods", nargs="+", default=list(METHOD_NAMES))
    sides.add_arguments(p)
    p.add_argument("--peer-warmup", choices=["call", "forward"], default=None,
                   help="before timing a peer: one full call (default, tiny) or one forward/backward pass of the torch model "
                        "(default on vgg16, where a call takes minutes)")
    p.add_argument("--per-eval", type=int, default=None, help="images per peer model call (default: as many as ours)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import captum
    import torch

    from benchmarks.metrics_vs_quantus import build_model

    timing.equal_threads()
    d = DEFAULTS[args.model]
    b, rounds = args.batch or d["batch"], args.rounds
    samples, steps = args.samples or d["samples"], args.steps or d["steps"]
    model, net = build_model(args.model)
    data = make_batch(model, b, args.segments or d["segments"])
    info = bench.device_info()
    h, w = data.x.shape[1:3]
    try:
        from importlib.metadata import version

        versions = f"captum {captum.__version__}, lime {version('lime')}, saliency {version('saliency')}"
    except Exception:  # noqa: BLE001
        versions = f"captum {captum.__version__}"
    print(sides.header(args.compete, rounds, f"torch {torch.__version__}, {versions}"), flush=True)
    print(f"{info['device_kind']} ({info['platform']}; torch on {next(net.parameters()).device}); {args.model} {h}x{w}, "
          f"batch {b}, segments {args.segments or d['segments']} (M = {data.m}), samples {samples}, XRAI IG steps {steps}; "
          f"the peers warmed up by {'a full call' if (args.peer_warmup or d['peer_warmup']) == 'call' else 'a forward/backward pass'}; "
          f"images/s median (min-max) of the rounds", flush=True)
    peer_warmup = (args.peer_warmup or d["peer_warmup"]) == "call"
    warm_torch(net, data.x_nchw)
    counted = Counted(net)
    todo, rows = pairs(model, counted, data, args.methods, samples, steps, args.per_eval)
    for row in rows:
        sides.log(f"{row['method']}: skipped ({row['skipped']})")
    with sides.regime(args.compete):
        for pair in todo:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows.extend(case(pair, counted, b, rounds, peer_warmup))
    print(table(rows), flush=True)
    print(sides.footer([r["timing"] for r in rows if "timing" in r]))
    print("settings (identical on both sides unless said):")
    for r in rows:
        if "skipped" not in r:
            print(f"  {r['method']} vs {r['peer']}: ours {r['ours_settings']}; peer {r['peer_settings']}"
                  f"{'; ' + r['note'] if r['note'] else ''}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "batch": b, "segments": args.segments or d["segments"], "m": data.m,
                       "samples": samples, "steps": steps, "rounds": rounds, "compete": args.compete, "machine": sides.machine(),
                       **info, "rows": rows},
                      f, indent=1, default=repr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
