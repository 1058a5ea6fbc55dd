"""The surrogate family beside its anchors in the pytest-benchmark suite: the tiny model (32x32),
batch 8, a 4x4 grid, 64 samples, XRAI's IG at 20 steps (``benchmarks/surrogates_vs_peers.py``
runs the usual settings and VGG16). The comparison is ``jaxplain.timing``'s method
(``benchmarks.sides.compare``: warm-up, 5 interleaved rounds); extra_info records both sides'
images/s, the ratio (``None`` when noisy) and ``Comparison.as_dict()``; the benchmark's own timing
is one more call of ours. Not in ``--quick``."""

import functools

import pytest

from jaxplain import METHODS, timing

pytest.importorskip("captum")
pytest.importorskip("lime")
pytest.importorskip("saliency")
from benchmarks import sides  # noqa: E402
from benchmarks.surrogates_vs_peers import Counted, make_batch, pairs  # noqa: E402

PEERS = [("feature_ablation", "captum.FeatureAblation"), ("lime", "lime.LimeImageExplainer"), ("lime", "captum.Lime"),
         ("kernel_shap", "captum.KernelShap"), ("xrai", "saliency.core.XRAI")]


@functools.lru_cache(maxsize=1)
def setup():
    from benchmarks.metrics_vs_quantus import build_model

    model, net = build_model("tiny")
    timing.equal_threads()
    data = make_batch(model, 8, "grid(cells=4)")
    todo, _ = pairs(model, Counted(net), data, [m for m in dict(PEERS) if m in METHODS], samples=64, steps=20, per_eval=None)
    return data, {(p.method, q.name): (p, q) for p in todo for q in p.peers}


@pytest.mark.parametrize("method,peer", PEERS, ids=[f"{m}-{p}" for m, p in PEERS])
def test_vs_surrogate_peer(benchmark, device, method, peer):
    if method not in METHODS:
        pytest.skip(f"{method} is not in jaxplain.METHODS yet")
    data, table = setup()
    pair, other = table[method, peer]
    benchmark.group = f"vs {peer} {method}"
    pair.ours()  # compile
    other.run()  # the peer's first call
    b = len(data.x)
    c, counts = sides.compare(pair.ours, other.run, names=("jaxplain", peer), items=b, rounds=5)
    benchmark.pedantic(pair.ours, rounds=1, iterations=1)
    benchmark.extra_info.update(device, method=method, peer=peer, batch=b, segments=data.m,
                                settings=repr({k: v for k, v in pair.ours_settings.items() if k != "segments"}),
                                peer_settings=repr(other.settings), passes_per_image=pair.passes,
                                images_per_s=c.per_s("jaxplain").median, peer_images_per_s=c.per_s(peer).median,
                                vs_peer=None if c.noisy else c.ratio.median, vs_peer_text=c.ratio_text(),
                                calls_per_round=counts, comparison=c.as_dict())
