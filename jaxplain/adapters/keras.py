"""A Keras 3 model on the JAX backend as a ``Model``: ``from_keras(model)``.

How the contract ``apply(params, x [H, W, C], taps, relu) -> (logits [K], acts)`` is met:

- **Weights**: ``Model.params`` is a ``KerasWeights`` mapping ``layer name -> {weight: value}``
  (``"conv2d" -> {"kernel", "bias"}``) over the model's float variables, trainable or not
  (batch-norm statistics too; seed states are read from their variables). It holds the variables
  and reads their values whenever it is read or flattened, so every ``explain``/``evaluate`` call
  sees the weights the model has *then*: train on and explain again with the same ``Model``.
  Results depend on those values only (JAX arrays, immutable); a transformation of it
  (``jax.device_put``, ``jax.tree.map``) is a fixed snapshot.
- **Forward pass**: the variables' values enter through ``keras.StatelessScope`` (what
  ``model.stateless_call`` does), and the layers run with ``training=False``. A subclassed model
  is called through ``model.stateless_call`` and gives logits only (``layers=()``): it has no
  graph of layers to tap.
- **Layers** of a Functional or Sequential model are its layers' outputs, by their Keras names
  (``layer.name``), in the order the graph runs them; a layer called twice gives ``"name"`` then
  ``"name#2"``. Each layer's output is tapped and recorded (``jaxplain.adapters.recorder``), and
  the input of a layer that takes one float array is too, under ``input_key(name)``
  (``Model.layer_inputs``). A Functional model's graph is run by Keras' own graph walk
  (``Functional._run_through_graph``), each layer call wrapped; a Sequential model's layers are
  called in turn.
- **ReLU swap** (guided backprop, deconvnet): Keras' ``relu`` (``activation="relu"``,
  ``layers.ReLU()`` with its defaults, ``keras.ops.relu``) is ``jax.nn.relu`` on the JAX backend,
  swapped in the traced forward pass (``jaxplain.adapters.relus``).
- **Softmax**: a classifier ending in a softmax (``Dense(..., activation="softmax")``, an
  ``Activation("softmax")`` or ``Softmax`` layer) gives probabilities, not the logits jaxplain
  explains. ``logits=True`` drops that softmax (the last layer is then run as a copy with a linear
  activation on the same weights; ``score="probability"`` gives the model's probabilities back);
  ``logits=False`` keeps it; left ``None``, a final softmax is kept with an ``InputWarning``.
- **Input**: ``input_shape`` ``(H, W, C)`` is read from ``model.input_shape`` (``None`` sizes: any
  size works); channels-last only. The default ``preprocess`` scales uint8 to ``[0, 1]``; pass
  ``preprocess=`` for another convention (``keras.applications``' ``preprocess_input``).

Keras is imported only when ``from_keras`` is called.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxplain.adapters.flax import PROBE_SIZE, scale_to_unit
from jaxplain.adapters.recorder import Output, Recorder, choose, contract_apply
from jaxplain.errors import InputError, InputWarning, JaxplainError
from jaxplain.types import Array, Model, PyTree, input_key

Runner = Callable[[PyTree, Array, Recorder], Any]  # (params, input [B, H, W, C], recorder) -> logits [B, K]


# ----------------------------------------------------------------------------------------------
# The weights


@jax.tree_util.register_pytree_with_keys_class
class KerasWeights(Mapping):
    """``layer name -> {weight: value}`` over a Keras model's variables.

    Built by ``from_keras`` on the variables themselves (*live*): reading a layer, or flattening the
    whole (what ``jit`` does to an argument), reads the variables' values at that moment. Its
    pytree children are those values, so anything JAX rebuilds from it (``jax.device_put``,
    ``jax.tree.map``, a traced argument) holds arrays: a fixed snapshot."""

    def __init__(self, layers: Mapping[str, Mapping[str, Any]], live: bool = False):
        self._layers = {name: dict(weights) for name, weights in layers.items()}
        self._live = live

    def __getitem__(self, layer: str) -> dict[str, Any]:
        weights = self._layers[layer]
        return {k: v.value for k, v in weights.items()} if self._live else dict(weights)

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        return f"KerasWeights({', '.join(self._layers)}{', live' if self._live else ''})"

    def tree_flatten(self) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        names = tuple(self._layers)
        return [self[n] for n in names], names

    def tree_flatten_with_keys(self) -> tuple[list[tuple[Any, dict[str, Any]]], tuple[str, ...]]:
        """As ``tree_flatten``, each layer keyed by its name (``model_randomisation`` finds it so)."""
        names = tuple(self._layers)
        return [(jax.tree_util.DictKey(n), self[n]) for n in names], names

    @classmethod
    def tree_unflatten(cls, names: tuple[str, ...], children: Sequence[dict[str, Any]]) -> KerasWeights:
        return cls(dict(zip(names, children)))


def _weight_slots(model: Any) -> tuple[list[tuple[Any, str, str]], KerasWeights]:
    """``([(variable, layer, key)], live weights)``: every float variable of ``model``
    (``model.variables`` order: weights and batch-norm statistics, not seed states), filed under the top-level layer that owns it (the model's name for any other) and its
    path inside that layer (``"kernel"``; ``"conv1/kernel"`` in a nested model)."""
    owner: dict[int, str] = {}  # variable -> its layer's name, for this walk only
    for layer in model.layers:
        for v in layer.variables:
            owner.setdefault(id(v), layer.name)
    slots, layers = [], {}
    for v in model.variables:
        if not jnp.issubdtype(jnp.dtype(v.dtype), jnp.floating):
            continue  # a seed state or a counter: not a weight, read from the variable itself
        layer = owner.get(id(v), model.name)
        weights = layers.setdefault(layer, {})
        parts = v.path.split("/")  # "conv2d/kernel", or under the model's name: "sequential/conv2d/kernel"
        key = "/".join(parts[parts.index(layer) + 1:]) if layer in parts[:-1] else v.path
        key = key if key not in weights else f"{key}#{len(weights)}"
        weights[key] = v
        slots.append((v, layer, key))
    return slots, KerasWeights(layers, live=True)


def _values(params: Mapping[str, Mapping[str, Any]], slots: list[tuple[Any, str, str]]) -> list[tuple[Any, Any]]:
    """``[(variable, value in params)]``, the state mapping of a ``keras.StatelessScope``."""
    layers = {name: params[name] for name in {layer for _, layer, _ in slots}}
    return [(v, layers[layer][key]) for v, layer, key in slots]


# ----------------------------------------------------------------------------------------------
# Keras


def _keras() -> Any:
    """The ``keras`` module, Keras 3 on the JAX backend, or an ``InputError`` saying what is missing."""
    try:
        import keras
    except ImportError as e:
        raise InputError("from_keras needs Keras 3 (pip install keras) with KERAS_BACKEND=jax set before "
                         f"keras is imported: {e}") from None
    if not keras.__version__.startswith("3."):
        raise InputError(f"from_keras needs Keras 3, found keras {keras.__version__}")
    backend = keras.backend.backend()
    if backend != "jax":
        raise InputError(f"from_keras needs Keras on the JAX backend, keras runs on {backend!r}: set "
                         "KERAS_BACKEND=jax before keras is first imported")
    return keras


def _final_softmax(keras: Any, op: Any) -> str:
    """How ``op`` ends in a softmax: ``"layer"`` (a ``Softmax`` or ``Activation("softmax")`` layer),
    ``"activation"`` (a layer with ``activation="softmax"``), ``""`` (none)."""
    softmax = keras.activations.softmax
    if isinstance(op, keras.layers.Softmax) or (isinstance(op, keras.layers.Activation) and op.activation is softmax):
        return "layer"
    return "activation" if getattr(op, "activation", None) is softmax else ""


def _linear_copy(op: Any) -> Any:
    """A built copy of ``op`` with ``activation="linear"``, its variables in the same order."""
    try:
        copy = type(op).from_config({**op.get_config(), "activation": "linear", "name": op.name})
        copy.build(op.input.shape)
    except Exception as e:
        raise InputError(f"cannot drop the softmax of layer {op.name!r} ({type(e).__name__}: {e}); pass "
                         "logits=False to explain its probabilities") from e
    if [tuple(v.shape) for v in copy.variables] != [tuple(v.shape) for v in op.variables]:
        raise InputError(f"cannot drop the softmax of layer {op.name!r}: a copy without it has other weights; "
                         "pass logits=False to explain its probabilities")
    return copy


def _kind(keras: Any, model: Any) -> str:
    """``"sequential"``, ``"functional"`` (a graph of layers, run as Keras runs it) or ``"subclassed"``
    (a ``call`` of its own, also a graph model's subclass that overrides ``call``)."""
    # Keras' class of graph models, not exported under a public name
    from keras.src.models.functional import Functional

    if isinstance(model, keras.Sequential) and type(model).call is keras.Sequential.call:
        return "sequential"
    if isinstance(model, Functional) and type(model).call is Functional.call:
        return "functional"
    return "subclassed"


def _takes_training(op: Any) -> bool:
    call = getattr(op, "call", None)
    try:
        return call is not None and "training" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False


def _graph_runner(keras: Any, model: Any, slots: list, last: Any, replace: Callable[..., Any] | None) -> Runner:
    """``run(params, x, rec)`` of a Functional or Sequential model: every layer call (and its
    input) passed through ``rec``; the ``last`` layer's call replaced by ``replace`` when given."""

    def wrap(op: Any) -> Callable[..., Any]:
        def call(rec: Recorder, *args: Any, **kwargs: Any) -> Any:
            if _takes_training(op):
                kwargs["training"] = False
            fn = replace if (op is last and replace is not None) else op
            return rec.call(op.name, fn, *args, **kwargs)

        return call

    def run(params: PyTree, x: Array, rec: Recorder) -> Any:
        with keras.StatelessScope(state_mapping=_values(params, slots)):
            if _kind(keras, model) == "sequential":
                for layer in model.layers:
                    x = wrap(layer)(rec, x)
                return x
            out = model._run_through_graph(x, operation_fn=lambda op: lambda *a, **k: wrap(op)(rec, *a, **k))
            return out[0] if isinstance(out, (list, tuple)) and len(out) == 1 else out

    return run


def _drop(v: Any, *args: Any, **kwargs: Any) -> Any:
    """A dropped final softmax layer: its input."""
    return v


def _subclassed_runner(model: Any, slots: list) -> Runner:
    """``run(params, x, rec)`` through ``model.stateless_call``: logits only (``rec`` sees no call)."""

    training = {"training": False} if _takes_training(model) else {}  # a call(self, x) gets none, as Keras does

    def run(params: PyTree, x: Array, rec: Recorder) -> Any:
        values = {id(v): a for v, a in _values(params, slots)}  # the other variables (seed states) as they are
        return model.stateless_call([values.get(id(v), v.value) for v in model.trainable_variables],
                                    [values.get(id(v), v.value) for v in model.non_trainable_variables],
                                    x, **training)[0]

    return run


# ----------------------------------------------------------------------------------------------
# The adapter


def _input_shape(model: Any, given: Sequence[int | None] | None, name: str) -> tuple[int | None, int | None, int]:
    """``(H, W, C)`` from ``given`` or ``model.input_shape`` (channels last), or an ``InputError``."""
    if given is None:
        try:
            shape = model.input_shape
        except (AttributeError, ValueError):  # a subclassed model has no symbolic input
            raise InputError(f"{name} does not say its input shape (a subclassed model): give "
                             "input_shape=(H, W, C)") from None
        if isinstance(shape, list):
            if len(shape) != 1:
                raise InputError(f"{name} takes {len(shape)} inputs; from_keras explains models of one image input")
            shape = shape[0]
        if len(shape) != 4:
            raise InputError(f"{name} takes inputs of shape {tuple(shape)}, not images [B, H, W, C]")
        given = tuple(shape[1:])
    given = tuple(given)
    if len(given) != 3 or not isinstance(given[2], (int, np.integer)) or given[2] < 1 or any(
            s is not None and (not isinstance(s, (int, np.integer)) or s < 1) for s in given[:2]):
        raise InputError(f"input_shape must be (H, W, C) with C known (H, W may be None), got {given!r}")
    return (None if given[0] is None else int(given[0]), None if given[1] is None else int(given[1]), int(given[2]))


def _check_channels_last(model: Any, name: str) -> None:
    first = [layer.name for layer in model.layers if getattr(layer, "data_format", None) == "channels_first"]
    if first:
        raise InputError(f"{name} is channels-first (layers {', '.join(first)}); jaxplain explains channels-last "
                         "images [H, W, C]: rebuild it with data_format='channels_last'")


def _probe(run: Runner, params: PyTree, shape: tuple[int, int, int], name: str) -> list[Output]:
    """Every layer call (and layer input) of one traced forward pass (no compute) on a batch of 2."""
    recs: list[Recorder] = []

    def forward(p: PyTree, v: Array) -> Any:
        recs.append(Recorder(None, {}, True))
        return run(p, v, recs[-1])

    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    try:
        logits = jax.eval_shape(forward, params, x)
    except JaxplainError:
        raise
    except Exception as e:
        raise InputError(f"{name} does not run on a {x.shape} float32 input ({type(e).__name__}: {e}); give "
                         "input_shape=(H, W, C) if it takes another") from e
    if not isinstance(logits, jax.ShapeDtypeStruct) or logits.ndim != 2 or logits.shape[0] != 2:
        got = tuple(logits.shape) if isinstance(logits, jax.ShapeDtypeStruct) else type(logits).__name__
        raise InputError(f"{name} must return logits [B, K], got {got}")
    return recs[-1].outputs


SUBCLASSED = ("{name} is a subclassed Keras model: it has no graph of layers to tap, so jaxplain explains its logits "
              "only (layers=()); build it as a Functional or Sequential model for layer methods")


def _apply(run: Runner, layers: tuple[str, ...], inputs: tuple[str, ...], name: str, why: str) -> Callable[..., Any]:
    """The contract's ``apply`` over ``run``, exposing ``layers`` and the inputs of ``inputs``."""
    wanted = frozenset(layers) | frozenset(map(input_key, inputs))

    def forward(params: PyTree, x: Array, taps: Mapping[str, Array]) -> tuple[Array, dict[str, Array]]:
        rec = Recorder(wanted, taps, True)
        return run(params, x[None], rec)[0], rec.acts

    return contract_apply(forward, layers, inputs, name, why)


def from_keras(model: Any, *, input_shape: Sequence[int | None] | None = None, layers: Sequence[str] | None = None,
               preprocess: Callable[[np.ndarray], np.ndarray] | None = None, logits: bool | None = None,
               name: str | None = None) -> Model:
    """A ``Model`` from a built Keras 3 model on the JAX backend (see the module docstring for how).

    Args:
      model: a ``keras.Model`` (Functional, Sequential or subclassed) returning ``[B, K]``.
      input_shape: ``(H, W, C)`` of one image (default: ``model.input_shape``; needed for a
        subclassed model); ``H, W`` may be ``None`` (any size; layers found at 224x224).
      layers: the layer names to expose (default: every layer whose output is one float array).
      preprocess: ``uint8 [B, H, W, C] -> float32 [B, H, W, C]`` (default: scale to ``[0, 1]``).
      logits: ``True`` drops a final softmax, ``False`` keeps it, ``None`` keeps it with a warning.
      name: the model's name (default: ``model.name``).
    """
    keras = _keras()
    if not isinstance(model, keras.Model):
        raise InputError(f"from_keras takes a keras.Model (Functional, Sequential or subclassed), got "
                         f"{type(model).__name__}")
    name = name or model.name
    if not model.built:
        raise InputError(f"{name} is not built: give it a keras.Input, or call model.build((None, H, W, C)) or the "
                         "model on a batch first")
    _check_channels_last(model, name)
    shape = _input_shape(model, input_shape, name)
    slots, weights = _weight_slots(model)
    subclassed = _kind(keras, model) == "subclassed"
    if subclassed:
        if logits:
            raise InputError(f"{name} is a subclassed Keras model: jaxplain cannot drop a softmax inside its call; "
                             "return logits from call(), or build it as a Functional or Sequential model")
        run = _subclassed_runner(model, slots)
    else:
        if not isinstance(model, keras.Sequential) and len(model.outputs) != 1:
            raise InputError(f"{name} has {len(model.outputs)} outputs; from_keras explains a model whose one "
                             "output is the logits [B, K]")
        last = model.layers[-1] if isinstance(model, keras.Sequential) else model.outputs[0]._keras_history[0]
        kind = _final_softmax(keras, last)
        if logits and not kind:
            raise InputError(f"logits=True drops a final softmax, and {name}'s last layer {last.name!r} has none")
        replace = None
        if logits and kind == "layer":
            replace = _drop
        elif logits:
            replace = _linear_copy(last)
            where = {id(v): (layer, key) for v, layer, key in slots}
            slots = slots + [(c, *where[id(v)]) for c, v in zip(replace.variables, last.variables)]
        elif kind and logits is None:
            warnings.warn(f"{name} ends in a softmax (layer {last.name!r}): jaxplain explains its probabilities, "
                          "not logits; pass logits=True to explain the logits (score='probability' gives the "
                          "probabilities back), or logits=False to keep the softmax without this warning",
                          InputWarning, stacklevel=2)
        run = _graph_runner(keras, model, slots, last, replace)
    outputs = _probe(run, weights, (shape[0] or PROBE_SIZE[0], shape[1] or PROBE_SIZE[1], shape[2]), name)
    chosen = choose(outputs, layers, name, refuse=SUBCLASSED.format(name=name) if subclassed else "")
    inputs = tuple(o.name for o in outputs if not o.input_problem and o.name in chosen)
    why = "none (a subclassed Keras model has no graph of layers to tap)" if subclassed else "none"
    size = None if shape[0] is None or shape[1] is None else (shape[0], shape[1])
    return Model(apply=_apply(run, chosen, inputs, name, why), params=weights, layers=chosen,
                 preprocess=preprocess or scale_to_unit, input_size=size, channels=shape[2], name=name,
                 source="keras", layer_inputs=inputs)
