"""Where one call of a method spends its time, operation class by operation class, in jaxplain
(XLA) and in Captum (torch) on the same network and weights (``benchmarks/pairs.py``):

    python -m benchmarks.op_profile --model resnet50 --method gradient --batch 8
    python -m benchmarks.op_profile --conv 56 64 64 3 1 --batch 8   # one convolution alone
    python -m benchmarks.op_profile --model resnet50 --method gradient --batch 8 --compare   # speed only


JAX side: one compiled call (the engine's own, ``jaxplain.bench.compile_case``) under
``jax.profiler.trace``; XLA:CPU's thunk runtime records one trace event per executed thunk (a
convolution, a dot, a fusion...), named for its HLO instruction, which this script looks up in
the optimised HLO that ``--xla_dump_to`` writes, to put it in a class. Torch side: Captum's call
(``benchmarks/peers.py``) under ``torch.profiler``, each operator's self time put in the same
classes. The table: class, ms per call of each side, their ratio (torch over JAX: above 1, JAX is
faster there) and each class's share of its side's total. Thunks may overlap on several threads,
so the JAX column can add up to more than the call's wall time (printed below the table).

The classes: convolution forward / backward-input / backward-filter (torch's
``convolution_backward`` computes both of its gradients in one operator: it is counted as
backward-input, the one a gradient with respect to the input needs), matmul (dot, linear, bmm),
elementwise (fusions of arithmetic, ReLU and its gradient, adds; also pools written as maxima of views or reshapes), pooling (reduce-window,
select-and-scatter, torch's max and average pools), transpose/copy, batch norm,
softmax, GELU (erf), layer norm, reduction, other.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time
from typing import Any

import numpy as np

CLASSES = ("conv forward", "conv backward-input", "conv backward-filter", "matmul", "elementwise", "pooling",
           "transpose/copy", "batch norm", "softmax", "GELU", "layer norm", "reduction", "other")

# ---------------------------------------------------------------------------------------- HLO side

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?.*\{\s*$")


def parse_hlo(text: str) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """``(instructions, computations)`` of an HLO module's text: ``name -> {"op", "shape", "rest"}``
    for every instruction, and ``computation -> [opcodes]`` of every computation's body."""
    instrs: dict[str, dict[str, Any]] = {}
    comps: dict[str, list[str]] = collections.defaultdict(list)
    current = None
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m:
            name, shape, op, rest = m.groups()
            instrs[name] = {"op": op, "shape": shape, "rest": rest, "computation": current}
            if current is not None:
                comps[current].append(op)
            continue
        c = _COMP.match(line)
        if c and "=" not in line.split("{")[0]:
            current = c.group(1)
    return instrs, comps


def _dims(shape: str) -> list[int]:
    m = re.search(r"\[([\d,]*)\]", shape)
    return [int(d) for d in m.group(1).split(",") if d] if m else []


def conv_kind(instr: dict[str, Any]) -> str:
    """Forward, backward-input or backward-filter, for one ``convolution`` instruction.

    A filter gradient slides the output gradient (a window as large as the image, stride 1) over
    the input, so its window is larger than its spatial output (the kernel), which no stride-1
    forward convolution's is (a patch embedding's window is larger, but strided). An input
    gradient comes from JAX's transpose rule: ``transpose(`` in its op_name."""
    rest = instr["rest"]
    window = re.search(r"window=\{([^}]*)\}", rest)
    labels = re.search(r"dim_labels=\w+_\w+->(\w+)", rest)
    size = re.search(r"size=([\dx]+)", window.group(1)) if window else None
    if size and labels and "stride=" not in window.group(1):
        win = 1
        for d in size.group(1).split("x"):
            win *= int(d)
        out = 1
        for label, d in zip(labels.group(1), _dims(instr["shape"])):
            out *= d if label.isdigit() else 1
        if win > out:
            return "conv backward-filter"
    return "conv backward-input" if "transpose(" in rest else "conv forward"


def classify_ops(ops: list[str], instr: dict[str, Any] | None = None) -> str:
    """The class of a thunk from the opcodes it runs (one instruction, or a fusion's body)."""
    s = set(ops)
    if "convolution" in s:
        return conv_kind(instr) if instr is not None and instr["op"] == "convolution" else "conv forward"
    if "dot" in s:
        return "matmul"
    if s & {"reduce-window", "select-and-scatter"}:
        return "pooling"
    if "erf" in s:
        return "GELU"
    if "exponential" in s and "reduce" in s:
        return "softmax"
    if "rsqrt" in s:
        return "layer norm" if "reduce" in s else "batch norm"
    if "reduce" in s:
        return "reduction"
    moves = {"transpose", "copy", "bitcast", "reshape", "slice", "concatenate", "pad", "broadcast", "parameter",
             "dynamic-slice", "dynamic-update-slice", "tuple", "get-tuple-element", "reverse", "iota", "constant"}
    if s and s <= moves:
        return "transpose/copy"
    if s & {"add", "multiply", "subtract", "maximum", "select", "compare", "divide", "negate", "exponential",
            "convert", "and", "or", "minimum", "tanh", "abs", "sqrt", "clamp", "log"}:
        return "elementwise"
    return "other"


def classify_thunk(name: str, instrs: dict[str, dict[str, Any]], comps: dict[str, list[str]]) -> str:
    """The class of the thunk named ``name`` (an instruction of the entry computation)."""
    instr = instrs.get(name)
    if instr is None:
        return "other"
    if instr["op"] == "fusion":
        called = re.search(r"calls=%?([\w.\-]+)", instr["rest"])
        body = comps.get(called.group(1), []) if called else []
        if "convolution" in body:  # a fusion around a convolution: classify by the convolution
            inner = [i for i in instrs.values() if i["computation"] == called.group(1) and i["op"] == "convolution"]
            return conv_kind(inner[0]) if inner else "conv forward"
        return classify_ops(body)
    return classify_ops([instr["op"]], instr)


def hlo_modules(dump: str) -> dict[str, tuple[dict, dict]]:
    """``module name -> parse_hlo(...)`` of every optimised module in an XLA dump folder."""
    out = {}
    for path in glob.glob(os.path.join(dump, "*after_optimizations.txt")):
        text = open(path).read()
        m = re.search(r"HloModule\s+([\w.\-]+)", text)
        if m:
            out[m.group(1)] = parse_hlo(text)
    return out


def thunk_events(trace_dir: str) -> list[dict[str, Any]]:
    """The per-thunk events (``args.hlo_op``) of the newest trace under ``trace_dir``."""
    paths = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))
    with gzip.open(paths[-1]) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X" and "hlo_op" in (e.get("args") or {})]


def jax_profile(case: Any, dump: str, trace_dir: str, calls: int = 1) -> tuple[dict[str, float], float, list]:
    """``(ms per class, wall ms, top thunks)`` of ``calls`` calls of a compiled case (warmed first)."""
    import jax

    jax.block_until_ready(case.call())
    t = time.perf_counter()
    with jax.profiler.trace(trace_dir):
        for _ in range(calls):
            jax.block_until_ready(case.call())
    wall = (time.perf_counter() - t) * 1e3 / calls
    modules = hlo_modules(dump)
    ms: dict[str, float] = collections.defaultdict(float)
    per_op: dict[tuple[str, str], float] = collections.defaultdict(float)
    for e in thunk_events(trace_dir):
        mod = modules.get(e["args"].get("hlo_module", ""))
        cls = classify_thunk(e["args"]["hlo_op"], *mod) if mod else "other"
        ms[cls] += e["dur"] / 1e3 / calls
        per_op[(cls, e["args"]["hlo_op"])] += e["dur"] / 1e3 / calls
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:15]
    return dict(ms), wall, top


# -------------------------------------------------------------------------------------- torch side

_TORCH = [
    ("conv backward-input", ("convolution_backward", "mkldnn_convolution_backward")),
    ("conv forward", ("convolution", "conv2d", "mkldnn_conv", "conv_depthwise", "slow_conv")),
    ("matmul", ("addmm", "::mm", "bmm", "matmul", "linear", "baddbmm", "::dot")),
    ("pooling", ("pool",)),
    ("batch norm", ("batch_norm",)),
    ("softmax", ("softmax",)),
    ("GELU", ("gelu",)),
    ("layer norm", ("layer_norm",)),
    ("transpose/copy", ("copy_", "clone", "contiguous", "to_dense", "to_mkldnn", "permute", "transpose",
                        "reshape", "view", "expand", "::to", "_to_copy", "empty", "zeros", "cat", "stack", "slice",
                        "select", "unsqueeze", "squeeze", "t", "as_strided", "resize_")),
    ("reduction", ("sum", "mean", "::max", "::min", "amax", "argmax", "norm")),
    ("elementwise", ("relu", "threshold", "add", "mul", "sub", "div", "where", "clamp", "fill_", "ones_like",
                     "zeros_like", "neg", "abs", "sqrt", "exp", "tanh", "sigmoid", "gather", "scatter")),
]


def classify_torch(name: str) -> str:
    low = name.lower()
    for cls, keys in _TORCH:
        if any(k == "t" and low == "aten::t" or k != "t" and k in low for k in keys):
            return cls
    return "other"


def torch_profile(call: Any, calls: int = 1) -> tuple[dict[str, float], float, list]:
    """``(ms per class, wall ms, top operators)``: operators' self CPU time under ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    call()
    t = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            call()
    wall = (time.perf_counter() - t) * 1e3 / calls
    ms: dict[str, float] = collections.defaultdict(float)
    per_op: dict[tuple[str, str], float] = {}
    for avg in prof.key_averages():
        if avg.key.startswith(("autograd::", "ProfilerStep")) and "aten::" not in avg.key:
            cls = "other"
        else:
            cls = classify_torch(avg.key)
        v = avg.self_cpu_time_total / 1e3 / calls
        ms[cls] += v
        per_op[(cls, avg.key)] = v
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:15]
    return dict(ms), wall, top


# ------------------------------------------------------------------------------ one op, both sides

def conv_alone(side: int, cin: int, cout: int, k: int, stride: int, batch: int, rounds: int = 5) -> dict[str, Any]:
    """One convolution (``k x k``, ``stride``, torch's symmetric padding ``k // 2``, bias) on
    ``batch`` images of ``side x side x cin``, forward alone and forward + gradient with respect to
    its input, in XLA (NHWC, HWIO) and in torch (NCHW, its default oneDNN path), timed with
    ``jaxplain.timing.side_by_side``: ``{"forward": Comparison, "backward": Comparison}``."""
    import jax
    import torch

    from jaxplain import timing

    timing.equal_threads()
    x = jax.random.normal(jax.random.key(0), (batch, side, side, cin))
    w = jax.random.normal(jax.random.key(1), (k, k, cin, cout)) * (2 / (k * k * cin)) ** 0.5
    b = jax.random.normal(jax.random.key(2), (cout,)) * 0.1
    pad = ((k // 2, k // 2),) * 2

    def conv(x):
        return jax.lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC")) + b

    fwd = jax.jit(conv)
    out = jax.eval_shape(conv, x)
    g = jax.random.normal(jax.random.key(3), out.shape)
    bwd = jax.jit(lambda x, g: jax.vjp(conv, x)[1](g)[0])
    xt = torch.tensor(np.asarray(x).transpose(0, 3, 1, 2).copy(), requires_grad=True)
    net = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)
    with torch.no_grad():
        net.weight.copy_(torch.tensor(np.asarray(w).transpose(3, 2, 0, 1).copy()))
        net.bias.copy_(torch.tensor(np.asarray(b)))
    gt = torch.tensor(np.asarray(g).transpose(0, 3, 1, 2).copy())
    ref = torch.autograd.grad(net(xt), xt, gt)[0].numpy().transpose(0, 2, 3, 1)
    err = float(np.abs(np.asarray(bwd(x, g)) - ref).max() / np.abs(ref).max())
    if err > 1e-4:
        raise AssertionError(f"the two convolutions disagree: relative error {err:.1e}")

    def torch_fwd():
        with torch.no_grad():
            return net(xt)

    comps = {
        "forward": timing.side_by_side(lambda: jax.block_until_ready(fwd(x)), torch_fwd, names=("xla", "torch"),
                                       items=batch, rounds=rounds),
        "backward": timing.side_by_side(lambda: jax.block_until_ready(bwd(x, g)),
                                        lambda: torch.autograd.grad(net(xt), xt, gt), names=("xla", "torch"),
                                        items=batch, rounds=rounds),
    }
    flops = 2 * batch * out.shape[1] * out.shape[2] * cout * cin * k * k
    for name, c in comps.items():
        n = 1 if name == "forward" else 2
        print(f"{name:<9} (x{n} conv) XLA {1e3 * c.side('xla').median:8.1f} ms ({n * flops / c.side('xla').median / 1e9:5.0f} "
              f"GFLOP/s)  torch {1e3 * c.side('torch').median:8.1f} ms ({n * flops / c.side('torch').median / 1e9:5.0f} GFLOP/s)"
              f"  XLA/torch speed {c.ratio_text()}  [ratio {c.ratio.text('.2f')}; load {c.load_before:.1f}-{c.load_after:.1f}]")
    return comps


# --------------------------------------------------------------------------------------- the table

def _rows(ours: dict[str, float], theirs: dict[str, float]) -> tuple[list[tuple[str, float, float, str, float, float]], float, float]:
    """``(rows, JAX total, torch total)``: per class with time on either side, ``(class, JAX ms,
    torch ms, torch/JAX or "-", JAX %, torch %)``."""
    ta, tb = sum(ours.values()) or 1.0, sum(theirs.values()) or 1.0
    rows = []
    for cls in CLASSES:
        a, b = ours.get(cls, 0.0), theirs.get(cls, 0.0)
        if a < 0.05 and b < 0.05:
            continue
        ratio = f"{b / a:.2f}" if a >= 0.05 and b >= 0.05 else "-"
        rows.append((cls, a, b, ratio, 100 * a / ta, 100 * b / tb))
    return rows, ta, tb


def table(ours: dict[str, float], theirs: dict[str, float]) -> str:
    """class, JAX ms, torch ms, torch/JAX, share of each side's total."""
    rows, ta, tb = _rows(ours, theirs)
    head = f"{'class':<22}{'JAX ms':>10}{'torch ms':>10}{'torch/JAX':>11}{'JAX %':>8}{'torch %':>9}"
    lines = [head, "-" * len(head)]
    lines += [f"{c:<22}{a:>10.1f}{b:>10.1f}{r:>11}{pa:>8.1f}{pb:>9.1f}" for c, a, b, r, pa, pb in rows]
    lines.append(f"{'total':<22}{ta:>10.1f}{tb:>10.1f}{tb / ta:>11.2f}{100.0:>8.1f}{100.0:>9.1f}")
    return "\n".join(lines)


def markdown(ours: dict[str, float], theirs: dict[str, float]) -> str:
    """``table`` as Markdown (whole milliseconds and percentages)."""
    rows, ta, tb = _rows(ours, theirs)
    lines = ["| class | JAX ms | torch ms | torch / JAX | JAX share | torch share |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {c} | {a:.0f} | {b:.0f} | {r} | {pa:.0f}% | {pb:.0f}% |" for c, a, b, r, pa, pb in rows]
    lines.append(f"| total | {ta:.0f} | {tb:.0f} | {tb / ta:.2f} | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.op_profile", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", help="resnet50, vit_b16 or a VGG (vgg16)")
    p.add_argument("--method", default="gradient", help="a method spec, e.g. 'integrated_gradients(steps=8)'")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=None, help="input side (VGG, ResNet-50; ViT-B/16 is 224)")
    p.add_argument("--calls", type=int, default=1, help="profiled calls per side (averaged)")
    p.add_argument("--side", choices=("both", "jax", "torch"), default="both")
    p.add_argument("--top", type=int, default=0, help="also list the N most expensive operations of each side")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--conv", nargs=5, type=int, metavar=("SIDE", "CIN", "COUT", "K", "STRIDE"),
                   help="instead: time one convolution alone in both frameworks (forward, and forward + input gradient)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of --conv's and --compare's side-by-side timing")
    p.add_argument("--compare", action="store_true", help="instead of profiling: time the call beside Captum's "
                   "(jaxplain.timing.side_by_side, after one warm-up call each)")
    args = p.parse_args(argv)
    if args.conv:
        conv_alone(*args.conv, batch=args.batch, rounds=args.rounds)
        return 0

    work = tempfile.mkdtemp(prefix="op_profile_")
    dump = os.path.join(work, "hlo")
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_dump_to={dump} --xla_dump_hlo_as_text".strip()
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax  # noqa: F401  (after XLA_FLAGS)

    from benchmarks.pairs import pair
    from benchmarks.peers import captum_call, has_counterpart
    from jaxplain import bench, timing

    model, net = pair(args.model, "cpu", args.size)
    threads = timing.equal_threads()
    case = bench.compile_case(model, args.method, args.batch)
    size = model.input_size or (224, 224)
    if args.compare:
        import jax

        peer = captum_call(net, case.name, args.batch, case.settings, size)
        c = timing.side_by_side(lambda: jax.block_until_ready(case.call()), peer, names=("jaxplain", "captum"),
                                items=args.batch, rounds=args.rounds)
        print(f"{model.name} {case.name} batch {args.batch}: jaxplain {c.per_s('jaxplain').text()} images/s, Captum "
              f"{c.per_s('captum').text()}, jaxplain/Captum {c.ratio_text()} [ratio {c.ratio.text('.2f')}], "
              f"threads {c.threads}, load {c.load_before:.1f} -> {c.load_after:.1f}, XLA_FLAGS={flags!r}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"model": model.name, "method": case.name, "xla_flags": flags, **c.as_dict()}, f, indent=1)
        return 0
    ours, wall_a, top_a = jax_profile(case, dump, os.path.join(work, "trace"), args.calls) if args.side != "torch" else ({}, 0.0, [])
    theirs, wall_b, top_b = {}, 0.0, []
    if args.side != "jax" and has_counterpart(net, case.name):
        theirs, wall_b, top_b = torch_profile(captum_call(net, case.name, args.batch, case.settings, size), args.calls)
    print(f"{model.name} {case.name} batch {args.batch} {size[0]}x{size[1]} float32, threads {threads}, "
          f"load {timing.load():.2f}")
    print(markdown(ours, theirs) if args.markdown else table(ours, theirs))
    print(f"wall ms per call under the profilers: JAX {wall_a:.0f}, torch {wall_b:.0f}")
    for side, top in (("JAX", top_a), ("torch", top_b)):
        for (cls, name), ms in top[: args.top]:
            print(f"  {side:<6}{ms:>9.1f} ms  {cls:<22}{name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": model.name, "method": case.name, "batch": args.batch, "threads": threads,
                       "jax_ms": ours, "torch_ms": theirs, "jax_wall_ms": wall_a, "torch_wall_ms": wall_b,
                       "jax_top": [[c, n, v] for (c, n), v in top_a], "torch_top": [[c, n, v] for (c, n), v in top_b]},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
