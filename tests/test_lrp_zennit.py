"""``lrp`` against zennit 0.5.1 on the same weights: every composite on VGG16 and ResNet-50, every
single rule and user ``rules=`` globs (zennit's ``NameMapComposite``) on the tiny VGG.

zennit's ``Gradient`` attributor with ``attr_output = one_hot * output`` starts from the target's
logit as ``lrp`` does. Torch twins carry torchvision's module names and random non-zero biases;
the ResNet's batch norms have random statistics and affine parameters. zennit's ResNet canonizer
needs torchvision's ``Bottleneck`` class, which does not import here, so the ResNet twin does its
work by hand: each batch norm merged into the conv before it, each residual sum an explicit
``zennit.layer.Sum`` module (zennit's ``Norm`` rule there, as our proportional rule). VGG16 needs no
canonizer. Inputs are preprocessed pixels, inside the ``zbox`` bounds (preprocessed 0 and 255).

Quirks of zennit met here (none changes a map on these networks): its "first layer" (``flat``,
``zbox``) is the first module in *registration* order, not in the forward pass, so a twin must
register its first conv first; its ``Pass`` rule on ReLUs passes relevance where the ReLU was off,
where the gradient gives zero, but every rule above multiplies by the ReLU's output (zero there),
so maps agree; ``Epsilon(0)`` divides by zero where ``z == 0`` (NaN) where ours gives zero.

Tolerance: float32 throughout, the same formulas summed in other orders (XLA's and torch's
convolutions); the stabilised denominators (1e-6) amplify rounding where ``z`` is near zero. Max
abs error <= 1e-4 of max |map| and correlation >= 0.9999 asserted; measured on this machine's CPU:
VGG16 <= 1.4e-6, ResNet-50 1.0e-6, tiny VGG <= 1.0e-6 (``zero`` everywhere: 5.7e-6); every
correlation above 1 - 1e-11.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from jaxplain.methods.relevance import box_for_model, lrp
from tests.torch_reference import TorchResNet, TorchVGG
from tests.zennit_stub import zennit

TOL, CORR = 1e-4, 0.9999


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Two torch threads spin on a busy 2-core machine: zennit on VGG16 took 8x the CPU time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

COMPOSITES = ["epsilon_plus", "epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1",
              "epsilon_alpha2_beta1_flat"]


def _zennit_composite(name: str, low: torch.Tensor, high: torch.Tensor):
    zc = zennit().composites
    if name == "epsilon_gamma_box":
        return zc.EpsilonGammaBox(low=low, high=high)
    return zc.COMPOSITES[name]()


def _zennit_lrp(net: nn.Module, composite, x_nhwc: np.ndarray, target: np.ndarray) -> np.ndarray:
    """zennit's relevance ``[B, H, W, C]`` of ``target``'s logit under ``composite``."""
    z = zennit()
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    t = torch.as_tensor(target)
    with z.attribution.Gradient(net, composite) as attributor:
        _, rel = attributor(x, lambda out: torch.nn.functional.one_hot(t, out.shape[1]).to(out.dtype) * out)
    return rel.detach().numpy().transpose(0, 2, 3, 1)


def _ours(model, xs: np.ndarray, ts: np.ndarray, specs: list[tuple[str, dict | None]], box=None,
          quick_compile: bool = False) -> np.ndarray:
    """``[len(specs), B, H, W, C]``: ``lrp`` under each ``(composite, rules)``, all in one compiled
    call (``quick_compile``: XLA's backend without optimisation, for ResNet-50's ~700 convs)."""
    def one(params, x, t):
        return jnp.stack([lrp(model.apply, params, x, t, composite=c, rules=r, box=box) for c, r in specs])

    args = (model.params, jnp.asarray(xs), jnp.asarray(ts))
    options = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True} if quick_compile else {}
    out = jax.jit(jax.vmap(one, in_axes=(None, 0, 0))).lower(*args).compile(compiler_options=options)(*args)
    return np.moveaxis(np.asarray(out), 1, 0)


def _check(results: list[str], name: str, got: np.ndarray, want: np.ndarray) -> bool:
    """Appends ``name: error, correlation`` to ``results``; whether both are within tolerance."""
    assert got.shape == want.shape, (name, got.shape, want.shape)
    assert np.isfinite(want).all() and np.abs(want).max() > 0, name
    err = float(np.abs(got - want).max() / np.abs(want).max())
    corr = float(np.corrcoef(got.ravel(), want.ravel())[0, 1])
    results.append(f"{name}: max abs error / max |map| {err:.1e}, correlation {corr:.12f}")
    return err <= TOL and corr >= CORR


def _pixels(model, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Preprocessed random pixels (inside the zbox bounds)."""
    img = np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8)
    return np.asarray(model.preprocess(img), np.float32)


def _targets(net: nn.Module, xs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(xs.transpose(0, 3, 1, 2)))).argmax(1).numpy()


def _composites_match(net: nn.Module, model, xs: np.ndarray, label: str, composites=COMPOSITES,
                      quick_compile: bool = False) -> None:
    """``composites`` on ``xs``: ours in one compiled call, zennit's one by one."""
    box = box_for_model(model.preprocess, 3)
    ts = _targets(net, xs)
    ours = _ours(model, xs, ts, [(c, None) for c in composites], box=box, quick_compile=quick_compile)
    low, high = (torch.tensor(np.asarray(b)).reshape(1, 3, 1, 1).expand(len(xs), 3, *xs.shape[1:3]) for b in box)
    results, ok = [], True
    for c, got in zip(composites, ours):
        ok &= _check(results, f"{label} {c}", got, _zennit_lrp(net, _zennit_composite(c, low, high), xs, ts))
    print("\n".join(results))
    assert ok, "\n".join(results)


# ---------------------------------------------------------------- VGG16


VGG16_COMPOSITES = COMPOSITES


def test_vgg16_composites_match_zennit():
    """Full-size VGG16 with torchvision's head at 64x64: block5 is 2x2, so the adaptive pool to
    7x7 overlaps bins (zennit's ``Norm`` there, ours the proportional rule). All five composites
    (together every rule: flat, zplus, epsilon; zbox, gamma; alpha2-beta1)."""
    from jaxplain.models import vgg_weights
    from jaxplain.models.vgg import VGGConfig, build

    torch.manual_seed(0)
    net = TorchVGG("vgg16").eval()
    cfg = VGGConfig(head="torchvision", name="vgg16")
    model = build(cfg, vgg_weights.convert({k: v.numpy() for k, v in net.state_dict().items()}, cfg, "torchvision"),
                  source="torchvision")
    _composites_match(net, model, _pixels(model, (1, 64, 64, 3), seed=0), "vgg16", VGG16_COMPOSITES, quick_compile=True)


# ---------------------------------------------------------------- ResNet-50


class _MergedBottleneck(nn.Module):
    """A torchvision ``Bottleneck`` after zennit's ResNet canonizer: batch norms merged into the
    convs (with biases), the residual sum a ``zennit.layer.Sum``; one ReLU module per use."""

    def __init__(self, block):
        super().__init__()
        self.conv1, self.conv2, self.conv3 = (_merge(getattr(block, f"conv{i}"), getattr(block, f"bn{i}"))
                                              for i in (1, 2, 3))
        self.downsample = None if block.downsample is None else nn.Sequential(_merge(*block.downsample))
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()
        self.sum = zennit().layer.Sum()

    def forward(self, x):
        out = self.conv3(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu3(self.sum(torch.stack([out, identity], dim=-1)))


def _merge(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """``bn(conv(x))`` as one conv with a bias (eval mode: running statistics)."""
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=True)
    with torch.no_grad():
        out.weight.copy_(conv.weight * s[:, None, None, None])
        out.bias.copy_(bn.bias - bn.running_mean * s + (0 if conv.bias is None else conv.bias * s))
    return out


class _MergedResNet(nn.Module):
    """``TorchResNet`` canonized by hand, module names as torchvision's (``conv1`` registered first)."""

    def __init__(self, net: TorchResNet):
        super().__init__()
        self.conv1 = _merge(net.conv1, net.bn1)
        self.relu = nn.ReLU()
        self.maxpool = net.maxpool
        self.stages = net.stages
        for s in range(1, net.stages + 1):
            setattr(self, f"layer{s}", nn.Sequential(*map(_MergedBottleneck, getattr(net, f"layer{s}"))))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = net.fc

    def forward(self, x):
        x = self.maxpool(self.relu(self.conv1(x)))
        for s in range(1, self.stages + 1):
            x = getattr(self, f"layer{s}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


RESNET_COMPOSITES = COMPOSITES


def test_resnet50_composites_match_zennit():
    """Full-size ResNet-50 (random batch-norm statistics, folded by our torchvision converter; by
    hand in the twin) at 32x32 under ``epsilon_gamma_box`` (zbox on the padded 7x7 stride-2 stem,
    gamma, epsilon; ``Sum`` / residual adds, 3x3 max pool, global average pool) and the other four
    composites (zplus, alpha-beta and flat through the residual sums)."""
    from jaxplain.models import ResNetConfig, build_resnet, resnet_weights

    torch.manual_seed(1)
    ref = TorchResNet().eval()
    net = _MergedResNet(ref).eval()
    cfg = ResNetConfig()
    raw = {k: v.detach().float().numpy() for k, v in ref.state_dict().items()}
    model = build_resnet(cfg, resnet_weights.convert(raw, cfg, "torchvision"), source="torchvision")
    xs = _pixels(model, (1, 32, 32, 3), seed=1)
    with torch.no_grad():  # the hand-made canonizer keeps the network's function
        x = torch.from_numpy(np.ascontiguousarray(xs.transpose(0, 3, 1, 2)))
        np.testing.assert_allclose(net(x).numpy(), ref(x).numpy(), rtol=0, atol=1e-4 * ref(x).abs().max().item())
    _composites_match(net, model, xs, "resnet50", RESNET_COMPOSITES, quick_compile=True)


# ---------------------------------------------------------------- single rules and user rules= (tiny VGG)

# torchvision's module names of the tiny VGG's layers, ours -> theirs
TINY_NAMES = {"block1_conv1": "features.0", "block2_conv1": "features.3", "block3_conv1": "features.6",
              "block3_conv2": "features.8", "fc1": "classifier.0", "fc2": "classifier.3",
              "predictions": "classifier.6"}


def _name_map(rules: dict, rule_of) -> list:
    """zennit's ``NameMapComposite`` list for our ``rules`` (globs expanded here by ``fnmatch``)."""
    import fnmatch

    out = []
    for pattern, spec in reversed(list(rules.items())):  # ours: the last matching pattern wins
        names = tuple(t for o, t in TINY_NAMES.items() if fnmatch.fnmatchcase(o, pattern))
        out.append((names, rule_of(spec)))
    return out


def test_tiny_vgg_composites_rules_and_globs_match_zennit():
    """All five composites; rules no composite covers (``epsilon(0.25)``, ``zero`` = zennit's ``Epsilon(0)``, ``wsquare``,
    ``gamma(0.5)``) and user ``rules=`` globs over a composite, against zennit's ``NameMapComposite``
    over its ``EpsilonPlus`` (for the layers no name matches, and the average pool's ``Norm``: a
    ``NameMapComposite`` alone would leave the pool to the gradient), on the tiny VGG (its 4x4 ->
    2x2 adaptive pool); one compiled call."""
    from tests.conftest import tiny_pair

    z = zennit()
    zr = z.rules
    rule_of = {"epsilon(0.25)": lambda: zr.Epsilon(0.25), "zero": lambda: zr.Epsilon(0.0),
               "wsquare": lambda: zr.WSquare(), "gamma(0.5)": lambda: zr.Gamma(0.5),
               "epsilon": lambda: zr.Epsilon(1e-6)}
    cases = {c: (c, None) for c in COMPOSITES} | {
        "epsilon(0.25) everywhere": ("epsilon", {"*": "epsilon(0.25)"}),
        "zero everywhere": ("epsilon_plus_flat", {"*": "zero"}),
        "gamma(0.5) on convs": ("epsilon_plus", {"block*": "gamma(0.5)"}),
        "globs over epsilon_plus": ("epsilon_plus", {"block1_*": "wsquare", "block3_conv?": "gamma(0.5)",
                                                     "fc*": "epsilon(0.25)", "fc2": "zero", "predictions": "zero"}),
    }
    net, model = tiny_pair(seed=3)
    xs = _pixels(model, (1, 32, 32, 3), seed=3)
    ts = _targets(net, xs)
    box = box_for_model(model.preprocess, 3)
    ours = _ours(model, xs, ts, list(cases.values()), box=box)
    results, ok = [], True
    low, high = (torch.tensor(np.asarray(b)).reshape(1, 3, 1, 1).expand(1, 3, 32, 32) for b in box)
    for (name, (composite, rules)), got in zip(cases.items(), ours):
        if rules is None:
            want = _zennit_lrp(net, _zennit_composite(composite, low, high), xs, ts)
        else:  # EpsilonPlus under the names: its Norm on the average pool, Pass on ReLUs, rules elsewhere
            names = z.composites.NameMapComposite(_name_map(rules, lambda spec: rule_of[spec]()))
            want = _zennit_lrp(net, z.composites.MixedComposite([names, z.composites.EpsilonPlus()]), xs, ts)
        ok &= _check(results, name, got, want)
    print("\n".join(results))
    assert ok, "\n".join(results)
