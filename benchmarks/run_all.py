"""The one prepared benchmark run for an accelerator host, sized for a window of minutes:

    python -m benchmarks.run_all OUT [--smoke] [--budget 420] [--share STEP=SECONDS ...] [--steps STEP ...]

(``bash benchmarks/run_all.sh OUT`` calls it). Each step runs in its own process with its own
share of the time budget (default 420 s of steps in all; a step's share is its weight's part of
what is left when it starts, so time a step leaves over goes to the later ones), and is killed
when its share runs out. Rows go to ``OUT/rows.jsonl`` as they are measured, so a step cut off
keeps the rows it finished; after every step ``OUT/table.md`` is rewritten: one Markdown table of
every row so far under a header (device, versions, date, steps cut off or failed).

Steps, the rows that matter most first:

- ``vgg16``, ``resnet50``, ``vit_b16``: gradient, grad_cam, integrated_gradients (50 steps) and
  smoothgrad (50 samples) at batch 8, then 32, then 128; then occlusion and lime (1000 samples),
  whose Captum side takes far longer, at batch 8, 32, 128; each beside Captum on the torch twin with the same weights on the same device
  (``benchmarks/pairs.py``, ``benchmarks/peers.py``; Captum's ``Lime`` for lime, on the same
  8x8 grid, segment-mean fill and softmax score), timed with ``jaxplain.timing.side_by_side``
  (the first call of each side is the warm-up, timed to plan; then 5 interleaved rounds). Both
  sides at their framework's default precision (JAX on NVIDIA Ampere and later: TF32 matmuls and
  convolutions; torch: its ``allow_tf32`` flags as found, written in each row). A row whose rounds
  would not fit in what is left of the step's share (judged from the same method at the
  previous batch, or from the warm-up calls) is recorded as skipped with the estimate.
- ``bfloat16``: ``precision="bfloat16"`` beside Captum under ``torch.autocast(bfloat16)``.
- ``tf32``: jaxplain ``precision="tensorfloat32"`` against ``"float32"`` (JAX's matmul precision
  ``highest``), and Captum with torch's ``allow_tf32`` (matmul and cuDNN) on against off.
- then the older extras, each short: ``ig_memory``, ``lrp_vs_zennit``, ``surrogates``,
  ``metrics``, ``folder_run`` (the scripts in ``benchmarks/`` as they are; one row each, pointing
  at their own output).

Per row: images/s of each side (median, min-max over the rounds), the ratio (or "noisy, rerun"),
the achieved fraction of the chip's dense peak for the precision (NVIDIA's datasheet figures in
``DENSE_PEAK``; another device: ``jaxplain.bench.matmul_peak`` measured, labelled so) from XLA's
FLOP count of the call (under a ``scan`` chunk loop XLA counts the loop body once, so there the
count is the method's passes times the FLOPs of one pass, labelled "est."), and peak device
memory (JAX: the process's ``peak_bytes_in_use`` so far, which only grows; torch: reset per row).

``--smoke`` runs every step at tiny sizes on any machine (the 32x32 VGG of the tests in place of
each model, batch 2, 2-4 steps or samples, 2 rounds; each method once over the three model steps;
the bfloat16 and TF32 rows on the gradient; the extras only with ``RUN_ALL_SMOKE_EXTRAS=1``, at
their smallest settings, else one row each saying so).
``RUN_ALL_CUT_AFTER=STEP:N`` ends STEP's share as soon as it has written N rows (the test's way
to cut a step off at a known point; the step is killed exactly as when its time runs out).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

BUDGET_S = 420.0  # seconds of steps in all: under 8 minutes with start-up and the driver's own time
SMOKE_BUDGET_S = 900.0  # a ceiling only: the smoke run takes far less

# NVIDIA datasheet dense figures (TFLOP/s, no structured sparsity: the datasheets' TF32/BF16
# figures "with sparsity" halved): H100 SXM5 / H200 SXM, H100 PCIe, A100 (SXM4 and PCIe), L4.
DENSE_PEAK = {
    "H200": {"float32": 67.0, "tensorfloat32": 494.7, "bfloat16": 989.4},
    "H100 PCIe": {"float32": 51.0, "tensorfloat32": 378.0, "bfloat16": 756.0},
    "H100 SXM": {"float32": 67.0, "tensorfloat32": 494.7, "bfloat16": 989.4},
    "A100": {"float32": 19.5, "tensorfloat32": 156.0, "bfloat16": 312.0},
    "L4": {"float32": 30.3, "tensorfloat32": 60.0, "bfloat16": 121.0},
}

MODELS = ("vgg16", "resnet50", "vit_b16")
METHODS = ("gradient", "grad_cam", "integrated_gradients(steps=50)", "smoothgrad(samples=50)", "occlusion",
           "lime(samples=1000)")
# --smoke: every method once over the three model steps (each a compile on the CPU)
SMOKE_METHODS = {"vgg16": ("gradient", "integrated_gradients(steps=2)"),
                 "resnet50": ("grad_cam", "smoothgrad(samples=2)"),
                 "vit_b16": ("occlusion(window=16, strides=16)", "lime(samples=4)")}
BATCHES, SMOKE_BATCHES = (8, 32, 128), (2,)
ROUNDS, SMOKE_ROUNDS = 5, 2


@dataclasses.dataclass(frozen=True)
class Step:
    name: str
    weight: float  # its part of the budget
    what: str


STEPS = (
    Step("vgg16", 17, "VGG16 beside Captum, float32 (framework defaults)"),
    Step("resnet50", 17, "ResNet-50 beside Captum, float32 (framework defaults)"),
    Step("vit_b16", 17, "ViT-B/16 beside Captum, float32 (framework defaults)"),
    Step("bfloat16", 10, "bfloat16 beside Captum under torch.autocast"),
    Step("tf32", 10, "TF32 against full float32, each framework"),
    Step("ig_memory", 8, "benchmarks.ig_memory"),
    Step("lrp_vs_zennit", 8, "benchmarks.lrp_vs_zennit"),
    Step("surrogates", 5, "benchmarks.surrogates_vs_peers"),
    Step("metrics", 4, "benchmarks.metrics_vs_quantus"),
    Step("folder_run", 4, "benchmarks.folder_run"),
)
STEP_NAMES = tuple(s.name for s in STEPS)

# The older scripts, run as they are: (full arguments, smoke arguments or None: no small size there).
EXTRAS: dict[str, tuple[list[str], list[str] | None]] = {
    "ig_memory": (["benchmarks.ig_memory", "--model", "resnet50", "--batch", "8"], None),
    "lrp_vs_zennit": (["benchmarks.lrp_vs_zennit", "--models", "vgg16", "resnet50", "--batch", "8", "--sections", "lrp",
                       "--composites", "epsilon_plus"],
                      ["benchmarks.lrp_vs_zennit", "--models", "vgg16", "--size", "32", "--batch", "1", "--rounds", "1",
                       "--sections", "lrp", "--composites", "epsilon_plus"]),
    "surrogates": (["benchmarks.surrogates_vs_peers", "--model", "tiny", "--methods", "feature_ablation", "lime"],
                   ["benchmarks.surrogates_vs_peers", "--model", "tiny", "--batch", "1", "--samples", "8",
                    "--methods", "lime", "--rounds", "1"]),
    "metrics": (["benchmarks.metrics_vs_quantus", "--model", "tiny"],
                ["benchmarks.metrics_vs_quantus", "--model", "tiny", "--batch", "2", "--metrics", "pointing_game",
                 "--rounds", "1"]),
    "folder_run": (["benchmarks.folder_run", "--images", "64", "--model", "vgg16", "--batch", "8"],
                   ["benchmarks.folder_run", "--images", "2", "--model", "synthetic", "--batch", "1", "--rounds", "1"]),
}


# ---------------------------------------------------------------------------------------------
# The driver: one process per step, each with its share; the table after every step.


def shares(budget: float, steps: list[Step], given: dict[str, float]) -> Callable[[int, float], float]:
    """``share(i, left)``: the seconds step ``i`` gets when ``left`` seconds of the budget remain:
    its own ``--share`` if given, else its weight's part of ``left`` among the steps not yet run."""
    def share(i: int, left: float) -> float:
        if steps[i].name in given:
            return min(given[steps[i].name], max(left, 0.0))
        rest = [s for s in steps[i:] if s.name not in given]
        reserved = sum(given[s.name] for s in steps[i:] if s.name in given)
        return max(left - reserved, 0.0) * steps[i].weight / sum(s.weight for s in rest)
    return share


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (a last line cut off mid-write is left out)."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one line, in one write (a step killed mid-row leaves no half line)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record, default=str) + "\n").encode())
    finally:
        os.close(fd)


def run_step(step: Step, out: Path, seconds: float, smoke: bool, cut_after: int | None) -> dict[str, Any]:
    """Run one step in its own process group, killed after ``seconds``; its status record."""
    log = out / "logs" / f"{step.name}.txt"
    args = [sys.executable, "-m", "benchmarks.run_all", str(out), "--step", step.name,
            "--deadline", str(time.time() + seconds)] + (["--smoke"] if smoke else [])
    start = time.time()
    rows = out / "rows.jsonl"
    with open(log, "w") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        cut = False
        while proc.poll() is None:
            time.sleep(0.2)
            over = time.time() - start > seconds
            if cut_after is not None and not over:
                over = sum(r.get("step") == step.name for r in read_jsonl(rows)) >= cut_after
            if over:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                cut = True
    took = time.time() - start
    record = {"kind": "step", "step": step.name, "share_s": round(seconds, 1), "seconds": round(took, 1),
              "rc": proc.returncode}
    if cut:
        record["status"] = "cut off"
    elif proc.returncode == 0:
        record["status"] = "ok"
    else:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error:" in line]
        record["status"] = "failed"
        record["why"] = (errors or lines or [f"exit status {proc.returncode}"])[-1][:300]
    return record


def fmt_bytes(n: Any) -> str:
    return "-" if not n else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _cell(text: Any) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def table(out: Path) -> str:
    """``OUT/table.md``: a header (device, versions, date, steps cut off or failed) and one
    Markdown table of every row so far (a step that wrote none gets one row saying so)."""
    records = read_jsonl(out / "rows.jsonl")
    steps = read_jsonl(out / "steps.jsonl")
    info = next((r for r in records if r.get("kind") == "info"), {})
    rows = [r for r in records if r.get("kind") == "row"]
    cut = [s["step"] for s in steps if s["status"] == "cut off"]
    failed = [f"{s['step']} ({s.get('why', '')})" for s in steps if s["status"] == "failed"]
    lines = [
        f"# jaxplain run_all{' --smoke' if info.get('smoke') else ''}: {info.get('device', 'device unknown')}",
        "",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {info.get('versions', 'versions unknown')}; "
        f"steps run: {', '.join(s['step'] for s in steps) or 'none'}; cut off: {', '.join(cut) or 'none'}; "
        f"failed: {'; '.join(failed) or 'none'}. {info.get('notes', '')}",
        "",
        "| step | model | method | batch | A | A images/s | B | B images/s | A/B | % dense peak (A) | peak memory A / B | note |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(k, "-")) for k in (
            "step", "model", "method", "batch", "a", "a_per_s", "b", "b_per_s", "ratio", "peak", "memory", "note")) + " |")
    counts = {s["step"]: sum(r["step"] == s["step"] for r in rows) for s in steps}
    for s in steps:
        if not counts[s["step"]]:
            why = s.get("why") or (f"cut off at its share ({s['share_s']} s) before its first row"
                                   if s["status"] == "cut off" else "no rows")
        elif s["status"] == "cut off":
            why = f"cut off at its share ({s['share_s']} s) after the {counts[s['step']]} rows above"
        else:
            continue
        lines.append(f"| {s['step']} | - | - | - | - | - | - | - | - | - | - | {s['status']}: {_cell(why)} |")
    return "\n".join(lines) + "\n"


def drive(out: Path, smoke: bool, budget: float, given: dict[str, float], names: list[str]) -> int:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    for f in ("rows.jsonl", "steps.jsonl"):
        (out / f).unlink(missing_ok=True)
    steps = [s for s in STEPS if s.name in names]
    share = shares(budget, steps, given)
    cut_env = os.environ.get("RUN_ALL_CUT_AFTER", "")
    cut_step, _, cut_n = cut_env.partition(":")
    start = time.time()
    for i, step in enumerate(steps):
        seconds = share(i, budget - (time.time() - start))
        if seconds < 1:
            record = {"kind": "step", "step": step.name, "status": "failed", "why": "no time left in the budget",
                      "share_s": 0, "seconds": 0, "rc": None}
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {step.name}: {step.what} (share {seconds:.0f} s)", flush=True)
            record = run_step(step, out, seconds, smoke, int(cut_n) if cut_step == step.name and cut_n else None)
        append_jsonl(out / "steps.jsonl", record)
        (out / "table.md").write_text(table(out))
        print(f"    {record['status']} in {record['seconds']} s{': ' + record['why'] if 'why' in record else ''}", flush=True)
    print((out / "table.md").read_text())
    return 0


# ---------------------------------------------------------------------------------------------
# Inside a step's process.


class Budget:
    """The step's deadline (an absolute ``time.time()``), to plan rows against."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def left(self) -> float:
        return self.deadline - time.time()


def peak_table(kind: str) -> dict[str, float] | None:
    """The dense TFLOP/s of a device kind (``jax.Device.device_kind``), or ``None``."""
    if "H200" in kind:
        return DENSE_PEAK["H200"]
    if "H100" in kind:
        return DENSE_PEAK["H100 PCIe"] if "PCIe" in kind else None if "NVL" in kind else DENSE_PEAK["H100 SXM"]
    if "A100" in kind:
        return DENSE_PEAK["A100"]
    if kind.strip().endswith("L4"):
        return DENSE_PEAK["L4"]
    return None


class Peaks:
    """Dense peak FLOP/s per precision: the datasheet's for a known device, else measured."""

    def __init__(self, smoke: bool):
        import jax

        self.kind = jax.local_devices()[0].device_kind
        self.known = peak_table(self.kind)
        self.smoke = smoke
        self.measured: dict[str, float] = {}

    def get(self, precision: str) -> tuple[float, str]:
        """``(FLOP/s, label)`` for ``"float32"``, ``"tensorfloat32"`` or ``"bfloat16"``."""
        if self.known:
            return self.known[precision] * 1e12, "datasheet"
        if precision not in self.measured:
            import jax
            import jax.numpy as jnp

            from jaxplain.bench import matmul_peak

            n, rounds = (256, 2) if self.smoke else (None, 5)
            dtype = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
            level = "tensorfloat32" if precision == "tensorfloat32" else "highest"
            with jax.default_matmul_precision(level):
                self.measured[precision] = matmul_peak(dtype, n=n, rounds=rounds)
        return self.measured[precision], "measured"


def default_precision() -> str:
    """The precision JAX's default float32 matmuls and convolutions run at on this device."""
    import jax

    d = jax.local_devices()[0]
    tf32 = d.platform == "gpu" and float(getattr(d, "compute_capability", "0") or 0) >= 8.0
    return "tensorfloat32" if tf32 else "float32"


def torch_flags() -> str:
    import torch

    return (f"torch allow_tf32 matmul={torch.backends.cuda.matmul.allow_tf32} "
            f"cudnn={torch.backends.cudnn.allow_tf32}")


def info_record(smoke: bool) -> dict[str, Any]:
    """Device and versions, written by the first step."""
    import jax

    versions = [f"jax {jax.__version__}"]
    for mod in ("torch", "captum", "flax"):
        try:
            versions.append(f"{mod} {__import__(mod).__version__}")
        except ImportError:
            versions.append(f"no {mod}")
    d = jax.local_devices()[0]
    notes = ("A = jaxplain, B = the peer unless the row says otherwise; images/s: median (min-max) of the rounds; "
             "ratio: A's speed over B's, per round, median (min-max), 'noisy, rerun' when either side's spread is "
             "over 25%. Peak memory: JAX's peak_bytes_in_use of the step's process so far / torch's "
             "max_memory_allocated for the row (on a CPU: the process's peak RSS, both).")
    return {"kind": "info", "smoke": smoke, "device": f"{d.device_kind} ({d.platform}) x{jax.local_device_count()}",
            "versions": ", ".join(versions), "notes": notes}


def pair_for(name: str, device: str, smoke: bool) -> tuple[Any, Any, str]:
    """``(model, net, label)``: the jaxplain model and its torch twin (in smoke: the tests' tiny VGG
    as a stand-in for any model)."""
    if smoke:
        import torch

        from tests.conftest import tiny_pair

        net, model = tiny_pair(1)
        return model.replace(input_size=(32, 32)), net.to(device).eval().to(torch.float32), f"tiny VGG 32x32 (stand-in for {name})"
    from benchmarks.pairs import pair

    model, net = pair(name, device)
    return model, net, name


def captum_lime(net: Any, batch: int, settings: dict[str, Any], size: tuple[int, int]) -> Callable[[], Any]:
    """Captum's ``Lime`` set up as jaxplain's ``lime`` defaults: the ``cells x cells`` grid as the
    feature mask, each dropped cell filled with its mean colour, the softmax score, Ridge(alpha=1),
    weights ``exp(-d^2 / (2 w^2))`` of the cosine distance ``d`` of the coalition to all-kept,
    ``w = kernel_width``; one image a call (as Captum recommends), ``chunk`` samples a forward pass."""
    import torch
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import Lime

    device = next(net.parameters()).device
    cells = int(settings.get("cells", 8))
    x = torch.randn(batch, 3, *size, device=device)
    h, w = size
    rows = torch.arange(h, device=device) * cells // h
    cols = torch.arange(w, device=device) * cells // w
    mask = (rows[:, None] * cells + cols[None, :])[None, None]  # [1, 1, H, W]
    fill = torch.nn.functional.interpolate(torch.nn.functional.adaptive_avg_pool2d(x, cells), size, mode="nearest")
    width = float(settings.get("kernel_width", 0.25))

    def similarity(original: Any, perturbed: Any, z: Any, **kwargs: Any) -> Any:
        z = z.float().flatten()
        d = 1.0 - torch.sqrt(z.sum() / z.numel()) if z.sum() > 0 else torch.ones((), device=z.device)
        return torch.exp(-(d**2) / (2 * width**2))

    lime = Lime(lambda v: torch.softmax(net(v), -1), interpretable_model=SkLearnRidge(alpha=1.0), similarity_func=similarity)
    per_eval = int(settings.get("chunk") or 16)

    def call() -> Any:
        out = torch.cat([lime.attribute(x[i:i + 1], target=0, baselines=fill[i:i + 1], feature_mask=mask,
                                        n_samples=int(settings["samples"]), perturbations_per_eval=per_eval)
                         for i in range(batch)])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    return call


def peer_call(net: Any, case: Any, size: tuple[int, int]) -> Callable[[], Any]:
    """Captum's call for a compiled case (``benchmarks.peers.captum_call``; Lime here)."""
    if case.name == "lime":
        return captum_lime(net, case.batch, case.settings, size)
    from benchmarks.peers import captum_call

    return captum_call(net, case.name, case.batch, case.settings, size)


def pass_flops(model: Any, precision: str | None) -> dict[str, float]:
    """XLA's FLOPs of one image's forward pass and of its forward+backward (the gradient)."""
    import jax
    import jax.numpy as jnp

    from jaxplain.bench import compile_case
    from jaxplain.engine.precision import with_precision

    h, w = model.input_size or (224, 224)
    m = with_precision(model, precision)
    x = jnp.zeros((1, h, w, model.channels), jnp.float32)
    c = jax.jit(lambda p, v: m.apply(p, v)[0]).lower(m.params, x).compile().cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else c
    return {"forward": float((c or {}).get("flops", 0.0)),
            "gradient": compile_case(model, "gradient", 1, precision=precision).flops}


def flops_of(case: Any, model: Any, precision: str | None, cache: dict) -> tuple[float, str]:
    """FLOPs of one call: XLA's count, or under a ``scan`` chunk loop (whose body XLA counts once)
    the method's passes times one pass's FLOPs (labelled ``est.``)."""
    from jaxplain import registry
    from jaxplain.bench import passes
    from jaxplain.chunks import loop_mode

    n = passes(case.name, case.settings, case.shape)
    if loop_mode() != "scan" or n <= 1:
        return case.flops, ""
    if precision not in cache:
        cache[precision] = pass_flops(model, precision)
    one = cache[precision]["forward" if getattr(registry.lookup(case.name), "forward_only", False) else "gradient"]
    return n * one * case.batch, "est."


class Rows:
    """Writes the step's rows to ``OUT/rows.jsonl`` as they come."""

    def __init__(self, out: Path, step: str):
        self.path, self.step = out / "rows.jsonl", step

    def add(self, **row: Any) -> None:
        append_jsonl(self.path, {"kind": "row", "step": self.step, **row})
        print(f"[{time.strftime('%H:%M:%S')}] {row}", flush=True)


def torch_memory(reset: bool = False) -> int:
    import resource

    import torch

    if torch.cuda.is_available():
        if reset:
            torch.cuda.reset_peak_memory_stats()
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def compare(rows: Rows, budget: Budget, *, model_label: str, method: str, batch: int, a: tuple[str, Callable[[], Any]],
            b: tuple[str, Callable[[], Any]], rounds: int, peak: tuple[float, str, str], flops: tuple[float, str],
            note: str = "") -> float | None:
    """Warm both calls up (timed), then ``side_by_side`` over ``rounds`` rounds if they fit in
    what is left of the step; one row either way. Returns the seconds per image of the slower
    side's warm call (to plan the next batch), or ``None`` on a failure."""
    from jaxplain.bench import peak_memory
    from jaxplain.timing import side_by_side

    base = dict(model=model_label, method=method, batch=batch, a=a[0], b=b[0])
    try:
        torch_memory(reset=True)
        warm = timed(a[1]), timed(b[1])
        need = rounds * sum(warm)
        if need > budget.left() - 2:
            rows.add(**base, a_per_s=f"{batch / warm[0]:.3g} (1st call)", b_per_s=f"{batch / warm[1]:.3g} (1st call)",
                     ratio="-", note=f"skipped: {rounds} rounds would take ~{need:.0f} s, {budget.left():.0f} s left; {note}")
            return max(warm) / batch
        c = side_by_side(a[1], b[1], names=(a[0], b[0]), items=batch, rounds=rounds, warmup=0)
    except Exception as e:  # out of memory, a missing counterpart: a result, recorded; the step goes on
        rows.add(**base, ratio="-", note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        _free()
        return None
    peak_flops, peak_label, precision = peak
    pct = flops[0] / c.side(a[0]).median / peak_flops if peak_flops and flops[0] else None
    rows.add(**base, a_per_s=c.per_s(a[0]).text(), b_per_s=c.per_s(b[0]).text(), ratio=c.ratio_text(),
             peak=(f"{100 * pct:.1f}% of {precision} ({peak_label}{', FLOPs ' + flops[1] if flops[1] else ''})"
                   if pct is not None else "-"),
             memory=f"{fmt_bytes(peak_memory()[0])} / {fmt_bytes(torch_memory())}", note=note,
             comparison=c.as_dict(), flops_per_call=flops[0])
    return max(c.side(a[0]).median, c.side(b[0]).median) / batch


def _free() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def fits(per_image: float | None, batch: int, rounds: int, budget: Budget) -> float | None:
    """The estimated seconds of a row (both sides, warm-up and rounds) if over what is left, else ``None``."""
    if per_image is None:
        return None
    need = per_image * batch * 2 * (rounds + 1)
    return need if need > budget.left() - 2 else None


def order(methods: tuple[str, ...], batches: tuple[int, ...]) -> list[tuple[str, int]]:
    """``(method, batch)`` in the order they run: the gradient family at each batch, then the
    perturbation family (occlusion, lime: Captum's side takes far longer) at each batch."""
    slow = ("occlusion", "lime")
    first = [m for m in methods if not m.startswith(slow)]
    last = [m for m in methods if m.startswith(slow)]
    return [(m, b) for group in (first, last) for b in batches for m in group]


def step_model(name: str, out: Path, smoke: bool, budget: Budget) -> None:
    """One model beside Captum: every method at every batch, framework defaults."""
    import jax

    from benchmarks.peers import torch_device
    from jaxplain.bench import compile_case
    from jaxplain.timing import equal_threads

    device = torch_device()
    equal_threads()  # torch's intra-op threads = XLA's
    model, net, label = pair_for(name, device, smoke)
    size = model.input_size or (224, 224)
    rows, peaks, cache = Rows(out, name), Peaks(smoke), {}
    prec = default_precision()
    peak = (*peaks.get(prec), prec)
    rounds = SMOKE_ROUNDS if smoke else ROUNDS
    note = f"JAX default precision ({prec}); {torch_flags()}"
    per_image: dict[str, float | None] = {}
    for method, batch in order(SMOKE_METHODS[name] if smoke else METHODS, SMOKE_BATCHES if smoke else BATCHES):
        need = fits(per_image.get(method), batch, rounds, budget)
        if need is not None:
            rows.add(model=label, method=method, batch=batch, a="jaxplain", b="Captum", ratio="-",
                     note=f"skipped: ~{need:.0f} s estimated from the batch before, {budget.left():.0f} s left")
            continue
        try:
            case = compile_case(model, method, batch)
            ours = lambda case=case: jax.block_until_ready(case.call())  # noqa: E731
            theirs = peer_call(net, case, size)
            flops = flops_of(case, model, None, cache)
        except Exception as e:
            rows.add(model=label, method=method, batch=batch, a="jaxplain", b="Captum", ratio="-",
                     note=f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            _free()
            continue
        per_image[method] = compare(rows, budget, model_label=label, method=method, batch=batch,
                                    a=("jaxplain", ours), b=("Captum", theirs), rounds=rounds, peak=peak,
                                    flops=flops, note=f"{note}; compile {case.compile_s:.1f} s")


def step_bfloat16(out: Path, smoke: bool, budget: Budget) -> None:
    """``precision="bfloat16"`` beside Captum under ``torch.autocast(bfloat16)``."""
    import jax
    import torch

    from benchmarks.peers import torch_device
    from jaxplain.bench import compile_case
    from jaxplain.timing import equal_threads

    device = torch_device()
    equal_threads()  # torch's intra-op threads = XLA's
    rows, peaks, cache = Rows(out, "bfloat16"), Peaks(smoke), {}
    peak = (*peaks.get("bfloat16"), "bfloat16")
    rounds, batch = (SMOKE_ROUNDS, 2) if smoke else (ROUNDS, 32)
    methods = ("gradient",) if smoke else ("gradient", "integrated_gradients(steps=50)")
    for name in MODELS[:1] if smoke else MODELS:
        model, net, label = pair_for(name, device, smoke)
        for method in methods:
            try:
                case = compile_case(model, method, batch, precision="bfloat16")
                theirs = peer_call(net, case, model.input_size or (224, 224))
                flops = flops_of(case, model, "bfloat16", cache.setdefault(name, {}))
            except Exception as e:
                rows.add(model=label, method=method, batch=batch, a="jaxplain bfloat16", b="Captum autocast bfloat16",
                         ratio="-", note=f"failed: {type(e).__name__}: {e}"[:250])
                continue

            def autocast(theirs: Callable[[], Any] = theirs) -> Any:
                with torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=torch.bfloat16):
                    return theirs()

            compare(rows, budget, model_label=label, method=method, batch=batch,
                    a=("jaxplain bfloat16", lambda case=case: jax.block_until_ready(case.call())),
                    b=("Captum autocast bfloat16", autocast), rounds=rounds, peak=peak, flops=flops,
                    note="jaxplain: bfloat16 weights and activations, float32 sums; torch.autocast(bfloat16)")


def step_tf32(out: Path, smoke: bool, budget: Budget) -> None:
    """Each framework with TF32 against itself at full float32: jaxplain ``precision=
    "tensorfloat32"`` against ``"float32"`` (JAX's ``highest``); Captum with torch's
    ``allow_tf32`` (matmul and cuDNN) on against off."""
    import jax
    import torch

    from benchmarks.peers import torch_device
    from jaxplain.bench import compile_case
    from jaxplain.timing import equal_threads

    device = torch_device()
    equal_threads()  # torch's intra-op threads = XLA's
    rows, peaks, cache = Rows(out, "tf32"), Peaks(smoke), {}
    peak = (*peaks.get("tensorfloat32"), "tensorfloat32")
    rounds, batch = (SMOKE_ROUNDS, 2) if smoke else (ROUNDS, 32)
    methods = ("gradient",) if smoke else ("gradient", "integrated_gradients(steps=50)")

    def flags(on: bool, call: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
            return call()
        return run

    for name in MODELS[:1] if smoke else MODELS:
        model, net, label = pair_for(name, device, smoke)
        for method in methods:
            try:
                tf32 = compile_case(model, method, batch, precision="tensorfloat32")
                full = compile_case(model, method, batch, precision="float32")
                theirs = peer_call(net, tf32, model.input_size or (224, 224))
                flops = flops_of(tf32, model, "tensorfloat32", cache.setdefault(name, {}))
            except Exception as e:
                rows.add(model=label, method=method, batch=batch, a="jaxplain tensorfloat32", b="jaxplain float32",
                         ratio="-", note=f"failed: {type(e).__name__}: {e}"[:250])
                continue
            compare(rows, budget, model_label=label, method=method, batch=batch,
                    a=("jaxplain tensorfloat32", lambda c=tf32: jax.block_until_ready(c.call())),
                    b=("jaxplain float32 (highest)", lambda c=full: jax.block_until_ready(c.call())),
                    rounds=rounds, peak=peak, flops=flops,
                    note="JAX matmul precision tensorfloat32 against highest")
            compare(rows, budget, model_label=label, method=method, batch=batch,
                    a=("Captum allow_tf32 on", flags(True, theirs)), b=("Captum allow_tf32 off", flags(False, theirs)),
                    rounds=rounds, peak=(0.0, "", ""), flops=(0.0, ""),
                    note="torch.backends.cuda.matmul.allow_tf32 and cudnn.allow_tf32 both on / both off")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True  # torch's defaults


def step_extra(name: str, out: Path, smoke: bool, budget: Budget) -> None:
    """One older script as it is, in a child process (killed with this step); one row. In
    ``--smoke`` only with ``RUN_ALL_SMOKE_EXTRAS=1`` (each is a process of its own with its own
    compiles: together more than the rest of the smoke run on a busy CPU)."""
    full, small = EXTRAS[name]
    rows = Rows(out, name)
    argv = small if smoke else full
    if argv is None or (smoke and os.environ.get("RUN_ALL_SMOKE_EXTRAS") != "1"):
        why = "the script has no tiny size" if argv is None else "set RUN_ALL_SMOKE_EXTRAS=1 to run it small"
        rows.add(model="-", method="python -m " + " ".join(full), ratio="-",
                 note=f"skipped in --smoke ({why}); it runs in the full run")
        return
    stem = out / name
    cmd = [sys.executable, "-m", *argv, "--json", f"{stem}.json"]
    t = time.time()
    with open(f"{stem}.txt", "w") as f:  # this step's share ends it (the whole process group)
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode
    tail = [line for line in Path(f"{stem}.txt").read_text(errors="replace").splitlines() if line.strip()][-1:]
    rows.add(model="-", method="python -m " + " ".join(argv), ratio="-",
             note=(f"ok in {time.time() - t:.0f} s: {name}.json, {name}.txt" if rc == 0
                   else f"failed (exit {rc}) after {time.time() - t:.0f} s: {' '.join(tail)[:200]}"))


def run_one(name: str, out: Path, smoke: bool, deadline: float) -> None:
    budget = Budget(deadline)
    if not any(r.get("kind") == "info" for r in read_jsonl(out / "rows.jsonl")) and name not in EXTRAS:
        append_jsonl(out / "rows.jsonl", info_record(smoke))
    if name in MODELS:
        step_model(name, out, smoke, budget)
    elif name == "bfloat16":
        step_bfloat16(out, smoke, budget)
    elif name == "tf32":
        step_tf32(out, smoke, budget)
    else:
        step_extra(name, out, smoke, budget)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run_all", description=(
        "The accelerator run: every step in its own process with its own share of the time budget; "
        "rows to OUT/rows.jsonl as they come, OUT/table.md after every step."))
    p.add_argument("out", help="the output folder")
    p.add_argument("--smoke", action="store_true", help="every step at tiny sizes (a check that runs on a CPU)")
    p.add_argument("--budget", type=float, default=None, help=f"seconds of steps in all (default {BUDGET_S:.0f})")
    p.add_argument("--share", nargs="+", default=[], metavar="STEP=SECONDS", help="fix some steps' shares")
    p.add_argument("--steps", nargs="+", default=list(STEP_NAMES), choices=STEP_NAMES, help="run only these")
    p.add_argument("--step", choices=STEP_NAMES, help=argparse.SUPPRESS)  # a step's own process
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    # Torch runs beside JAX on the same GPU: JAX must not take 75% of its memory up front (as
    # benchmarks.compare); set here, before any step imports JAX, and inherited by the steps.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")
    os.environ.setdefault("KERAS_BACKEND", "jax")
    out = Path(args.out)
    if args.step:
        run_one(args.step, out, args.smoke, args.deadline or time.time() + BUDGET_S)
        return 0
    given = {}
    for item in args.share:
        step, _, sec = item.partition("=")
        try:
            given[step] = float(sec)
        except ValueError:
            p.error(f"--share takes STEP=SECONDS, not {item!r}")
        if step not in STEP_NAMES:
            p.error(f"--share: unknown step {step!r}; the steps are {', '.join(STEP_NAMES)}")
    budget = args.budget or (SMOKE_BUDGET_S if args.smoke else BUDGET_S)
    return drive(out, args.smoke, budget, given, args.steps)


if __name__ == "__main__":
    sys.exit(main())
