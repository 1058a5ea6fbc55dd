"""Two processes on 127.0.0.1 (CPU devices, jax.distributed) explain a file list together: every
image exactly once, each result equal to the single-process one."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

WORKER = r"""
import json, os, sys
import numpy as np
sys.path.insert(0, os.getcwd())
import jaxplain
import jaxplain.distributed as dist
coordinator, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
dist.initialize(coordinator, num_processes=2, process_id=pid)
import jax
from tests.conftest import tiny_pair
files = [f"img{i}" for i in range(7)]
mine = dist.my_share(files)
m = tiny_pair(seed=1)[1]
x = np.stack([np.random.default_rng(int(f[3:])).normal(size=(32, 32, 3)).astype(np.float32) for f in mine])
a = np.asarray(jaxplain.explain(m, x, 3, "integrated_gradients(steps=8)"))
for f, v in zip(mine, a):
    np.save(os.path.join(out, f"{f}.p{pid}.npy"), v)
print(json.dumps({"pid": pid, "index": jax.process_index(), "count": jax.process_count(), "local": len(jax.local_devices()), "global": len(jax.devices())}))
"""


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_cover_every_image_once(tmp_path, tiny_model):
    coordinator = f"127.0.0.1:{_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = os.path.dirname(os.path.dirname(__file__))
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, coordinator, str(i), str(tmp_path)], cwd=root, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    info = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert sorted(i["index"] for i in info) == [0, 1] and all(i["count"] == 2 for i in info)
    assert all(i["global"] == 2 * i["local"] for i in info)
    written = sorted(f.name for f in tmp_path.iterdir())
    names = [w.split(".")[0] for w in written]
    assert sorted(names) == [f"img{i}" for i in range(7)]  # each image once, none twice
    import jaxplain

    for w in written:
        i = int(w[3:].split(".")[0])
        x = np.random.default_rng(i).normal(size=(1, 32, 32, 3)).astype(np.float32)
        want = np.asarray(jaxplain.explain(tiny_model, x, 3, "integrated_gradients(steps=8)"))[0]
        np.testing.assert_allclose(np.load(tmp_path / w), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_reachable_after_import_jaxplain():
    """The README calls ``jaxplain.distributed.initialize`` after ``import jaxplain`` (a fresh process:
    in this one another test may have imported the module)."""
    code = "import jaxplain; print(jaxplain.distributed.my_share.__name__, jaxplain.distributed.initialize.__name__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert r.returncode == 0 and r.stdout.split() == ["my_share", "initialize"], r.stderr[-2000:]


def test_an_unreachable_coordinator_is_one_error_naming_it(tmp_path, monkeypatch, capsys):
    """Nothing listens on the port: a bounded wait, then an InputError naming the address (JAX alone
    waits 5 minutes, then aborts the process with a C++ stack trace); jax is left uninitialised."""
    import jax

    from jaxplain import InputError, cli, distributed

    address = f"127.0.0.1:{_port()}"  # bound, then closed: nothing listens there
    with pytest.raises(InputError, match=rf"coordinator {address}: nothing answered there in 0.5 s \(Connection refused\)"
                                         "; start process 0 first and check the address"):
        distributed.initialize(address, 2, 1, timeout=0.5)
    assert jax.process_count() == 1
    with pytest.raises(InputError, match="coordinator 'nowhere': not HOST:PORT"):
        distributed.initialize("nowhere", 2, 1, timeout=0.5)
    # The command line: the wait from the environment, one line, exit 2.
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setenv("JAXPLAIN_COORDINATOR_TIMEOUT", "0.5")
    code = cli.main(["explain", str(tmp_path / "a.png"), "--out", str(tmp_path / "out"), "--model", "synthetic_vgg",
                     "--coordinator", address, "--num-processes", "2", "--process-id", "1"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"jaxplain: error: coordinator {address}: nothing answered")
    monkeypatch.setenv("JAXPLAIN_COORDINATOR_TIMEOUT", "soon")
    with pytest.raises(InputError, match="JAXPLAIN_COORDINATOR_TIMEOUT='soon': not a number of seconds"):
        distributed.initialize(address, 2, 1)
