"""``benchmarks/regimes.py``: its table reads the comparison method's results, and it refuses an
unknown setting before starting anything."""

import pytest

from benchmarks import regimes
from jaxplain import timing


def _result(cell, ours, theirs):
    c = timing.Comparison(("jaxplain", "captum"), {"jaxplain": ours, "captum": theirs}, 8, 1.0, 2.0,
                          {"cpus": 2, "xla": 2, "torch": 1})
    return {**c.as_dict(), "cell": cell, "model": "resnet50", "first_s": {"jaxplain": 3.0, "captum": 2.0}}


def test_row_and_refusal(capsys):
    quiet = regimes.row(_result("c1-t1", [1.0, 1.1, 1.0], [2.0, 2.0, 2.2]))
    # 8 images per call: 8 / 1.0 s median; ratio per round 2.0, 1.82, 2.2 -> median 2.0
    assert "| resnet50 | 1 busy added, torch 1 thread, one process | 8.00 (7.27-8.00) | 4.00 (3.64-4.00) |" in quiet
    assert "2.00x (1.82-2.20)" in quiet and "3.0 / 2.0" in quiet and "1.0 / 2.0" in quiet
    noisy = regimes.row(_result("passive", [1.0, 2.0, 1.0], [2.0, 2.0, 2.0]))
    assert "OMP_WAIT_POLICY=PASSIVE" in noisy and "noisy (2.00x)" in noisy and "x (" not in noisy
    with pytest.raises(SystemExit):
        regimes.main(["--cells", "base,bogus"])
    assert "unknown cells ['bogus']" in capsys.readouterr().err
