"""``jaxplain report``: write a run's HTML report (joining a multi-process run's parts first)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from jaxplain.cli import common
from jaxplain.errors import InputError


def run(args: argparse.Namespace) -> int:
    from jaxplain.runs import outputs, record, report
    from jaxplain.runs.join import join

    out = Path(args.out)
    if not (out / record.RUN).is_file():
        raise InputError(f"{args.out}: no jaxplain run here (no {record.RUN})")
    report.check_writable(out)
    lock = outputs.Lock(out / ".lock.p0", f"into {out}")
    try:
        join(out)
        print(f"report: {report.write(out, page_size=args.page_size)}")
    finally:
        lock.release()
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """``jaxplain report``'s subparser on ``sub`` (``add_subparsers``' result), run by ``run``."""
    re_ = sub.add_parser("report", help="write OUT/index.html for the results of an explain run",
                         description="Write a run's report, OUT/index.html (and OUT/report/), from the results in "
                         "OUT (joining a multi-process run's parts first).")
    re_.add_argument("out", metavar="OUT", help="the --out folder of jaxplain explain")
    re_.add_argument("--page-size", type=common.positive, default=50, help="images per page (default 50)")
    re_.add_argument("--debug", action="store_true", help="show the traceback of an error")
    re_.set_defaults(run=run)
    return re_
