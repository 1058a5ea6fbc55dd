"""``jaxplain predict`` end to end, as a user runs it: a subprocess, weights from a file."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.torch_reference import TorchVGG


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory):
    torch.manual_seed(3)
    path = tmp_path_factory.mktemp("cli") / "vgg16.safetensors"
    save_file({k: v.contiguous() for k, v in TorchVGG("vgg16").state_dict().items()}, path)
    return path


def run(*args, home):
    env = dict(os.environ, JAXPLAIN_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "jaxplain.cli", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def test_predict_end_to_end(vgg16_file, tmp_path):
    good = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (180, 260, 3)).astype(np.uint8)).save(good)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    r = run("predict", good, bad, "--weights", vgg16_file, home=tmp_path)
    assert r.returncode == 1, r.stderr  # one image failed, the other was still predicted
    lines = r.stdout.splitlines()
    assert lines[0] == str(good) and len(lines) == 6
    assert [l.split(".")[0].strip() for l in lines[1:]] == ["1", "2", "3", "4", "5"]
    assert all(l.split()[-2].startswith("n") for l in lines[1:])  # wnids
    probs = [float(l.split()[-1]) for l in lines[1:]]
    assert probs == sorted(probs, reverse=True)
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "broken.jpg" in err[0] and "Traceback" not in r.stderr


def test_bad_weights_is_one_line(tmp_path):
    w = tmp_path / "w.h5"
    w.write_text("garbage")
    img = tmp_path / "i.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    r = run("predict", img, "--weights", w, home=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("jaxplain: error:") and "w.h5" in r.stderr
