"""METHODS and METRICS: every explanation method and metric by name, and the parser for
``"name(setting=value, ...)"``."""

from __future__ import annotations

import ast
import inspect
from typing import Any, Callable, Mapping

from jaxplain.errors import InputError
from jaxplain.methods import attention, cam, gradients, integrated, layer, perturb, relevance, xrai, smooth, surrogate
from jaxplain.marks import wrapped
from jaxplain.metrics import faithfulness, imputation, localisation, randomisation, robustness

METHODS: dict[str, Callable] = {
    "gradient": gradients.gradient,
    "gradient_x_input": gradients.gradient_x_input,
    "guided_backprop": gradients.guided_backprop,
    "deconvnet": gradients.deconvnet,
    "integrated_gradients": integrated.integrated_gradients,
    "expected_gradients": integrated.expected_gradients,
    "blur_ig": integrated.blur_ig,
    "guided_ig": integrated.guided_ig,
    "smoothgrad": smooth.smoothgrad,
    "squaregrad": smooth.squaregrad,
    "vargrad": smooth.vargrad,
    "grad_cam": cam.grad_cam,
    "grad_cam_pp": cam.grad_cam_pp,
    "hires_cam": cam.hires_cam,
    "xgrad_cam": cam.xgrad_cam,
    "layer_cam": cam.layer_cam,
    "eigen_cam": cam.eigen_cam,
    "score_cam": cam.score_cam,
    "guided_grad_cam": cam.guided_grad_cam,
    "layer_gradient_x_activation": layer.layer_gradient_x_activation,
    "layer_integrated_gradients": layer.layer_integrated_gradients,
    "neuron_gradient": layer.neuron_gradient,
    "neuron_integrated_gradients": layer.neuron_integrated_gradients,
    "occlusion": perturb.occlusion,
    "rise": perturb.rise,
    "feature_ablation": surrogate.feature_ablation,
    "lime": surrogate.lime,
    "kernel_shap": surrogate.kernel_shap,
    "xrai": xrai.xrai,
    "attention_rollout": attention.attention_rollout,
    "transformer_attribution": attention.transformer_attribution,
    "lrp": relevance.lrp,
    "deeplift": relevance.deeplift,
    "deeplift_shap": relevance.deeplift_shap,
    "crp": relevance.crp,
}


METRICS: dict[str, Callable] = {
    "deletion": faithfulness.deletion,
    "insertion": faithfulness.insertion,
    "region_perturbation": faithfulness.region_perturbation,
    "mu_fidelity": faithfulness.mu_fidelity,
    "road": imputation.road,
    "infidelity": robustness.infidelity,
    "max_sensitivity": robustness.max_sensitivity,
    "pointing_game": localisation.pointing_game,
    "relevance_mass": localisation.relevance_mass,
    "relevance_rank": localisation.relevance_rank,
    "model_randomisation": randomisation.model_randomisation,
}

_EXAMPLE = {"method": "integrated_gradients(steps=64)", "metric": "deletion(steps=56)"}


def lookup(method: str | Callable, kind: str = "method") -> Callable:
    """The function for a registered name of ``kind`` (``"method"`` or ``"metric"``), or the function itself."""
    if callable(method):
        return method
    table = METHODS if kind == "method" else METRICS
    if method not in table:
        raise InputError(f"unknown {kind} {method!r}; registered: {', '.join(sorted(table))}")
    return table[method]


def parse(spec: str | Callable, kind: str = "method") -> tuple[Callable, dict[str, Any]]:
    """``"integrated_gradients(steps=64, rule='riemann_left')"`` -> (function, settings); ``kind``
    ``"metric"`` reads ``METRICS`` instead of ``METHODS``.

    Settings are Python literals, and ``slice(a, b)`` inside a tuple (a neuron selector); a bare
    name such as ``"gradient"`` has none.
    """
    if callable(spec):
        return spec, {}
    if not isinstance(spec, str):
        raise InputError(f"{kind} must be a name or a function, got {type(spec).__name__}")
    hint = f"cannot parse {kind} {spec!r}; write e.g. \"{_EXAMPLE[kind]}\""
    try:
        node = ast.parse(spec.strip(), mode="eval").body
    except SyntaxError:
        raise InputError(hint) from None
    if isinstance(node, ast.Name):
        return lookup(node.id, kind), {}
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args):
        raise InputError(hint)
    try:
        settings = {kw.arg: _literal(kw.value) for kw in node.keywords if kw.arg}
    except ValueError:
        names = [f'{kw.arg}="{kw.value.id}"' for kw in node.keywords if isinstance(kw.value, ast.Name)]
        hint = f"; quote a string: {', '.join(names)}" if names else ""
        raise InputError(f"settings in {spec!r} must be literals (numbers, strings, True/False/None){hint}") from None
    return lookup(node.func.id, kind), settings


def _literal(node: ast.expr) -> Any:
    """A Python literal, with ``slice(...)`` of literals allowed inside tuples and lists."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "slice" \
            and not node.keywords and 1 <= len(node.args) <= 3:
        return slice(*(ast.literal_eval(a) for a in node.args))
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_literal(e) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    return ast.literal_eval(node)


def parse_metric(spec: str | Callable) -> tuple[Callable, dict[str, Any]]:
    """``parse`` for ``METRICS``: ``"deletion(steps=56)"`` -> (function, settings)."""
    return parse(spec, "metric")


def settings_of(fn: Callable) -> dict[str, Any]:
    """The keyword-only settings a method takes, with their defaults."""
    return {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def resolve(fn: Callable, settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` checked against ``fn``'s, with a wrapping method's ``base`` (a name, a
    ``"name(k=v)"`` string or a function) resolved to its function and its settings checked in
    turn; the settings in a ``base`` string join ``base_settings`` (for a metric that re-explains,
    ``method`` and ``method_settings``)."""
    known = settings_of(fn)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        name = getattr(fn, "__name__", "method")
        raise InputError(f"{name} has no setting {', '.join(map(repr, unknown))}; its settings: {', '.join(known) or 'none'}")
    names = wrapped(fn)
    if names is None:
        return settings
    name, inner_name = names
    inner = settings.get(inner_name) or {}
    if not isinstance(inner, Mapping):
        raise InputError(f"{inner_name} must be a dict of the {name} method's settings, got {type(inner).__name__}")
    base, parsed = parse(settings.get(name, known[name]))
    return {**settings, name: base, inner_name: resolve(base, {**parsed, **inner})}
