"""AttnLRP (``lrp(composite="attn_lrp")``) on the tiny ViT, against two references on the same weights:

- the paper's rules (Achtibat et al., ICML 2024) written out in NumPy, block by block: epsilon on
  every linear layer (bias absorbing), the identity rule on GELU, the softmax rule
  ``R_x = x (R - s sum R)``, the uniform rule on ``q k^T`` and on ``probs @ v``, LayerNorm with its
  std held constant (LRP-0 on the centring, epsilon on its affine);
- LXT's "Gradient*Input" formulation of the same rules on a torch ViT with timm's module names
  (``lxt`` itself cannot be imported here: its ``lxt.efficient`` package imports ``transformers``
  and torchvision at import time, so its patches are written out in the test): LayerNorm with
  ``std.detach()``, GELU's gradient replaced by ``gelu(x) / x``, the gradients of ``q`` and ``k``
  divided by 4 and of ``v`` by 2, relevance = input x gradient.

Conservation: the softmax rule is not conservative (it absorbs what a bias would), so on a bias-free
ViT (no biases, LayerNorm shifts, class token or position embeddings) the input relevance equals the
logit minus what the softmaxes absorb, computed by the NumPy pass.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jaxplain.models.vit import build, random_params

import jaxplain
from jaxplain.errors import InputError
from jaxplain.methods.relevance import lrp
from jaxplain.propagation import graph as graph_
from jaxplain.propagation import transformer
from tests.conftest import TINY_VIT
from tests.torch_vit import TorchViT

EPS = 1e-6  # attn_lrp's default epsilon, used by the NumPy pass too


def _bias_free(params):
    def zero(path, v):
        return v * 0 if any(getattr(k, "key", None) in ("bias", "cls_token", "pos_embed") for k in path) else v
    return jax.tree_util.tree_map_with_path(zero, params)


@pytest.fixture(scope="module")
def vit():
    """The tiny ViT's params (random biases), its bias-free twin, two images, two targets and
    ``attn_lrp`` maps of both from ``explain``."""
    params = random_params(TINY_VIT, seed=1)
    xs = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype(np.float32)
    targets = np.array([3, 7])
    free = _bias_free(params)
    maps = {name: np.asarray(jaxplain.explain(build(TINY_VIT, p, source="timm"), xs, targets,
                                              method="lrp(composite='attn_lrp')"))
            for name, p in (("biased", params), ("free", free))}  # one compiled program for both
    return {"params": {"biased": params, "free": free}, "xs": xs, "targets": targets, "maps": maps}


# ---------------------------------------------------------------- the paper's rules in NumPy


def _stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def _ln_forward(h, p):
    mu = h.mean(-1, keepdims=True)
    c = h - mu
    std = np.sqrt((c * c).mean(-1, keepdims=True) + TINY_VIT.eps)
    y = c / std
    return {"h": h, "c": c, "std": std, "y": y, "out": y * p["scale"] + p["bias"], "p": p}


def _ln_backward(f, r, eps):
    """Epsilon on the affine ``y * scale + bias``; identity on the division by std; LRP-0 on
    the centring ``c = (I - 1/D) h``."""
    ry = f["y"] * f["p"]["scale"] * r / _stab(f["out"], eps)
    g = ry / _stab(f["c"], eps)  # the division by std held constant passes ry to c
    return f["h"] * (g - g.mean(-1, keepdims=True))


def _dense_backward(x, w, z, r, eps):
    return x * ((r / _stab(z, eps)) @ w.T)


def _gelu(x):
    from scipy.special import erf
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def _block(h, p, heads):
    """Forward of one block, every intermediate kept."""
    t, d = h.shape
    hd = d // heads
    f = {"h": h, "n1": _ln_forward(h, p["norm1"])}
    qkv = f["n1"]["out"] @ p["attn"]["qkv"]["kernel"] + p["attn"]["qkv"]["bias"]
    f["qkv"] = qkv
    q, k, v = (qkv.reshape(t, 3, heads, hd)[:, i].transpose(1, 0, 2) for i in range(3))  # [heads, T, hd]
    f["q"], f["k"], f["v"] = q, k, v
    f["scores"] = q @ k.transpose(0, 2, 1)  # [heads, T, T], before the scale
    f["x"] = f["scores"] * hd**-0.5
    e = np.exp(f["x"] - f["x"].max(-1, keepdims=True))
    f["s"] = e / e.sum(-1, keepdims=True)
    f["o"] = f["s"] @ v  # [heads, T, hd]
    f["oc"] = f["o"].transpose(1, 0, 2).reshape(t, d)
    f["a"] = f["oc"] @ p["attn"]["proj"]["kernel"] + p["attn"]["proj"]["bias"]
    f["h1"] = h + f["a"]
    f["n2"] = _ln_forward(f["h1"], p["norm2"])
    f["u"] = f["n2"]["out"] @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
    f["gu"] = _gelu(f["u"])
    f["m"] = f["gu"] @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]
    f["out"] = f["h1"] + f["m"]
    return f


def _block_backward(f, p, r, heads, absorbed, eps):
    """AttnLRP through one block; ``absorbed`` collects what each softmax keeps."""
    t, d = f["h"].shape
    # residual h1 + m: proportional
    r_h1, r_m = f["h1"] * r / _stab(f["out"], eps), f["m"] * r / _stab(f["out"], eps)
    r_gu = _dense_backward(f["gu"], p["mlp"]["fc2"]["kernel"], f["m"], r_m, eps)
    r_u = r_gu  # identity rule on GELU
    r_n2 = _dense_backward(f["n2"]["out"], p["mlp"]["fc1"]["kernel"], f["u"], r_u, eps)
    r_h1 = r_h1 + _ln_backward(f["n2"], r_n2, eps)
    # residual h + a
    r_h, r_a = f["h"] * r_h1 / _stab(f["h1"], eps), f["a"] * r_h1 / _stab(f["h1"], eps)
    r_oc = _dense_backward(f["oc"], p["attn"]["proj"]["kernel"], f["a"], r_a, eps)
    r_o = r_oc.reshape(t, heads, d // heads).transpose(1, 0, 2)
    # uniform rule on o = s @ v: each operand half, epsilon with the other held constant
    g = r_o / (2 * _stab(f["o"], eps))
    r_s = f["s"] * (g @ f["v"].transpose(0, 2, 1))
    r_v = f["v"] * (f["s"].transpose(0, 2, 1) @ g)
    # the softmax rule on its input x (the scaled scores); the scale by a constant passes relevance
    r_x = f["x"] * (r_s - f["s"] * r_s.sum(-1, keepdims=True))
    absorbed.append(r_s.sum() - r_x.sum())
    g = r_x / (2 * _stab(f["scores"], eps))  # uniform rule on q k^T
    r_q = f["q"] * (g @ f["k"])
    r_k = f["k"] * (g.transpose(0, 2, 1) @ f["q"])
    r_qkv = np.stack([a.transpose(1, 0, 2) for a in (r_q, r_k, r_v)], axis=1).reshape(t, 3 * d)
    r_n1 = _dense_backward(f["n1"]["out"], p["attn"]["qkv"]["kernel"], f["qkv"], r_qkv, eps)
    return r_h + _ln_backward(f["n1"], r_n1, eps)


def paper_attn_lrp(params, x, target, absorbed, eps=EPS):
    """``[H, W, C]`` AttnLRP relevance of the tiny ViT, every rule written out."""
    cfg = TINY_VIT
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    g, P, d = cfg.grid, cfg.patch, cfg.width
    patches = x.reshape(g, P, g, P, 3).transpose(0, 2, 1, 3, 4).reshape(g * g, P * P * 3)
    w = p["patch_embed"]["kernel"].reshape(P * P * 3, d)
    emb = patches @ w + p["patch_embed"]["bias"]
    h0 = np.concatenate([p["cls_token"][None], emb]) + p["pos_embed"]
    fs, h = [], h0
    for i in range(cfg.depth):
        fs.append(_block(h, p["blocks"][i], cfg.heads))
        h = fs[-1]["out"]
    fn = _ln_forward(h, p["norm"])
    logits = fn["out"][0] @ p["head"]["kernel"] + p["head"]["bias"]
    r = np.zeros_like(logits)
    r[target] = logits[target]
    r_cls = _dense_backward(fn["out"][0], p["head"]["kernel"], logits, r, eps)
    r_n = np.zeros_like(fn["out"])
    r_n[0] = r_cls
    r = _ln_backward(fn, r_n, eps)
    for i in reversed(range(cfg.depth)):
        r = _block_backward(fs[i], p["blocks"][i], r, cfg.heads, absorbed, eps)
    r_emb = emb * r[1:] / _stab(h0[1:], eps)  # the position embeddings' shift absorbs its share
    r_patches = _dense_backward(patches, w, emb, r_emb, eps)
    return r_patches.reshape(g, g, P, P, 3).transpose(0, 2, 1, 3, 4).reshape(g * P, g * P, 3), logits[target]


# ---------------------------------------------------------------- LXT's Gradient*Input form in torch


class _Scale(torch.autograd.Function):
    """Identity forward, gradient divided by ``factor`` (LXT's ``divide_gradient``)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g / ctx.factor, None


class _Identity(torch.autograd.Function):
    """``gelu(x)`` forward, gradient ``gelu(x) / x`` (LXT's ``identity_rule_implicit``)."""

    @staticmethod
    def forward(ctx, x):
        out = torch.nn.functional.gelu(x)
        ctx.save_for_backward(out / (x + 1e-10))
        return out

    @staticmethod
    def backward(ctx, g):
        return ctx.saved_tensors[0] * g


def _torch_vit(params):
    cfg = TINY_VIT
    net = TorchViT(cfg.patch, cfg.depth, cfg.width, cfg.heads, cfg.mlp, cfg.classes, cfg.image_size).double()

    def t(a):
        return torch.from_numpy(np.asarray(a, np.float64))

    sd = {"patch_embed.proj.weight": t(params["patch_embed"]["kernel"]).permute(3, 2, 0, 1),
          "patch_embed.proj.bias": t(params["patch_embed"]["bias"]),
          "cls_token": t(params["cls_token"]).reshape(1, 1, -1), "pos_embed": t(params["pos_embed"])[None],
          "norm.weight": t(params["norm"]["scale"]), "norm.bias": t(params["norm"]["bias"]),
          "head.weight": t(params["head"]["kernel"]).T, "head.bias": t(params["head"]["bias"])}
    for i in range(cfg.depth):
        b = params["blocks"][i]
        for name, (mod, kind) in {"norm1": ("norm1", "ln"), "norm2": ("norm2", "ln"), "attn.qkv": ("attn/qkv", "d"),
                                  "attn.proj": ("attn/proj", "d"), "mlp.fc1": ("mlp/fc1", "d"),
                                  "mlp.fc2": ("mlp/fc2", "d")}.items():
            leaf = b
            for k in mod.split("/"):
                leaf = leaf[k]
            sd[f"blocks.{i}.{name}.weight"] = t(leaf["scale"]) if kind == "ln" else t(leaf["kernel"]).T
            sd[f"blocks.{i}.{name}.bias"] = t(leaf["bias"])
    net.load_state_dict(sd)
    return net


def _lxt_patch(net):
    """LXT's AttnLRP patches (``lxt/efficient/patches.py``'s layer_norm_forward, non_linear_forward,
    wrap_attention_forward) on the torch ViT's modules."""
    def layer_norm(self, x):
        mean = x.mean(-1, keepdim=True)
        std = (((x - mean) ** 2).mean(-1, keepdim=True) + self.eps).sqrt()
        return (x - mean) / std.detach() * self.weight + self.bias

    def attention(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = (_Scale.apply(qkv[0], 4), _Scale.apply(qkv[1], 4), _Scale.apply(qkv[2], 2))
        attn = ((q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    for mod in net.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.forward = layer_norm.__get__(mod)
        elif type(mod).__name__ == "Attention":
            mod.forward = attention.__get__(mod)
        elif isinstance(mod, torch.nn.GELU):
            mod.forward = _Identity.apply
    return net


def lxt_attn_lrp(params, xs, targets):
    net = _lxt_patch(_torch_vit(params))
    x = torch.from_numpy(xs.transpose(0, 3, 1, 2).astype(np.float64)).requires_grad_(True)
    logits = net(x)
    logits[torch.arange(len(targets)), torch.from_numpy(targets)].sum().backward()
    return (x * x.grad).detach().numpy().transpose(0, 2, 3, 1)


# ---------------------------------------------------------------- tests


def _rel_err(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def test_attn_lrp_matches_the_papers_rules_and_lxt_and_conserves_up_to_the_softmax(vit):
    """Measured (float32 maps, max error over the largest value): vs the paper's rules 6e-5 (2.5e-4
    bias-free), the same at float64: it is where each 1e-6 stabiliser sits (at float64 with every
    stabiliser at 1e-12 the two agree to 7e-10); the paper's rules at epsilon 0 vs LXT's form 2e-9;
    ours vs LXT 7e-4 (the stabilisers' effect: the paper's rules at 1e-6 are as far from LXT).
    Bias-free: the logit minus the input relevance equals what the softmaxes absorb to 3e-5 of
    ``|logit| + |absorbed|``; they absorb much (here 0.62 and 4.8 times the logit: the softmax
    rule's bias-like term, Achtibat et al. sec. 3.3)."""
    xs, targets = vit["xs"], vit["targets"]
    for name in ("biased", "free"):
        params, maps = vit["params"][name], vit["maps"][name]
        want = lxt_attn_lrp(params, xs, targets)
        assert _rel_err(maps, want) < 2e-3, (name, _rel_err(maps, want))
        for i in range(len(xs)):
            absorbed = []
            paper, logit = paper_attn_lrp(params, xs[i], targets[i], absorbed)
            assert _rel_err(maps[i], paper) < 5e-4, (name, i, _rel_err(maps[i], paper))
            if name == "biased":  # (bias-free, the class token's zero row is 0 / 0 without a stabiliser)
                exact, _ = paper_attn_lrp(params, xs[i], targets[i], [], eps=0.0)
                assert _rel_err(exact, want[i]) < 1e-7, (name, i, _rel_err(exact, want[i]))
            else:
                gap = logit - maps[i].sum(dtype=np.float64)  # everything but the softmaxes conserves
                scale = abs(logit) + abs(sum(absorbed))
                assert abs(gap - sum(absorbed)) < 1e-4 * scale, (gap, sum(absorbed), logit)
                assert abs(sum(absorbed)) > 1e-3 * abs(logit)  # the softmax rule does absorb (not vacuous)


def test_cnn_composites_refuse_a_vit_and_attn_lrp_covers_both_gelu_forms():
    params = random_params(TINY_VIT, seed=1)
    x = jnp.zeros((32, 32, 3), jnp.float32)
    model = build(TINY_VIT, params, source="timm")
    with pytest.raises(InputError, match="attn_lrp"):
        jax.eval_shape(lambda p, i: lrp(model.apply, p, i, 0, composite="epsilon_plus"), params, x)
    for source in ("timm", "google"):  # exact (erfc) and tanh GELU: each one identity unit per block
        m = build(TINY_VIT, params, source=source)
        g = transformer.prepare(graph_.trace(m.apply, params, x))
        assert [n.kind for n in g.nodes].count("softmax") == TINY_VIT.depth
        fc2 = [n for n in g.nodes if n.kind == "layer" and n.weight is not None
               and n.eqns[0].invars[0].aval.shape[-1] == TINY_VIT.mlp]
        units = {id(n.output): n for n in g.nodes if n.kind == "unary"}
        for n in fc2:  # the input of fc2 is a GELU unit whose input is fc1's output
            assert id(n.inputs[0]) in units and units[id(n.inputs[0])].inputs[0].aval.shape[-1] == TINY_VIT.mlp
        # the erf / erfc / tanh ops inside the units receive no relevance: the walk meets no uncovered op
        jax.eval_shape(lambda p, i, m=m: lrp(m.apply, p, i, 0, composite="attn_lrp"), params, x)
    with jax.softmax_custom_jvp(True):  # softmax as one custom-derivative call: a softmax node of its own
        g = graph_.trace(model.apply, params, x)
        assert [n.kind for n in g.nodes].count("softmax") == TINY_VIT.depth
        jax.eval_shape(lambda p, i: lrp(model.apply, p, i, 0, composite="attn_lrp"), params, x)


# ---------------------------------------------------------------- any transformer: Flax NNX's own layers


@jax.custom_vjp
def _grad_scaled(x, factor):
    return x


_grad_scaled.defvjp(lambda x, f: (x, f), lambda f, g: (g / f, None))


@jax.custom_vjp
def _gelu_identity(x):
    return jax.nn.gelu(x)


_gelu_identity.defvjp(lambda x: (jax.nn.gelu(x), jax.nn.gelu(x) / (x + 1e-10)),
                      lambda ratio, g: (g * ratio,))


def test_attn_lrp_on_a_flax_nnx_transformer_matches_lxts_form():
    """Flax's own LayerNorm (its scale folded into ``rsqrt(var)``, the fast variance), its
    MultiHeadAttention (query scaled before ``q k^T``) and tanh GELU: the graph is recognised
    without a name, and the map is LXT's gradient x input of the same network written in JAX
    (std held by ``stop_gradient``, GELU's gradient ``gelu(x) / x``, q and k gradients / 4, v / 2).
    Measured: 6e-4 of the largest value (the effect of the 1e-6 stabilisers, as on the ViT)."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Conv(3, 16, (4, 4), strides=(4, 4), rngs=rngs)
            self.ln1, self.ln2 = nnx.LayerNorm(16, rngs=rngs), nnx.LayerNorm(16, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=16, decode=False, rngs=rngs)
            self.fc1, self.fc2 = nnx.Linear(16, 32, rngs=rngs), nnx.Linear(32, 16, rngs=rngs)
            self.head = nnx.Linear(16, 5, rngs=rngs)

        def __call__(self, x):
            h = self.embed(x).reshape(x.shape[0], -1, 16)
            h = h + self.attn(self.ln1(h))
            h = h + self.fc2(nnx.gelu(self.fc1(self.ln2(h))))
            return self.head(h.mean(1))

    graphdef, state = nnx.split(nnx.eval_shape(lambda: Net(nnx.Rngs(0))))  # no initialiser compiled
    rng = np.random.default_rng(5)

    def draw(path, a):  # kernels std 1/sqrt(fan in); biases N(0, 0.1); LayerNorm scales 1 + N(0, 0.1)
        w = rng.standard_normal(a.shape).astype(np.float32)
        name = str(getattr(path[-1], "key", path[-1]))
        return w / np.sqrt(np.prod(a.shape[:-1])) if name == "kernel" else w * 0.1 + (name == "scale")

    net = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, state))
    model = jaxplain.from_flax(net, input_shape=(16, 16, 3), name="nnx_transformer")
    xs = rng.normal(size=(2, 16, 16, 3)).astype(np.float32)
    targets = np.array([1, 3])
    ours = np.asarray(jaxplain.explain(model, xs, targets, method="lrp(composite='attn_lrp')"))

    def ln(mod, h):
        c = h - h.mean(-1, keepdims=True)
        std = jnp.sqrt((c * c).mean(-1, keepdims=True) + mod.epsilon)
        return c / jax.lax.stop_gradient(std) * mod.scale[...] + mod.bias[...]

    def dense(mod, h, axes=1):
        return jnp.tensordot(h, mod.kernel[...], axes) + mod.bias[...]

    def lxt_form(x):
        a = net.attn
        h = net.embed(x[None]).reshape(1, -1, 16)
        y = ln(net.ln1, h)
        q = _grad_scaled(dense(a.query, y), 4.0) / np.sqrt(8)
        k, v = _grad_scaled(dense(a.key, y), 4.0), _grad_scaled(dense(a.value, y), 2.0)
        s = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k), axis=-1)
        h = h + dense(a.out, jnp.einsum("bhqk,bkhd->bqhd", s, v), 2)
        h = h + net.fc2(_gelu_identity(net.fc1(ln(net.ln2, h))))
        return net.head(h.mean(1))[0]

    grads = jax.jit(jax.vmap(jax.grad(lambda x, t: lxt_form(x)[t])))(jnp.asarray(xs), jnp.asarray(targets))
    want = xs * np.asarray(grads)
    assert _rel_err(ours, want) < 2e-3, _rel_err(ours, want)
