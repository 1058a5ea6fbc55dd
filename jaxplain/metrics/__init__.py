"""Metrics of explanations, each a pure function of ONE image, its target and its attribution,
run over a batch by ``jaxplain.evaluate`` (the same batching, jit, chunk loops and sharding as
``explain``). A metric returns a dict of arrays with at least ``"score"`` (a scalar per image).

    metric(apply, params, x [H, W, C], target, *, attribution [H, W, C] or [H, W], **settings) -> dict

- ``faithfulness``: deletion, insertion, region perturbation (AOPC), mu-fidelity.
- ``localisation``: pointing game, relevance mass and rank accuracy, against a ground-truth ``mask``.
- ``randomisation``: model parameter randomisation (staged: one run per set of randomised weights).
- ``robustness``: infidelity and max-sensitivity (Yeh et al. 2019, as captum.metrics).
- ``imputation``: ROAD (Rong et al. 2022), removal with noisy linear imputation.
"""
