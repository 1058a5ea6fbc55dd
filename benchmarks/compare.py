"""``jaxplain bench`` with Captum alongside, on the same weights and device, alternating:
``python -m benchmarks.compare --methods gradient grad_cam --batch 1 8 [--json out.json]``
(the same options as ``jaxplain bench``; Score-CAM's peer is pytorch-grad-cam's algorithm)."""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

from benchmarks.peers import captum_peer  # noqa: E402
from jaxplain import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = cli.parser().parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return cli.bench_command(args, peer=captum_peer)


if __name__ == "__main__":
    sys.exit(main())
