"""Every metric of ``jaxplain.evaluate`` beside its Quantus 0.6 counterpart: the same weights (a
torch twin), images, targets, attributions and settings, on the same device (Quantus' torch path
on CUDA where JAX runs on a GPU, else both on the CPU), in one process, alternating the two;
images/s, the ratio, and how far the two scores are apart.

``python -m benchmarks.metrics_vs_quantus [--model vgg16|synthetic_vgg|tiny] [--batch 8]
[--metrics deletion ...] [--rounds 5] [--compete N] [--json out.json]``

Settings: ``--model vgg16`` (224x224) runs the ``"reduced"`` settings below (VGG16 costs ~0.2 s
per image and forward pass on a 2-core CPU; Quantus' defaults would take hours per batch); the
small models run ``"reference"`` ones (our defaults, Quantus set to match them). Timing: one call
of each first (ours compiles; both reported as warm-up, excluded), then ``jaxplain.timing``'s
method (``benchmarks.sides.compare``): one more call of each (the warm-up; a call under 0.5 s
repeats to fill a round), ``--rounds`` (5) interleaved ABBA rounds, images/s median (min-max) of
each side and the ratio (min-max), or "noisy, rerun" over a 25% spread; torch's threads set to
XLA's (``timing.equal_threads``), the load before and after; ``--compete N`` runs N busy
processes beside it (a shared machine). A metric missing from ``jaxplain.METRICS`` is skipped
with a note (``PAIRS`` lists the counterparts of metrics still being written).
"""

from __future__ import annotations

import argparse
import dataclasses
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
from jaxplain import METRICS, bench, timing  # noqa: E402

from benchmarks import sides  # noqa: E402

Settings = Callable[[str, int, int], tuple[dict[str, Any], dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Inputs:
    """One batch both sides score: channel-last for us, channel-first (``*_nchw``) for Quantus."""

    x: np.ndarray  # [B, H, W, 3]
    y: np.ndarray  # [B] int
    map: np.ndarray  # [B, H, W]: the gradient summed over channels
    pixels: np.ndarray  # [B, H, W, 3]: the gradient
    mask: np.ndarray  # [B, H, W] bool: a box per image (localisation)

    @property
    def x_nchw(self) -> np.ndarray:
        return np.ascontiguousarray(self.x.transpose(0, 3, 1, 2))


@dataclasses.dataclass(frozen=True)
class Pair:
    """Our metric's Quantus 0.6 counterpart.

    ``quantus``: the class's name in ``quantus``; ``make``: its constructor where not
    ``getattr(quantus, name)``. ``settings(profile, H, W) -> (ours, quantus)``: our settings and the Quantus constructor's
    (``profile``: ``"reduced"`` or ``"reference"``). ``form``: the attribution both get, ``"map"``
    ([B, H, W] / [B, 1, H, W]) or ``"pixels"``. ``call``: extra keywords of the Quantus call;
    ``ours_extra(inputs, quantus_metric)``: of ours. ``quantus_a``: Quantus' ``a_batch`` where
    not the ``form``'s.
    ``agree(ours, quantus) -> (max |difference|, what was compared)``; ``None`` where the two
    differ by design (``note`` says why)."""

    quantus: str
    settings: Settings
    form: str = "map"
    call: Callable[[Inputs], dict[str, Any]] = lambda inp: {}
    agree: Callable[[dict[str, np.ndarray], np.ndarray], tuple[float, str]] | None = None
    note: str = ""
    ours_extra: Callable[[Inputs, Any], dict[str, Any]] = lambda inp, metric: {}
    make: Callable[..., Any] | None = None
    quantus_a: Callable[[Inputs], np.ndarray] | None = None


def _max_diff(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _pixel_flipping(**settings: Any) -> Any:
    """Quantus' ``PixelFlipping``, its ``features_in_step`` checked against the features it flips
    (C H W: a map is broadcast over the channels) instead of H W: Quantus 0.6 asserts
    ``H W % features_in_step == 0``, which no whole-pixel step (3 p features) passes when 3 does
    not divide H W (224x224, 64x64, 32x32). The computation is Quantus' own."""
    import quantus

    class PixelFlipping(quantus.PixelFlipping):
        def custom_preprocess(self, x_batch: np.ndarray, **kwargs: Any) -> None:
            assert np.prod(x_batch.shape[1:]) % self.features_in_step == 0

    return PixelFlipping(**settings)


def _deletion_settings(profile: str, h: int, w: int) -> tuple[dict, dict]:
    steps = 16 if profile == "reduced" else h  # ours defaults to H steps (the RISE code)
    per_step = -(-h * w // steps)
    return dict(steps=steps, baseline=0.0), dict(features_in_step=3 * per_step, perturb_baseline=0.0)


def _region_settings(profile: str, h: int, w: int) -> tuple[dict, dict]:
    regions = 16 if profile == "reduced" else 100
    return (dict(patch=8, regions=regions, baseline=0.0),
            dict(patch_size=8, regions_evaluation=regions, order="morf", perturb_baseline=0.0))


def _mu_settings(profile: str, h: int, w: int) -> tuple[dict, dict]:
    """Ours switches off ``int(0.2 * 81)`` cells of a 9x9 grid (Xplique's defaults) per sample,
    Quantus ``subset_size`` elements (channels apart): the same number of values, ``3 * 16/81 H W``
    (cost per sample: one forward pass on both sides, whatever the subset)."""
    samples = 20 if profile == "reduced" else 200  # ours: 200 (Xplique's); Quantus' 100
    return (dict(samples=samples, grid_size=9, subset_percent=0.2, baseline=0.0, key=0),
            dict(nr_runs=samples, subset_size=3 * round(16 / 81 * h * w), perturb_baseline=0.0,
                 return_aggregate=False))


def _infidelity_settings(profile: str, h: int, w: int) -> tuple[dict, dict]:
    patch = 56 if profile == "reduced" else 4  # Quantus' default [4]: H W / 16 forward passes per sample
    return dict(normalize=False, score="logit"), dict(n_perturb_samples=1, perturb_patch_sizes=[patch],
                                                      perturb_baseline=0.0)


def _infidelity_perturbations(inp: Inputs, metric: Any) -> dict[str, Any]:
    """Quantus' own perturbations, for ours as ``I [B, S, H, W, C]`` (``x_I = x - I``): its blocks
    of side ``patch`` in raster order set to the baseline one after another, cumulatively (its
    loop perturbs the last perturbed image). Deterministic with a fixed baseline, so each of its
    ``n_perturb_samples`` repeats the same: we time Quantus at 1 (at its default 10 it takes 10x
    as long for the same number)."""
    from quantus.helpers import utils

    x = inp.x_nchw
    steps = []
    (patch,) = metric.perturb_patch_sizes
    moved = x.copy()
    for idx in utils.get_block_indices(x, patch):
        moved = metric.perturb_func(arr=moved.reshape(len(x), -1), indices=idx).reshape(x.shape)
        steps.append(x - moved)
    return {"perturbation": np.ascontiguousarray(np.stack(steps, 1).transpose(0, 1, 3, 4, 2), np.float32)}


def _sensitivity_settings(profile: str, h: int, w: int) -> tuple[dict, dict]:
    samples = 5 if profile == "reduced" else 200  # Quantus' default 200; ours 10 (Captum's)
    return (dict(samples=samples, radius=0.2, method="gradient", key=0),
            dict(nr_samples=samples, lower_bound=0.2))


def _road_settings(profile: str, h: int, w: int) -> tuple[dict, dict]:
    """Quantus gets ``p / 3``: see ``_road_attribution``."""
    pct = [10, 50, 90] if profile == "reduced" else list(range(1, 100, 2))  # Quantus' default
    thirds = [p / 3 for p in pct]
    assert all(int(3 * h * w * q / 100) == int(h * w * p / 100) for p, q in zip(pct, thirds))
    return (dict(percentages=tuple(pct), noise=0.01, key=0), dict(percentages=thirds, noise=0.01))


def _road_attribution(inp: Inputs) -> np.ndarray:
    """``[B, 3, H, W]``: the map in channel 0, below its minimum in channels 1 and 2. Quantus 0.6's
    ``ROAD`` ranks 3 H W values (a map is broadcast over the channels) but imputes on an ``H W``
    mask (``noisy_linear_imputation``: ``mask[indices] = 0``): an IndexError as soon as a value of
    channel 1 or 2 is among those removed. Here the first H W ranked are channel 0's, the map's
    pixels, and ``p / 3`` percent of its ``3 H W`` (``a_size`` is then ``3 H W``) is ``p`` percent
    of the pixels: the pixels ours removes."""
    low = np.broadcast_to(inp.map.min((1, 2), keepdims=True) - 1, inp.map.shape)
    return np.ascontiguousarray(np.stack([inp.map, low, low], 1))


def _relevance_mass_settings(profile: str, h: int, w: int) -> tuple[dict, dict]:
    return dict(positive=False), {}


def _plain(profile: str, h: int, w: int) -> tuple[dict, dict]:
    return {}, {}


def _mprt_settings(profile: str, h: int, w: int) -> tuple[dict, dict]:
    return (dict(method="gradient", mode="cascading", key=0),
            dict(layer_order="top_down", seed=42, return_last_correlation=True, abs=True))


def _quantus_gradient(inp: Inputs) -> dict[str, Any]:
    """Quantus' ``"Gradient"``: captum's ``Saliency(abs=False)``, channels kept (our ``gradient``)."""
    import quantus

    return dict(explain_func=quantus.explain, explain_func_kwargs={"method": "Gradient", "reduce_axes": ()})


def _masks(inp: Inputs) -> dict[str, Any]:
    return {"s_batch": inp.mask[:, None].astype(np.float32)}


def _ours_masks(inp: Inputs, metric: Any) -> dict[str, Any]:
    return {"mask": inp.mask}


def _curve_after_steps(ours: dict[str, np.ndarray], theirs: np.ndarray) -> tuple[float, str]:
    return _max_diff(ours["curve"][:, 1:], theirs), "curve after each step (softmax)"


def _scores(ours: dict[str, np.ndarray], theirs: np.ndarray) -> tuple[float, str]:
    return _max_diff(ours["score"], theirs), "score"


PAIRS: dict[str, Pair] = {
    "deletion": Pair("PixelFlipping", _deletion_settings, make=_pixel_flipping, agree=_curve_after_steps,
                     note="Quantus' curve has no step-0 point and its AUC is np.trapz; ours the RISE AUC: curves compared"),
    "region_perturbation": Pair("RegionPerturbation", _region_settings, agree=_curve_after_steps,
                                note="curves f(x) - f(x_k), k >= 1, compared; ours AOPC includes k = 0"),
    "mu_fidelity": Pair("FaithfulnessCorrelation", _mu_settings,
                        note="random subsets, each side its own: ours 16 of 81 grid cells, Quantus as many "
                             "values drawn one by one; the logit, Pearson, on both sides"),
    "infidelity": Pair("Infidelity", _infidelity_settings, form="pixels", ours_extra=_infidelity_perturbations,
                       agree=_scores, note="ours given Quantus' perturbations (cumulative blocks); MSE of logits"),
    "max_sensitivity": Pair("MaxSensitivity", _sensitivity_settings, form="pixels", call=_quantus_gradient,
                            note="uniform noise in [-0.2, 0.2], each side its own draws; both re-explain with "
                                 "the signed gradient (captum Saliency abs=False)"),
    "road": Pair("ROAD", _road_settings, quantus_a=_road_attribution, note="noisy linear imputation, each side its own noise; Quantus "
                                              "returns the batch's accuracy per percentage (at p/3 of 3HW values = "
                                              "p% of the pixels, around its IndexError), ours the probability"),
    "pointing_game": Pair("PointingGame", _plain, call=_masks, ours_extra=_ours_masks, agree=_scores),
    "relevance_mass": Pair("RelevanceMassAccuracy", _relevance_mass_settings, call=_masks, ours_extra=_ours_masks,
                           agree=_scores, note="ours positive=False: Quantus' signed sums"),
    "relevance_rank": Pair("RelevanceRankAccuracy", _plain, call=_masks, ours_extra=_ours_masks, agree=_scores),
    "model_randomisation": Pair("MPRT", _mprt_settings, form="pixels", call=_quantus_gradient,
                                note="random weights, each side its own; last layer's Spearman of |a| maps"),
}
COMMON = dict(abs=False, normalise=False, disable_warnings=True, display_progressbar=False)


def build_model(name: str) -> tuple[Any, Any]:
    """``(jaxplain Model, its torch twin)`` for ``vgg16`` (random weights, 224x224),
    ``synthetic_vgg`` (the shipped weights, 64x64) or ``tiny`` (tests/conftest.py, 32x32)."""
    from jaxplain import models

    import torch

    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    if name == "tiny":
        from tests.conftest import tiny_pair

        net, model = tiny_pair(1)
        return model, net.to(device)
    from benchmarks.torch_vgg import torch_twin, torch_vgg

    params = lambda m: jax.tree.map(np.asarray, m.params)  # noqa: E731
    if name == "vgg16":
        model = models.vgg16()
        return model, torch_vgg("vgg16", params(model), device=device)
    if name == "synthetic_vgg":
        from jaxplain.models import synthetic

        model = models.synthetic_vgg()
        return model, torch_twin(synthetic.CONFIG, params(model), device=device)
    raise SystemExit(f"unknown model {name!r}: vgg16, synthetic_vgg or tiny")


def make_inputs(model: Any, batch: int, seed: int = 0) -> Inputs:
    """Random N(0, 1) images, the predicted classes, their gradients, and a box mask per image."""
    h, w = model.input_size or (32, 32)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, h, w, 3)).astype(np.float32)
    y = np.asarray(jax.vmap(lambda v: model.apply(model.params, v)[0].argmax())(x)).astype(np.int64)
    pixels = np.asarray(jaxplain.explain(model, x, y, "gradient"), np.float32)
    mask = np.zeros((batch, h, w), bool)
    for i in range(batch):
        top, left = rng.integers(0, h // 2), rng.integers(0, w // 2)
        mask[i, top:top + h // 2, left:left + w // 2] = True
    return Inputs(x, y, pixels.sum(-1), pixels, mask)


def _quantus_attr(inp: Inputs, form: str) -> np.ndarray:
    return inp.map[:, None] if form == "map" else np.ascontiguousarray(inp.pixels.transpose(0, 3, 1, 2))


@dataclasses.dataclass
class Calls:
    """One pair ready to run: ``ours()`` (blocks, NumPy out) and ``theirs()`` on the same batch."""

    ours: Callable[[], dict[str, np.ndarray]]
    theirs: Callable[[], np.ndarray]
    pair: Pair
    ours_settings: dict[str, Any]
    quantus_settings: dict[str, Any]


def calls(model: Any, net: Any, inp: Inputs, name: str, profile: str) -> Calls:
    """``name`` and its Quantus counterpart on ``inp`` at the ``profile``'s settings."""
    import quantus

    pair = PAIRS[name]
    h, w = inp.x.shape[1:3]
    ours_s, q_s = pair.settings(profile, h, w)
    metric = (pair.make or getattr(quantus, pair.quantus))(**{**COMMON, **q_s})
    a_ours = inp.map if pair.form == "map" else inp.pixels
    extra = pair.ours_extra(inp, metric)
    device = next(net.parameters()).device.type
    q_kw = dict(model=net, x_batch=inp.x_nchw, y_batch=inp.y, a_batch=(pair.quantus_a or (lambda i: _quantus_attr(i, pair.form)))(inp), device=device,
                channel_first=True, batch_size=len(inp.x), **pair.call(inp))

    def ours() -> dict[str, np.ndarray]:
        out = jaxplain.evaluate(model, inp.x, inp.y, a_ours, name, **ours_s, **extra)
        return {k: np.asarray(v) for k, v in jax.block_until_ready(out).items()}

    def theirs() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = metric(**q_kw)
            return np.asarray(list(out.values()) if isinstance(out, dict) else out, np.float64)  # ROAD: a dict

    return Calls(ours, theirs, pair, ours_s, q_s)


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def case(model: Any, net: Any, inp: Inputs, name: str, profile: str, rounds: int,
         min_round: float = 0.5) -> dict[str, Any]:
    """Time one pair with ``timing.side_by_side`` (a first call of each, reported as warm-up, then
    ``rounds`` interleaved rounds, calls shorter than ``min_round`` seconds repeated to fill one) and
    compare the scores."""
    c = calls(model, net, inp, name, profile)
    warm_ours, out_ours = _timed(c.ours)
    sides.log(f"{name}: ours' first call (compiling) {warm_ours:.1f} s")
    warm_theirs, out_theirs = _timed(c.theirs)
    sides.log(f"{name}: Quantus' first call {warm_theirs:.1f} s")
    b = len(inp.x)
    cmp, counts = sides.compare(c.ours, c.theirs, names=("jaxplain", "quantus"), items=b, rounds=rounds,
                               known={"quantus": warm_theirs}, min_round=min_round)
    diff, compared = c.pair.agree(out_ours, out_theirs) if c.pair.agree else (None, "not compared")
    return {
        "metric": name, "quantus": c.pair.quantus, "batch": b, "profile": profile,
        "ours_images_per_s": cmp.per_s("jaxplain").median, "quantus_images_per_s": cmp.per_s("quantus").median,
        "ratio": None if cmp.noisy else cmp.ratio.median, "ratio_text": cmp.ratio_text(),
        "ours_images_per_s_text": sides.rate(cmp, "jaxplain"), "quantus_images_per_s_text": sides.rate(cmp, "quantus"),
        "timing": cmp.as_dict(), "calls_per_round": [counts["jaxplain"], counts["quantus"]],
        "ours_warmup_s": warm_ours, "quantus_warmup_s": warm_theirs,
        "ours_mean_score": float(np.mean(out_ours["score"])), "quantus_mean_score": float(np.mean(out_theirs)),
        "max_abs_diff": diff, "compared": compared, "note": c.pair.note,
        "ours_settings": {k: repr(v) for k, v in c.ours_settings.items()},
        "quantus_settings": {k: repr(v) for k, v in c.quantus_settings.items()},
    }


def table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'metric':<20}{'Quantus':<24}{'ours img/s':>25}{'Quantus img/s':>25}{'ratio':>22}"
            f"{'warm-up s (ours/Q)':>20}{'max |diff|':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "skipped" in r:
            lines.append(f"{r['metric']:<20}{r.get('quantus', ''):<24}skipped: {r['skipped']}")
            continue
        d = r["max_abs_diff"]
        lines.append(f"{r['metric']:<20}{r['quantus']:<24}{r['ours_images_per_s_text']:>25}{r['quantus_images_per_s_text']:>25}"
                     f"{r['ratio_text']:>22}{r['ours_warmup_s']:>11.1f}/{r['quantus_warmup_s']:<8.1f}"
                     f"{(f'{d:.1e}' if d is not None else '-'):>12}")
    return "\n".join(lines)


def settings_lines(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        if "skipped" in r:
            continue
        out.append(f"  {r['metric']}: ours {r['ours_settings']}; Quantus {r['quantus_settings']} "
                   f"(mean score ours {r['ours_mean_score']:.4g}, Quantus {r['quantus_mean_score']:.4g}; "
                   f"compared: {r['compared']}){'; ' + r['note'] if r['note'] else ''}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", choices=["vgg16", "synthetic_vgg", "tiny"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--metrics", nargs="+", default=list(PAIRS))
    sides.add_arguments(p)
    p.add_argument("--profile", choices=["reduced", "reference"], default=None,
                   help="settings (default: reduced on VGG16, reference on the small models)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    import quantus
    import torch

    timing.equal_threads()
    profile = args.profile or ("reduced" if args.model == "vgg16" else "reference")
    model, net = build_model(args.model)
    inp = make_inputs(model, args.batch)
    info = bench.device_info()
    h, w = inp.x.shape[1:3]
    print(sides.header(args.compete, args.rounds, f"torch {torch.__version__}, quantus {quantus.__version__}"), flush=True)
    print(f"{info['device_kind']} ({info['platform']}; Quantus on {next(net.parameters()).device}); {args.model} {h}x{w}, "
          f"batch {args.batch}, {profile} settings; images/s median (min-max) of the rounds", flush=True)
    rows: list[dict[str, Any]] = []
    with sides.regime(args.compete):
        for name in args.metrics:
            if name not in PAIRS:
                rows.append({"metric": name, "skipped": "no Quantus counterpart in PAIRS"})
            elif name not in METRICS:
                rows.append({"metric": name, "quantus": PAIRS[name].quantus, "skipped": "not in jaxplain.METRICS (yet)"})
            else:
                rows.append(case(model, net, inp, name, profile, args.rounds))
            print(table(rows[-1:]).splitlines()[-1] if len(rows) > 1 else table(rows), flush=True)
    timings = [r["timing"] for r in rows if "timing" in r]
    print(sides.footer(timings))
    print("settings (identical on both sides unless said):")
    print(settings_lines(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "batch": args.batch, "profile": profile, "rounds": args.rounds,
                       "compete": args.compete, "machine": sides.machine(), **info, "rows": rows}, f, indent=1)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
