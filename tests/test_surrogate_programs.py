"""The label map is an argument of the compiled surrogate: one program serves every segmentation
of the same size and segment count."""

import numpy as np
import pytest

import jaxplain
from tests.conftest import compiles_of


@pytest.mark.parametrize("name, settings", [("feature_ablation", {}), ("kernel_shap", dict(exact=True))])
def test_one_program_for_every_label_map(tiny_model, name, settings):
    """Three different label maps with 6 segments: the second and third reuse the first's
    program (no compilation), and their results differ (the labels are not baked in)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
    maps = [rng.integers(0, 6, (32, 32)) for _ in range(3)]
    for m in maps:
        m[:6, 0] = np.arange(6)  # every label present
    run = lambda m: np.asarray(jaxplain.explain(tiny_model, x, [1, 2], name, segments=m, chunk=64, **settings))  # noqa: E731
    first, compiled = compiles_of("batched", lambda: run(maps[0]))
    assert compiled >= 1  # the listener sees explain's programs
    outs = []
    for m in maps[1:]:
        out, compiles = compiles_of("batched", lambda m=m: run(m))
        assert compiles == 0
        outs.append(out)
    assert np.abs(outs[0] - first).max() > 1e-3 and np.abs(outs[1] - outs[0]).max() > 1e-3
