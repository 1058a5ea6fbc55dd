"""The measuring code the benchmark suite and ``jaxplain bench`` share: every reported field is
present and consistent (speed itself is measured in benchmarks/, never asserted here)."""

import json
import os
import subprocess
import sys

import pytest

from jaxplain import bench

FIELDS = {"method", "batch", "settings", "compile_s", "s_per_call", "images_per_s", "ms_per_image", "passes_per_s",
          "flops_per_call", "flops_per_s", "peak_flops_per_s", "fraction_of_peak", "peak_memory_bytes",
          "peak_memory_kind", "dtype", "precision", "chunk_loop", "seconds", "s_low", "s_high", "images_per_s_low",
          "images_per_s_high", "spread"}


def test_measure_fields(tiny_model):
    m = tiny_model.replace(input_size=(32, 32))
    case = bench.compile_case(m, "integrated_gradients(steps=6)", 2)
    row = bench.measure(case, peak_flops=1e9, rounds=2, min_time=0)
    assert FIELDS <= set(row)
    assert row["passes_per_s"] == pytest.approx(6 * row["images_per_s"])
    assert row["flops_per_call"] > 0 and row["fraction_of_peak"] == pytest.approx(row["flops_per_s"] / 1e9)
    assert bench.passes("smoothgrad", {"samples": 5, "base": "integrated_gradients", "base_settings": {"steps": 4}}) == 20
    assert "images/s" in bench.table([row])
    assert bench.passes("occlusion", {"window": (8, 8), "strides": (6, 6)}, (32, 32, 3)) == 1 + 5 * 5
    # the surrogates: one pass per segment and the image; the samples; 2^M coalitions when exact; IG per baseline
    assert bench.passes("feature_ablation", {"cells": (2, 3)}) == 1 + 6
    assert bench.passes("lime", {"samples": 50}) == 50
    assert bench.passes("kernel_shap", {"cells": 3}) == 2**9 and bench.passes("kernel_shap", {"samples": 300}) == 302
    assert bench.passes("xrai", {"base": "integrated_gradients(steps=7)"}) == 2 * 7


def test_host_loop_counts_the_flops_of_every_chunk(tiny_model, monkeypatch):
    monkeypatch.setenv("JAXPLAIN_CHUNK_LOOP", "host")
    m = tiny_model.replace(input_size=(32, 32))
    looped = bench.compile_case(m, "integrated_gradients(steps=6, chunk=2)", 2)  # three calls of two steps
    whole = bench.compile_case(m, "integrated_gradients(steps=6, chunk=6)", 2)
    assert looped.flops == pytest.approx(whole.flops, rel=0.05)


def test_bench_command_writes_json(tmp_path):
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, "-m", "jaxplain.cli", "bench", "--model", "vgg11", "--size", "32", "--methods",
                        "gradient", "--batch", "2", "--rounds", "1", "--min-time", "0", "--compete", "1", "--json", str(out)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, JAXPLAIN_HOME=str(tmp_path)))
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["device"]["platform"] == "cpu" and data["peak_flops_per_s"] > 0
    row = data["rows"][0]
    assert FIELDS <= set(row) and row["batch"] == 2 and [r["competing"] for r in data["rows"]] == [0, 1]
    assert row["images_per_s_low"] <= row["images_per_s"] <= row["images_per_s_high"] and len(row["seconds"]) == 1
    assert {"load_before", "load_after", "threads"} <= set(row) and "peer" not in row
    assert "gradient" in r.stdout and "% peak" in r.stdout and "load" in r.stdout and "threads" in r.stdout


def test_compare_times_both_sides_by_the_comparison_method(tmp_path, monkeypatch, capsys):
    """``python -m benchmarks.compare`` through ``main``: jaxplain and Captum in interleaved rounds
    (quiet, then beside one busy process), each side's spread, the ratio or "noisy, rerun", equal
    threads, the load. The pair is the tests' tiny VGG and its torch twin (same weights) in place
    of the zoo's, which takes seconds to build; fewer than 5 rounds is refused before any model."""
    pytest.importorskip("captum")
    from benchmarks import compare, pairs
    from tests.conftest import tiny_pair

    def no_pair(*_, **__):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(pairs, "pair", no_pair)
    argv = ["--model", "vgg11", "--size", "32", "--methods", "gradient", "--batch", "1"]
    assert compare.main([*argv, "--rounds", "3"]) == 2
    assert "at least 5" in capsys.readouterr().err

    net, model = tiny_pair(seed=3)
    model = model.replace(input_size=(32, 32))
    monkeypatch.setattr(pairs, "pair", lambda name, device="cpu", size=None: (model, net))
    monkeypatch.setattr(bench, "matmul_peak", lambda: 1e9)
    out = tmp_path / "c.json"
    assert compare.main([*argv, "--rounds", "5", "--compete", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["competing"] for r in rows] == [0, 1]
    for row in rows:
        assert row["peer"] == "captum" and len(row["seconds"]) == len(row["peer_seconds"]) == 5
        for side in ("images_per_s", "peer_images_per_s"):
            assert row[f"{side}_low"] <= row[side] <= row[f"{side}_high"]
        c = row["comparison"]
        assert c["names"] == ["jaxplain", "captum"] and c["rounds"] == 5 and c["captum"]["seconds"] == row["peer_seconds"]
        if row["noisy"]:
            assert row["vs_peer"] is None and row["vs_peer_text"] == "noisy, rerun"
        else:
            assert row["vs_peer_low"] <= row["vs_peer"] <= row["vs_peer_high"] and row["vs_peer_text"].endswith(")")
        assert row["threads"]["torch"] == row["threads"]["xla"] == row["threads"]["cpus"]
        assert row["load_before"] >= 0 and row["load_after"] >= 0 and row["captum_peak_memory_bytes"] > 0
    text = capsys.readouterr().out
    assert "threads made equal" in text and "vs peer" in text and "load" in text


def test_benchmark_matrix_never_schedules_exact_grad_cam_pp_on_vgg16():
    """Exact Grad-CAM++ is about 1e14 FLOP per VGG16 image (17 minutes here): the suite runs the
    default (the paper's form) on VGG16 and exact mode on the tiny model only."""
    from benchmarks.cases import cases

    specs = [(p.values[0], p.values[1], p.values[2]) for p in cases()]
    vgg = [s for m, s, _ in specs if m == "vgg16" and s.startswith("grad_cam_pp")]
    assert vgg and all("exact" not in s for s in vgg)
    assert any(m == "tiny" and "exact" in s for m, s, _ in specs)


def test_the_package_bench_needs_no_torch():
    out = subprocess.run([sys.executable, "-c", "import sys, jaxplain.bench, jaxplain.cli; "
                          "assert 'torch' not in sys.modules and 'captum' not in sys.modules"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]


def test_compare_help_names_itself(capsys):
    """``python -m benchmarks.compare --help`` calls itself that, not ``jaxplain bench``, with bench's options."""
    from benchmarks import compare

    with pytest.raises(SystemExit) as exit:
        compare.main(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith("usage: python -m benchmarks.compare ")
    assert "jaxplain bench [" not in out and "--methods" in out and "--precision" in out


def _private_names(path) -> list[str]:
    """``from jaxplain... import _x`` and ``m._x`` of a module ``m`` imported from jaxplain in ``path``."""
    import ast

    tree = ast.parse(path.read_text())
    modules, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jaxplain":
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"from {node.module} import {alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name for a in node.names if a.name.split(".")[0] == "jaxplain")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_the_benchmarks_use_no_private_name_of_the_package():
    """The benchmark suite reaches the kernel and the command line through public names only."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "benchmarks"
    found = {p.name: _private_names(p) for p in sorted(root.glob("*.py"))}
    assert not {name: names for name, names in found.items() if names}
