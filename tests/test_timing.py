"""The comparison method (``jaxplain.timing``) on fake calls and a fake clock: the ratio, the
order of the rounds, the refusal to give a ratio when a side is noisy, the competing processes."""

import multiprocessing
import types

import pytest

from jaxplain import timing


class Clock:
    """A fake ``time`` module: ``perf_counter`` only moves when a fake call advances it."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def fake_calls(monkeypatch, durations: dict[str, list[float]]):
    """Two no-argument calls ``a`` and ``b`` that take the next of their ``durations`` on the fake
    clock (warm-up calls included), and the list of calls made, in order."""
    clock, order = Clock(), []
    monkeypatch.setattr(timing, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    left = {k: list(v) for k, v in durations.items()}

    def call(name):
        def f():
            order.append(name)
            clock.now += left[name].pop(0)
        return f

    return call("a"), call("b"), order


def test_side_by_side_ratio_order_and_spreads(monkeypatch):
    # warm-up first (9 s and 9 s: not counted), then 5 rounds; b twice as slow as a, round by round
    a_s = [1.0, 1.1, 0.9, 1.05, 0.95]
    a, b, order = fake_calls(monkeypatch, {"a": [9.0, *a_s], "b": [9.0, *(2 * t for t in a_s)]})
    c = timing.side_by_side(a, b, names=("a", "b"), items=8, rounds=5, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]  # warm-up, then ABBA...
    assert c.seconds["a"] == pytest.approx(a_s) and c.seconds["b"] == pytest.approx([2 * t for t in a_s])
    assert c.ratio.median == pytest.approx(2.0) and c.ratio.low == pytest.approx(2.0) == c.ratio.high
    s = c.side("a")
    assert (s.low, s.median, s.high) == pytest.approx((0.9, 1.0, 1.1)) and s.relative == pytest.approx(0.2)
    assert c.per_s("a").median == pytest.approx(8.0) and c.per_s("a").low == pytest.approx(8 / 1.1)
    assert not c.noisy and c.ratio_text() == "2.00x (2.00-2.00)"
    d = c.as_dict()
    assert d["ratio"] == pytest.approx(2.0) and d["rounds"] == 5 and d["items"] == 8
    assert d["b"]["seconds"] == pytest.approx([2 * t for t in a_s]) and d["a"]["per_s"] == pytest.approx(8.0)
    assert {"load_before", "load_after", "threads"} <= set(d) and d["threads"]["xla"] == timing.cpus()

    # a ratio that moves from round to round: low <= median <= high, all near 2
    a, b, _ = fake_calls(monkeypatch, {"a": [1.0] * 6, "b": [1.0, 1.9, 2.0, 2.1, 2.05, 1.95]})
    r = timing.side_by_side(a, b, rounds=5, names=("a", "b")).ratio
    assert r.low <= r.median <= r.high and (r.low, r.median, r.high) == pytest.approx((1.9, 2.0, 2.1))


def test_a_noisy_side_gets_no_ratio(monkeypatch):
    a, b, _ = fake_calls(monkeypatch, {"a": [1.0, 1.0, 1.0, 1.4, 1.0, 1.0], "b": [1.0] * 6})  # a: 40% spread
    c = timing.side_by_side(a, b, names=("a", "b"), rounds=5)
    assert c.noisy and c.ratio_text() == "noisy, rerun"
    d = c.as_dict()
    assert d["ratio"] is None and d["noisy"] and d["ratio_median_even_if_noisy"] == pytest.approx(1.0)
    a, b, _ = fake_calls(monkeypatch, {"a": [1.0] * 6, "b": [1.0, 1.0, 1.0, 1.2, 1.0, 1.0]})  # 20%: under 25%
    assert not timing.side_by_side(a, b, names=("a", "b"), rounds=5).noisy


def test_bad_rounds_raise():
    with pytest.raises(ValueError, match="rounds"):
        timing.side_by_side(lambda: None, lambda: None, rounds=0)
    with pytest.raises(ValueError, match="warmup"):
        timing.side_by_side(lambda: None, lambda: None, warmup=-1)


def test_competing_starts_and_stops_its_processes():
    before = set(multiprocessing.active_children())
    with timing.competing(1):
        busy = [p for p in multiprocessing.active_children() if p not in before]
        assert len(busy) == 1 and busy[0].is_alive()
    assert not busy[0].is_alive() and busy[0].exitcode is not None
