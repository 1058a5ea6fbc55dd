"""The label map is an argument of the compiled surrogate: one program serves every segmentation
of the same size and segment count."""

import numpy as np
import pytest

import jaxplain


def _compiles(run) -> tuple[object, int]:
    """``run()`` and the number of XLA compilations of ``explain``'s batched programs it caused."""
    from jax._src import dispatch, monitoring

    seen = []

    def listen(event, duration, **kw):
        if event == dispatch.BACKEND_COMPILE_EVENT and "batched" in str(kw.get("fun_name", "")):
            seen.append(kw["fun_name"])

    monitoring.register_event_duration_secs_listener(listen)
    try:
        return run(), len(seen)
    finally:
        monitoring.unregister_event_duration_listener(listen)


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
    first, compiled = _compiles(lambda: run(maps[0]))
    assert compiled >= 1  # the listener sees explain's programs
    outs = []
    for m in maps[1:]:
        out, compiles = _compiles(lambda m=m: run(m))
        assert compiles == 0
        outs.append(out)
    assert np.abs(outs[0] - first).max() > 1e-3 and np.abs(outs[1] - outs[0]).max() > 1e-3
