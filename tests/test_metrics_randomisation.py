"""model_randomisation (Adebayo et al. 2018): Spearman against SciPy, SSIM against scikit-image,
the stages' weights against a NumPy re-statement, the whole check against Quantus 0.6 ``MPRT``
given the same random weights, one compilation for all stages, known answers, bad inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import torch
from skimage.metrics import structural_similarity

import jaxplain
from jaxplain import baselines
from jaxplain.errors import InputError
from jaxplain.metrics.randomisation import stage_params
from jaxplain.metrics.similarity import spearman, ssim
from tests.conftest import TINY, compiles_of, tiny_pair

B, H, W = 3, 32, 32
TOP_DOWN = ["predictions", "fc2", "fc1", "block3_conv2", "block3_conv1", "block2_conv1", "block1_conv1"]


@pytest.fixture(scope="module")
def case():
    net, model = tiny_pair(0)
    x = np.random.default_rng(0).normal(size=(B, H, W, 3)).astype(np.float32)
    targets = np.asarray(jnp.argmax(model(x), -1))
    return net, model, x, targets, np.asarray(jaxplain.explain(model, x, targets, "gradient"))


def edges(apply, params, x, target):
    """An "explanation" that ignores the model: the Sobel gradient magnitude of the image."""
    g = jnp.pad(x.mean(-1), 1, mode="edge")
    k = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]], np.float32)
    h, w = x.shape[:2]
    gx = sum(k[i, j] * g[i: i + h, j: j + w] for i in range(3) for j in range(3))
    gy = sum(k[j, i] * g[i: i + h, j: j + w] for i in range(3) for j in range(3))
    return jnp.sqrt(gx * gx + gy * gy)


def test_spearman_against_scipy():
    """Continuous values, many exact ties (ReLU-like zeros, small integers), 224x224: SciPy's
    average ranks, to 1e-6 (float32 ranks up to 50176, products summed in float32)."""
    rng = np.random.default_rng(0)
    f = jax.jit(spearman)
    a = rng.normal(size=(224, 224)).astype(np.float32)
    pairs = [
        (a, a + rng.normal(size=a.shape).astype(np.float32)),
        (np.maximum(a, 0), np.maximum(a + rng.normal(size=a.shape).astype(np.float32), 0)),
        (rng.integers(0, 5, size=(32, 32)).astype(np.float32), rng.integers(0, 3, size=(32, 32)).astype(np.float32)),
    ]
    for u, v in pairs:
        np.testing.assert_allclose(float(f(u, v)), scipy.stats.spearmanr(u.ravel(), v.ravel())[0], atol=1e-6)
    assert np.isnan(float(f(a, np.zeros_like(a))))  # a constant map has no ranks to correlate (SciPy: NaN)


def test_ssim_against_skimage():
    """``structural_similarity(a, b, data_range=1)`` with its defaults (7x7 uniform window, sample
    covariance), on maps in [0, 1] of several sizes, to 1e-5 (float32 window sums)."""
    rng = np.random.default_rng(1)
    f = jax.jit(ssim)
    for shape in [(32, 32), (17, 23), (7, 7)]:
        a = rng.uniform(size=shape).astype(np.float32)
        near = np.clip(a + 0.2 * rng.normal(size=shape), 0, 1).astype(np.float32)
        for b in (near, rng.uniform(size=shape).astype(np.float32), a):
            ref = structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0)
            np.testing.assert_allclose(float(f(a, b)), ref, atol=1e-5)
    with pytest.raises(InputError, match=r"at least 7x7"):
        ssim(jnp.zeros((6, 9)), jnp.zeros((6, 9)))


def test_stage_params_against_numpy(case):
    """The NumPy re-statement: the layers of model.layers that are keys of params, top-down;
    cascading stage s replaces the top s + 1 of them, independent stage s only the s-th, full all;
    a replaced leaf is mean + std * z (its own NumPy mean and std, z its slice of one
    normal(fold_in(named(key, "model_randomisation"), 2**32 - 1), [n]) over the float leaves in tree order); every other layer is
    the original's own array."""
    _, model, *_ = case
    key = jax.random.key(3)
    stages = {mode: stage_params(model, {"mode": mode, "key": key}) for mode in ("cascading", "independent", "full")}
    assert [n for n, _ in stages["cascading"]] == TOP_DOWN == [n for n, _ in stages["independent"]]
    assert [n for n, _ in stages["full"]] == ["all"]
    layers = {n: model.params[n] for n in TOP_DOWN}
    leaves, tree = jax.tree.flatten(layers)
    weights_key = jax.random.fold_in(baselines.named(key, "model_randomisation"), 2**32 - 1)  # baselines' policy
    z = np.asarray(jax.random.normal(weights_key, (sum(a.size for a in leaves),)))
    expected, at = [], 0
    for a in map(np.asarray, leaves):
        expected.append(a.mean(dtype=np.float64) + a.std(dtype=np.float64) * z[at: at + a.size].reshape(a.shape))
        at += a.size
    fresh = jax.tree.unflatten(tree, expected)
    for s, name in enumerate(TOP_DOWN):
        for mode, changed in (("cascading", TOP_DOWN[: s + 1]), ("independent", [name])):
            params = stages[mode][s][1]
            assert set(params) == set(model.params)
            for layer in model.params:
                for p in model.params[layer]:
                    if layer in changed:
                        np.testing.assert_allclose(params[layer][p], fresh[layer][p], rtol=1e-5, atol=1e-6)
                    else:
                        assert params[layer][p] is model.params[layer][p]
    for layer in model.params:
        for p in model.params[layer]:
            np.testing.assert_array_equal(stages["full"][0][1][layer][p], stages["cascading"][-1][1][layer][p])


def test_each_stage_against_scipy_and_skimage(case):
    """Every stage's scores equal SciPy's Spearman and scikit-image's SSIM of the maps from
    ``explain`` on a model holding that stage's weights (so no stage ran on stale weights), to 1e-5."""
    _, model, x, targets, a = case
    out = jaxplain.evaluate(model, x, targets, a, "model_randomisation", key=5)
    assert list(out["layers"]) == TOP_DOWN and out["spearman"].shape == out["ssim"].shape == (B, len(TOP_DOWN))
    np.testing.assert_array_equal(out["score"], out["spearman"][:, -1])

    def unit(m):
        return (m - m.min()) / (m.max() - m.min())

    ref_a = np.abs(a).sum(-1).astype(np.float64)
    for s, (_, params) in enumerate(stage_params(model, {"mode": "cascading", "key": 5})):
        again = np.abs(np.asarray(jaxplain.explain(model.replace(params=params), x, targets, "gradient"))).sum(-1)
        for i in range(B):
            rho = scipy.stats.spearmanr(ref_a[i].ravel(), again[i].ravel())[0]
            ss = structural_similarity(unit(ref_a[i]), unit(again[i].astype(np.float64)), data_range=1.0)
            np.testing.assert_allclose(out["spearman"][i, s], rho, atol=1e-5)
            np.testing.assert_allclose(out["ssim"][i, s], ss, atol=1e-5)


def test_one_compilation_for_all_stages(case):
    """Seven stages, one trace of the method and one compilation of the batched metric: the
    stages' weights are arguments of one program. And the stages differ (no stale weights)."""
    _, model, x, targets, a = case
    traces = []

    def counted(apply, params, x, target):
        traces.append(1)
        return jax.grad(lambda v: apply(params, v)[0][target])(x)

    out, compiles = compiles_of("batched", lambda: jaxplain.evaluate(model, x, targets, a, "model_randomisation",
                                                                      method=counted, key=0))
    assert len(traces) == 1 and compiles == 1
    assert len(np.unique(np.asarray(out["spearman"][0]))) == len(TOP_DOWN)


def test_gradient_fails_edges_pass(case):
    """Known answers: gradient's Spearman falls once the top layers are random (it passes the
    check: it depends on the weights, as in the paper's Fig. 2); an edge detector that ignores the
    model keeps Spearman 1 and SSIM 1 at every stage (it fails the check, as the paper's edge
    detector does)."""
    _, model, x, targets, a = case
    grad = jaxplain.evaluate(model, x, targets, a, "model_randomisation", key=0)
    assert np.asarray(grad["spearman"]).max() < 0.9 and np.asarray(grad["score"]).mean() < 0.5
    e = np.asarray(jaxplain.explain(model, x, targets, edges))
    out = jaxplain.evaluate(model, x, targets, e, "model_randomisation", method=edges, key=0)
    np.testing.assert_allclose(out["spearman"], 1.0, atol=1e-6)
    np.testing.assert_allclose(out["ssim"], 1.0, atol=1e-6)
    full = jaxplain.evaluate(model, x, "predicted", e, "model_randomisation(mode='full')", method=edges, key=0)
    assert full["spearman"].shape == (B, 1) and list(full["layers"]) == ["all"]


def test_registered_method_and_random_method(case):
    """A registered name in the metric's string; a random method gets the per-image key of
    ``explain``, the same in every stage (a map drawn from the key alone scores 1 throughout)."""
    _, model, x, targets, _ = case
    a = jaxplain.explain(model, x, targets, "gradient_x_input")
    out = jaxplain.evaluate(model, x, targets, a, "model_randomisation(mode='full', method='gradient_x_input')", key=1)
    assert np.asarray(out["score"]).max() < 0.9

    def drawn(apply, params, x, target, *, key):
        return jax.random.uniform(key, x.shape[:2])

    a = jaxplain.explain(model, x, targets, drawn, key=1)
    out = jaxplain.evaluate(model, x, targets, a, "model_randomisation", method=drawn, key=1)
    np.testing.assert_allclose(out["spearman"], 1.0, atol=1e-6)


def test_against_quantus_mprt(case, monkeypatch):
    """Quantus 0.6 ``MPRT`` (top-down cascading, Spearman of |maps|, its defaults) on the tiny torch
    net, where each layer's ``reset_parameters`` loads our random weights for that layer (Quantus
    draws its own with torch's initialisers: otherwise the randomness differs). Its explain_func
    returns our map (sum over channels of |gradient|); Quantus' abs and normalisation by the max
    leave the ranks alone. To 1e-6 (measured 1.3e-7): torch and XLA float32 gradients differ only
    in the last bits, which could swap near-tied ranks."""
    import quantus
    from jaxplain.models.vgg_weights import convert, table

    net, model, x, targets, a = case
    torch_key = {(e.layer, e.param): e.key for e in table(TINY, "torchvision")}
    state = net.state_dict()
    where = convert({k: np.arange(v.numel(), dtype=np.float64).reshape(v.shape)
                                             for k, v in state.items()}, TINY, "torchvision")
    fresh = stage_params(model, {"mode": "full", "key": 7})[0][1]

    def to_torch(layer, param):  # our array in torch's layout, through the converter's index map
        flat = np.empty(state[torch_key[layer, param]].numel(), np.float32)
        flat[where[layer][param].ravel().astype(int)] = np.asarray(fresh[layer][param]).ravel()
        return torch.from_numpy(flat.reshape(state[torch_key[layer, param]].shape))

    names = dict(zip(["features.0", "features.3", "features.6", "features.8", "classifier.0", "classifier.3",
                      "classifier.6"], TOP_DOWN[::-1]))

    def load(module):
        with torch.no_grad():
            module.weight.copy_(module._ours["kernel"])
            module.bias.copy_(module._ours["bias"])

    for path, layer in names.items():
        module = net.get_submodule(path)
        module._ours = {p: to_torch(layer, p) for p in ("kernel", "bias")}
        monkeypatch.setattr(module, "reset_parameters", functools.partial(load, module))

    def explain_func(model, inputs, targets, **kw):
        t = torch.tensor(np.array(inputs), requires_grad=True)
        model(t)[torch.arange(len(t)), torch.tensor(np.array(targets))].sum().backward()
        return t.grad.abs().sum(1, keepdim=True).numpy()

    ref = quantus.MPRT(disable_warnings=True)(model=net, x_batch=x.transpose(0, 3, 1, 2), y_batch=targets,
                                              a_batch=np.abs(a).sum(-1)[:, None], explain_func=explain_func)
    assert list(ref)[1:] == [p for p, _ in sorted(names.items(), key=lambda kv: TOP_DOWN.index(kv[1]))]
    ours = jaxplain.evaluate(model, x, targets, a, "model_randomisation", key=7)
    np.testing.assert_allclose(np.asarray(ours["spearman"]), np.array(list(ref.values())[1:]).T, atol=1e-6)


@pytest.mark.parametrize("change, settings, message", [
    ({"params": [1.0]}, {"key": 0}, r"cannot be randomised layer by layer: none of its layers names weights in model.params"),
    ({"layers": ("a", "b")}, {"key": 0}, r"cannot be randomised layer by layer"),
    ({}, {"key": 0, "mode": "bottom_up"}, r"mode must be one of 'cascading', 'independent', 'full', got 'bot"),
    ({}, {}, r"model_randomisation draws random weights: pass key="),
    ({}, {"key": jax.random.split(jax.random.key(0), B)}, r"needs one key \(the weights are drawn once for all"),
    ({}, {"key": 0, "method": "no_such_method"}, r"unknown method 'no_such_method'"),
    ({}, {"key": 0, "method": lambda apply, params, x, target: x[:8, :8]}, r"the attribution's map is \(32, 32\)"),
])
def test_bad_inputs(case, change, settings, message):
    _, model, x, targets, a = case
    with pytest.raises(InputError, match=message):
        jaxplain.evaluate(model.replace(**change), x, targets, a, "model_randomisation", **settings)


def test_a_constant_randomised_map_counts_as_no_similarity(tiny_model):
    """A randomised network whose gradient is all zero (every ReLU dead) keeps nothing of the
    original ranking: its Spearman is 0, not SciPy's NaN."""
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    a = jaxplain.explain(tiny_model, x, 0, "gradient")
    zero = lambda apply, params, x, target: jnp.zeros_like(x)  # noqa: E731
    out = jaxplain.evaluate(tiny_model, x, 0, a, "model_randomisation", method=zero, mode="full", key=0)
    assert (np.asarray(out["spearman"]) == 0).all() and (np.asarray(out["score"]) == 0).all()


def test_a_vit_is_randomised_block_by_block(tiny_vit):
    """A ViT's weights are nested (``params["blocks"][i]``): its stages are the blocks named by
    their dotted layer names, top down, each block's attention inside its block (never a stage of
    its own), and a cascading stage replaces exactly the weights of the layers above it."""
    from jaxplain.metrics.randomisation import randomised_layers, stage_params

    assert randomised_layers(tiny_vit) == ["patch_embed", "blocks.0", "blocks.1", "norm", "head"]
    stages = dict(stage_params(tiny_vit, {"key": 3, "mode": "cascading"}))
    assert list(stages) == ["head", "norm", "blocks.1", "blocks.0", "patch_embed"]
    p, q = tiny_vit.params, stages["blocks.1"]
    changed = lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b))  # noqa: E731
    for part in ("head", "norm"):
        assert all(jax.tree.leaves(jax.tree.map(changed, p[part], q[part])))
    assert all(jax.tree.leaves(jax.tree.map(changed, p["blocks"][1], q["blocks"][1])))
    for part in ("patch_embed", "cls_token", "pos_embed"):
        assert not any(jax.tree.leaves(jax.tree.map(changed, p[part], q[part])))
    assert not any(jax.tree.leaves(jax.tree.map(changed, p["blocks"][0], q["blocks"][0])))
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    a = jaxplain.explain(tiny_vit, x, [1, 2], "gradient")
    r = jaxplain.evaluate(tiny_vit, x, [1, 2], a, "model_randomisation", key=3)
    assert np.asarray(r["spearman"]).shape == (2, 5) and np.isfinite(np.asarray(r["spearman"])).all()


def test_independent_mode_scores_the_mean_over_stages(case):
    """``mode="independent"`` randomises one layer per stage, so no stage is "the" randomised
    model: its score is the mean of the stages' Spearman (Quantus' MPRT with
    ``return_average_correlation=True``), recomputed here from SciPy per stage; cascading keeps
    the last, fully random stage (``return_last_correlation``)."""
    _, model, x, targets, a = case
    out = jaxplain.evaluate(model, x, targets, a, "model_randomisation", mode="independent", key=5)
    ref_a = np.abs(a).sum(-1).astype(np.float64)
    rhos = np.zeros((B, len(TOP_DOWN)))
    for s, (_, params) in enumerate(stage_params(model, {"mode": "independent", "key": 5})):
        again = np.abs(np.asarray(jaxplain.explain(model.replace(params=params), x, targets, "gradient"))).sum(-1)
        rhos[:, s] = [scipy.stats.spearmanr(ref_a[i].ravel(), again[i].ravel())[0] for i in range(B)]
    np.testing.assert_allclose(out["score"], rhos.mean(1), atol=1e-5)
    assert np.abs(rhos.mean(1) - rhos[:, -1]).max() > 1e-3  # the two summaries differ here


def test_a_linen_model_from_flax_is_randomised_layer_by_layer():
    """``jaxplain.from_flax`` keeps Linen's variables as ``{"params": {...}}``: the layers are
    found under ``"params"``, a cascading stage replaces exactly the kernels of the layers above
    it (Linen's biases start at zero, so their draw from N(0, 0) keeps them), and every stage's Spearman is SciPy's on the maps of that stage's weights."""
    import flax.linen as nn

    from jaxplain.metrics.randomisation import randomised_layers

    class CNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(6, (3, 3))(x))
            x = nn.relu(nn.Conv(6, (3, 3), strides=2)(x))
            return nn.Dense(4)(x.mean((1, 2)))

    variables = CNN().init(jax.random.key(0), np.zeros((1, 16, 16, 3), np.float32))
    model = jaxplain.from_flax(CNN(), variables, input_size=(16, 16))
    assert randomised_layers(model) == ["Conv_0", "Conv_1", "Dense_0"]
    stages = dict(stage_params(model, {"mode": "cascading", "key": 2}))
    assert list(stages) == ["Dense_0", "Conv_1", "Conv_0"]
    p, q = model.params["params"], stages["Conv_1"]["params"]
    for layer in ("Conv_0", "Conv_1", "Dense_0"):
        assert np.array_equal(p[layer]["kernel"], q[layer]["kernel"]) == (layer == "Conv_0"), layer
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    a = np.asarray(jaxplain.explain(model, x, [0, 3], "gradient"))
    out = jaxplain.evaluate(model, x, [0, 3], a, "model_randomisation", key=2)
    assert list(out["layers"]) == list(stages)
    for s, params in enumerate(stages.values()):
        again = np.abs(np.asarray(jaxplain.explain(model.replace(params=params), x, [0, 3], "gradient"))).sum(-1)
        for i in range(2):
            rho = scipy.stats.spearmanr(np.abs(a[i]).sum(-1).ravel(), again[i].ravel())[0]
            np.testing.assert_allclose(out["spearman"][i, s], rho, atol=1e-5)
