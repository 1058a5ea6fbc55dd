"""``bash benchmarks/run_all.sh --smoke OUT`` as a user runs it: every step at tiny sizes, one
Markdown table, the JSON lines, and a step cut off by its share keeping its finished rows."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.run_all import STEPS, STEP_NAMES, Step, append_jsonl, run_step, shares, table

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_run_writes_a_table_and_keeps_a_cut_off_steps_rows(tmp_path, monkeypatch):
    pytest.importorskip("captum")
    out = tmp_path / "out"
    # vgg16's share ends once it has written its first row (of two): it is killed mid-step
    env = {**os.environ, "PYTHON": sys.executable, "RUN_ALL_CUT_AFTER": "vgg16:1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "run_all.sh"), "--smoke", str(out)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    records = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]  # every line parses
    steps = {s["step"]: s for s in map(json.loads, (out / "steps.jsonl").read_text().splitlines())}
    assert list(steps) == list(STEP_NAMES)
    assert steps["vgg16"]["status"] == "cut off"
    assert all(steps[n]["status"] == "ok" for n in STEP_NAMES if n != "vgg16"), steps

    rows = [r for r in records if r["kind"] == "row"]
    by_step = {n: [r for r in rows if r["step"] == n] for n in STEP_NAMES}
    assert [r["method"] for r in by_step["vgg16"]] == ["gradient"]  # the finished row kept, the second never came
    measured = [r for r in rows if "comparison" in r]
    # every model step measured each of its methods, the precision steps theirs (tf32: ours and torch's)
    assert len(measured) == 1 + 2 + 2 + 1 + 2, [(r["step"], r["method"], r.get("note")) for r in rows]
    for r in measured:
        c = r["comparison"]
        assert c["rounds"] == 2 and len(c[c["names"][0]]["seconds"]) == 2
        a, b = c["names"]
        assert r["a_per_s"].startswith(f"{r['batch'] / c[a]['s_per_call']:.3g} ")  # images/s = batch / median s
        assert r["ratio"] == "noisy, rerun" if c["noisy"] else r["ratio"].endswith(")")
        assert "% of" in r["peak"] or r["step"] == "tf32"
    assert {r["method"].split("(")[0] for r in measured} == {"gradient", "grad_cam", "smoothgrad", "occlusion", "lime"}

    lines = (out / "table.md").read_text().splitlines()
    assert "cut off: vgg16;" in lines[2] and "failed: none" in lines[2]
    body = [line for line in lines if line.startswith("| ") and not line.startswith(("| step", "| ---"))]
    assert {line.split(" | ")[0][2:] for line in body} == set(STEP_NAMES)  # a row per step
    assert len(body) == len(rows) + 1 and "| vgg16 | - |" in lines[-1] and "cut off at its share" in lines[-1]

    # the shares: a step's weight's part of what is left; a fixed share is taken out first
    share = shares(100.0, list(STEPS), {"tf32": 5.0})
    total = sum(s.weight for s in STEPS if s.name != "tf32")
    assert share(0, 100.0) == pytest.approx(95.0 * STEPS[0].weight / total)
    assert share(STEP_NAMES.index("tf32"), 3.0) == 3.0

    # a step that fails records why, in its status and in the table, and the run goes on
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    failed = run_step(Step("no_such_step", 1, "a step the driver does not know"), out, 60.0, True, None)
    assert failed["status"] == "failed" and "invalid choice: 'no_such_step'" in failed["why"]
    append_jsonl(out / "steps.jsonl", failed)
    text = table(out)
    assert "failed: no_such_step (" in text and "| no_such_step | - |" in text and "| failed: " in text
