"""``jaxplain bench`` with Captum alongside, on the same weights and device, by the comparison
method (``jaxplain.timing``: both warmed, interleaved rounds, equal threads, medians and spreads):
``python -m benchmarks.compare --methods gradient grad_cam --batch 1 8 [--model resnet50] [--rounds 5]
[--compete 1] [--json out.json]`` (the same options as ``jaxplain bench``; ``--compete N`` times
each case quiet and then beside N busy processes; the peers are in ``benchmarks/peers.py``)."""

import argparse
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
# Torch runs beside JAX on the same GPU: JAX must not take 75% of its memory up front, and it
# keeps what it has allocated, so cap it (measured on an H200: Captum's IG at batch 32 ran out
# of memory beside JAX's default pool).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.5")

from benchmarks.peers import captum_pair  # noqa: E402  (imports torch)
from jaxplain import cli, timing  # noqa: E402
from jaxplain.errors import JaxplainError  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description="Measure jaxplain's images/s beside "
                                "Captum's on the same weights and device, in interleaved rounds with equal threads (jaxplain bench's options).")
    cli.bench.bench_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    print(f"threads made equal: {timing.equal_threads()}", flush=True)
    try:
        return cli.bench.run(args, pair=captum_pair)
    except JaxplainError as e:
        print(f"python -m benchmarks.compare: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
