"""Why the ResNet-50 / ViT-B/16 ratios move between runs: the same side-by-side comparison
(``jaxplain.timing.side_by_side``: saliency at batch 8, 224x224, the same weights) under one
setting at a time: busy processes beside it (``timing.competing``), torch's intra-op threads,
libgomp's wait policy (``OMP_WAIT_POLICY``), glibc's malloc arenas, and each side in a process of
its own instead of both in one. Each setting runs in a fresh process, since OpenMP and glibc read
their environment at start-up.

    python -m benchmarks.regimes                       # the ResNet-50 matrix, a table at the end
    python -m benchmarks.regimes --model vit_b16 --cells base,c1,c1-t1
    python -m benchmarks.regimes --lock /path/to/lock  # flock a file while each cell runs

A cell's timing starts after its model is built and compiled (the persistent compile cache in
``--cache`` keeps later cells from compiling again); the first call of each side is recorded
apart (``first_s``) and not counted. ``--lock`` takes an exclusive ``flock`` on a file while each
cell's process runs (released between cells), so measurements on a shared machine take turns."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import multiprocessing
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# name: (competing processes, torch threads, environment, layout); "one": both sides in one
# process, alternating (as benchmarks.compare), "split": each side in a process of its own.
CELLS: dict[str, tuple[int, int, dict[str, str], str]] = {
    "base": (0, 2, {}, "one"),
    "t1": (0, 1, {}, "one"),
    "passive": (0, 2, {"OMP_WAIT_POLICY": "PASSIVE"}, "one"),
    "active": (0, 2, {"OMP_WAIT_POLICY": "ACTIVE"}, "one"),
    "split": (0, 2, {}, "split"),
    "arena2": (0, 2, {"MALLOC_ARENA_MAX": "2"}, "one"),
    "c1": (1, 2, {}, "one"),
    "c1-t1": (1, 1, {}, "one"),
    "c1-passive": (1, 2, {"OMP_WAIT_POLICY": "PASSIVE"}, "one"),
    "c1-split": (1, 2, {}, "split"),
    "c2": (2, 2, {}, "one"),
    "c2-t1": (2, 1, {}, "one"),
}


@contextlib.contextmanager
def locked(path: str | None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` for the block (nothing when ``path`` is None)."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def use_cache(cache: str) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)


def sides(which: tuple[str, ...], model_name: str, batch: int, torch_threads: int, cache: str) -> dict[str, Callable[[], Any]]:
    """No-argument calls that each run one side to completion: ``"jaxplain"`` (the compiled
    ``gradient`` case) and/or ``"captum"`` (``Saliency`` on the torch twin with the same weights)."""
    import jax
    import torch

    from benchmarks.pairs import pair
    from benchmarks.peers import captum_call
    from jaxplain.bench import compile_case

    torch.set_num_threads(torch_threads)
    use_cache(cache)
    model, net = pair(model_name)
    calls: dict[str, Callable[[], Any]] = {}
    if "jaxplain" in which:
        case = compile_case(model, "gradient", batch)
        calls["jaxplain"] = lambda: jax.block_until_ready(case.call())
    if "captum" in which:
        calls["captum"] = captum_call(net, "gradient", batch, {}, model.input_size or (224, 224))
    return calls


def _worker(conn: Any, which: str, model_name: str, batch: int, torch_threads: int, cache: str) -> None:
    call = sides((which,), model_name, batch, torch_threads, cache)[which]
    conn.send("ready")
    while conn.recv():
        call()
        conn.send("done")


class Remote:
    """One side in a process of its own; calling it runs one call there and waits for it."""

    def __init__(self, *args: Any) -> None:
        self.conn, child = multiprocessing.get_context("spawn").Pipe()
        self.proc = multiprocessing.get_context("spawn").Process(target=_worker, args=(child, *args), daemon=True)
        self.proc.start()

    def ready(self) -> None:
        assert self.conn.recv() == "ready"

    def __call__(self) -> None:
        self.conn.send(True)
        self.conn.recv()

    def close(self) -> None:
        self.conn.send(False)
        self.proc.join()


def timed_once(f: Callable[[], Any]) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def cell(name: str, model_name: str, batch: int, rounds: int, cache: str) -> dict[str, Any]:
    """Measure one setting (in this process; the driver gives each its own): the comparison's
    ``as_dict`` with the setting, the first call of each side and the peak RSS added."""
    from jaxplain import timing

    n, torch_threads, env, layout = CELLS[name]
    if layout == "split":
        remotes = {w: Remote(w, model_name, batch, torch_threads, cache) for w in ("jaxplain", "captum")}
        for r in remotes.values():
            r.ready()
        ours, theirs = remotes["jaxplain"], remotes["captum"]
    else:
        calls = sides(("jaxplain", "captum"), model_name, batch, torch_threads, cache)
        ours, theirs = calls["jaxplain"], calls["captum"]
    with timing.competing(n):
        time.sleep(0.5)  # the busy processes running
        first = {"jaxplain": timed_once(ours), "captum": timed_once(theirs)}
        cmp = timing.side_by_side(ours, theirs, names=("jaxplain", "captum"), items=batch, rounds=rounds, warmup=1)
    if layout == "split":
        for r in remotes.values():
            r.close()
    out = cmp.as_dict()
    out.update(cell=name, model=model_name, batch=batch, competing=n, torch_threads=torch_threads, env=env,
               layout=layout, first_s=first, peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    return out


def _work(n: int = 3_000_000) -> float:
    """Seconds for a fixed single-threaded Python loop."""
    t = time.perf_counter()
    x = 0
    for i in range(n):
        x += i
    return time.perf_counter() - t


def nice_probe(busy: int = 2, repeats: int = 5) -> dict[str, float]:
    """Median seconds of a fixed one-core loop here: alone, beside ``busy`` spinning processes at
    ``nice 19`` in a session of their own, and the same with their session's autogroup at nice 19.
    With autogroup scheduling (``/proc/sys/kernel/sched_autogroup_enabled``), a process's nice
    value only ranks it within its session, so ``nice`` alone may not make way for other work."""
    import statistics

    spin = f"{sys.executable} -c 'while True: pass'"
    out = {"alone": statistics.median(_work() for _ in range(repeats))}
    for name, cmd in (("nice19", f"exec nice -n 19 {spin}"),
                      ("nice19_autogroup19", f"echo 19 > /proc/self/autogroup; exec nice -n 19 {spin}")):
        procs = [subprocess.Popen(["sh", "-c", cmd], start_new_session=True) for _ in range(busy)]
        try:
            time.sleep(0.5)
            out[name] = statistics.median(_work() for _ in range(repeats))
        finally:
            for q in procs:
                q.terminate()
            for q in procs:
                q.wait()
    return out


def run_cell(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one cell in a fresh process with its environment; its result (or its error)."""
    env = {**os.environ, **CELLS[name][2]}
    cmd = [sys.executable, "-m", "benchmarks.regimes", "--cell", name, "--model", args.model, "--batch",
           str(args.batch), "--rounds", str(args.rounds), "--cache", args.cache]
    with locked(args.lock):
        start = time.perf_counter()
        # its own process group, so a cell over time is ended with its busy and worker processes
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
        try:
            stdout, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"cell": name, "model": args.model, "error": [f"over {args.timeout} s"]}
        held = time.perf_counter() - start
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"cell": name, "model": args.model, "error": (stderr or stdout).strip().splitlines()[-1:]}
    return {**json.loads(lines[-1]), "cell_s": held}


def row(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"| {r['model']} | {r['cell']} | failed: {r['error']} | | | |"
    n, t, env, layout = CELLS[r["cell"]]
    what = ", ".join([f"{n} busy added", f"torch {t} thread{'s' if t > 1 else ''}", *(f"{k}={v}" for k, v in env.items()),
                      "own processes" if layout == "split" else "one process"])
    j, c = (r[k] for k in ("jaxplain", "captum"))
    ratio = (f"{r['ratio']:.2f}x ({r['ratio_low']:.2f}-{r['ratio_high']:.2f})" if r["ratio"] is not None
             else f"noisy ({r['ratio_median_even_if_noisy']:.2f}x)")
    return (f"| {r['model']} | {what} | {j['per_s']:.2f} ({j['per_s_low']:.2f}-{j['per_s_high']:.2f}) | "
            f"{c['per_s']:.2f} ({c['per_s_low']:.2f}-{c['per_s_high']:.2f}) | {ratio} | "
            f"{r['first_s']['jaxplain']:.1f} / {r['first_s']['captum']:.1f} | {r['load_before']:.1f} / {r['load_after']:.1f} |")


HEAD = ("| model | setting | jaxplain images/s | Captum images/s | jaxplain / Captum | first call s (ours / Captum) | load before / after |\n"
        "| --- | --- | --- | --- | --- | --- | --- |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50", choices=("resnet50", "vit_b16"))
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of {', '.join(CELLS)}")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "jaxplain-regimes-cache"))
    p.add_argument("--lock", help="a file to flock while each cell runs (cells on a shared machine wait for each other)")
    p.add_argument("--timeout", type=float, default=240, help="seconds a cell may run")
    p.add_argument("--json", help="append each cell's result to this JSONL file")
    p.add_argument("--nice-probe", action="store_true", help="only time a fixed loop beside nice 19 spinners (see nice_probe)")
    p.add_argument("--cell", help=argparse.SUPPRESS)  # run one cell here, print its JSON
    args = p.parse_args(argv)
    if args.nice_probe:
        print(json.dumps(nice_probe()), flush=True)
        return 0
    if args.cell:
        print(json.dumps(cell(args.cell, args.model, args.batch, args.rounds, args.cache)), flush=True)
        return 0
    names = [c for c in args.cells.split(",") if c]
    unknown = [c for c in names if c not in CELLS]
    if unknown:
        p.error(f"unknown cells {unknown}; known: {', '.join(CELLS)}")
    print(HEAD, flush=True)
    for name in names:
        r = run_cell(name, args)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
        print(row(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
