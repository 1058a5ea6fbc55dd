"""The zoo (models/zoo.py): one table the command line reads for its models, weights, sources and
class names; the offline message in the words of the caller; the training script out of the wheel."""

import importlib
import importlib.util
import socket

import numpy as np
import pytest
from PIL import Image

import jaxplain
from jaxplain import cli, models
from jaxplain.engine.shapes import num_classes
from jaxplain.io import load_image
from jaxplain.models import zoo
from tests.conftest import TINY

LABELS = tuple((f"id{i}", f"class{i}") for i in range(TINY.classes))


def picture(path, size=(40, 50)):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (*size, 3)).astype(np.uint8)).save(path)
    return str(path)


def _tiny(weights=None, source=None):
    """A new model's builder: the tests' tiny VGG, named as its zoo line, with 'mine' weights read
    as torchvision's."""
    assert weights in (None, "mine-v1"), weights
    model = models.build(TINY, models.random_params(TINY, 0), source="torchvision")
    return model.replace(name="tiny_new", source=source or "torchvision", input_size=(32, 32))


@pytest.fixture
def new_model(monkeypatch):
    """One line added to the zoo, nothing else."""
    monkeypatch.setitem(zoo.ZOO, "tiny_new", zoo.Entry(_tiny, ("torchvision", "mine"), ("mine-v1",), lambda: LABELS, "torchvision"))


def test_a_new_zoo_line_is_a_model_of_the_command_line(new_model, tmp_path, capsys):
    """--model, --weights (its named weights, the default first), --source and the class names
    printed all come from the zoo's line."""
    img = picture(tmp_path / "a.png")
    assert cli.main(["predict", img, "--model", "tiny_new", "--source", "mine", "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    model = _tiny()
    logits = np.asarray(model(model.preprocess(load_image(img, model)[None])), np.float64)[0]
    want = np.argsort(-logits, kind="stable")[:3]
    assert out[0] == img
    assert [line.split()[1:3] for line in out[1:]] == [[f"class{c}", f"id{c}"] for c in want]
    p = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose([float(line.split()[-1]) for line in out[1:]], p[want], atol=5e-5)  # printed to 4 places
    assert cli.common.class_names(model) == [n for _, n in LABELS]


def test_a_new_zoo_line_is_benched_and_checked(new_model, capsys):
    model = cli.bench.bench_model("tiny_new", 48)
    assert model.name == "tiny_new" and model.input_size == (48, 48) and model.source == "torchvision"
    for args, message in [
        (["--source", "keras"], "--source keras has no tiny_new weights; tiny_new takes torchvision or mine"),
        (["--weights", "imagenet"], "--weights for tiny_new is 'mine-v1' or 'random', or a weight file's path"),
    ]:
        assert cli.main(["predict", "x.png", "--model", "tiny_new", *args]) == 2
        assert message in capsys.readouterr().err


def test_sources_and_weights_are_checked_before_the_model_loads(monkeypatch, tmp_path, capsys):
    """synthetic_vgg has no Keras weights (the --source was ignored); 'shipped' names synthetic_vgg's
    weights, not a file for vgg16; resnet50's torchvision releases are weights, not missing files."""
    monkeypatch.setattr(cli.common, "load_model", lambda a: pytest.fail("loaded the model"))
    img = picture(tmp_path / "a.png")
    for args, message in [
        (["--model", "synthetic_vgg", "--source", "keras"], "--source keras has no synthetic_vgg weights"),
        (["--model", "vgg16", "--weights", "shipped"], "--weights for vgg16 is 'imagenet' or 'random'"),
    ]:
        assert cli.main(["predict", img, *args]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err

    class Reached(jaxplain.JaxplainError):
        pass

    def reached(args):
        raise Reached(f"loading {args.model} {args.weights}")

    monkeypatch.setattr(cli.common, "load_model", reached)
    assert cli.main(["explain", img, "--model", "resnet50", "--weights", "IMAGENET1K_V1", "--out", str(tmp_path / "o")]) == 2
    assert "loading resnet50 IMAGENET1K_V1" in capsys.readouterr().err


def test_bench_size_of_a_fixed_size_model_fails_before_building(monkeypatch):
    fail = lambda *a, **k: pytest.fail("built the model")  # noqa: E731
    monkeypatch.setitem(zoo.ZOO, "synthetic_vgg", zoo.ZOO["synthetic_vgg"]._replace(build=fail))
    with pytest.raises(jaxplain.InputError, match="--size: synthetic_vgg takes its own input size only"):
        cli.bench.bench_model("synthetic_vgg", 32)


def test_every_zoo_line_builds_its_model():
    """Random weights for each line (the synthetic VGG: its shipped ones), its labels one per class."""
    for name in ("vgg11", "synthetic_vgg"):  # the big ones are built by their own tests
        e = zoo.ZOO[name]
        model = zoo.load(name, None if e.sources else "shipped")
        assert len(e.labels()) == num_classes(model, (*(model.input_size or (32, 32)), 3))
    assert set(zoo.ZOO) == {"vgg11", "vgg13", "vgg16", "vgg19", "resnet50", "vit_b16", "synthetic_vgg"}
    assert zoo.source_names() == ("keras", "torchvision", "timm", "google")


@pytest.fixture
def offline(monkeypatch):
    """A weights URL whose port refuses connections."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        monkeypatch.setenv("JAXPLAIN_WEIGHTS_URL", f"http://127.0.0.1:{s.getsockname()[1]}")
        yield


def test_offline_message_names_the_argument_of_the_caller(offline, tmp_path, capsys):
    with pytest.raises(jaxplain.DownloadError) as e:
        models.vgg11(weights="imagenet", source="torchvision")
    assert str(e.value).endswith("or pass the file's path as weights=") and "--weights" not in str(e.value)
    assert cli.main(["predict", picture(tmp_path / "a.png"), "--model", "vgg11", "--source", "torchvision"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "could not download vgg11-8a719046.pth" in err, err
    assert err.rstrip().endswith("or pass the file's path as --weights") and "weights=" not in err, err


def test_the_training_script_is_out_of_the_wheel():
    assert importlib.util.find_spec("jaxplain.models.train_synthetic") is None
    assert callable(importlib.import_module("benchmarks.train_synthetic").main)

