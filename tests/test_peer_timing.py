"""``benchmarks.sides.compare``: the peer benchmarks' use of ``jaxplain.timing.side_by_side`` with
calls repeated to fill a round, on a fake clock (each call advances it by a known amount)."""

import time

from benchmarks import sides


def test_compare_repeats_short_calls_and_reports_seconds_per_call(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    calls = {"fast": 0, "slow": 0}

    def call(name, seconds):
        def fn():
            calls[name] += 1
            now[0] += seconds
        return fn

    # fast: 0.01 s a call -> 50 calls fill a 0.5 s round; slow: 0.2 s -> 3; known seconds skip the sizing call
    c, counts = sides.compare(call("fast", 0.01), call("slow", 0.2), names=("fast", "slow"), items=8, rounds=5,
                              known={"slow": 0.2}, min_round=0.5)
    assert counts == {"fast": 50, "slow": 3}
    assert calls == {"fast": 1 + 5 * 50, "slow": 5 * 3}  # one sizing call of fast, no further warm-up
    assert len(c.seconds["fast"]) == len(c.seconds["slow"]) == 5
    assert all(abs(s - 0.01) < 1e-12 for s in c.seconds["fast"])
    assert all(abs(s - 0.2) < 1e-12 for s in c.seconds["slow"])
    assert abs(c.per_s("fast").median - 800) < 1e-6 and abs(c.per_s("slow").median - 40) < 1e-6
    assert abs(c.ratio.median - 20) < 1e-9 and c.ratio_text() == "20.00x (20.00-20.00)"
    d = c.as_dict()
    assert d["ratio"] == c.ratio.median and d["rounds"] == 5 and not d["noisy"]
    # without sizing (calls of minutes): one call a round, nothing more
    calls.update(fast=0, slow=0)
    c, counts = sides.compare(call("fast", 0.01), call("slow", 0.2), names=("fast", "slow"), items=8, rounds=5, size=False)
    assert counts == {"fast": 1, "slow": 1} and calls == {"fast": 5, "slow": 5}
