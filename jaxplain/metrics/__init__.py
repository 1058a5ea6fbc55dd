"""Metrics of explanations, each a pure function of ONE image, its target and its attribution,
run over a batch by ``jaxplain.evaluate`` (the same batching, jit, chunk loops and sharding as
``explain``). A metric returns a dict of arrays with at least ``"score"`` (a scalar per image).

    metric(apply, params, x [H, W, C], target, *, attribution [H, W, C] or [H, W], **settings) -> dict

- ``faithfulness``: deletion, insertion, region perturbation (AOPC), mu-fidelity.
- ``localisation``: pointing game, relevance mass and rank accuracy, against a ground-truth ``mask``.
- ``randomisation``: model parameter randomisation (staged: one run per set of randomised weights).
- ``robustness``: infidelity and max-sensitivity (Yeh et al. 2019, as captum.metrics).
- ``imputation``: ROAD (Rong et al. 2022), removal with noisy linear imputation.

The draws of the random metrics, for the image key ``jaxplain.evaluate_keys`` gives (so another
library can be handed exactly what a score was computed from): ``mu_fidelity_draws`` (subsets and
fill), ``sensitivity_noise`` (max_sensitivity), ``infidelity_perturbations``, ``road_noise``,
``randomised_params`` (model_randomisation's weights, from the key itself) and ``substrate``
(deletion's and region_perturbation's ``baseline="uniform"``).
"""

from .common import substrate as substrate
from .faithfulness import mu_fidelity_draws as mu_fidelity_draws
from .faithfulness import mu_fidelity_masks as mu_fidelity_masks
from .imputation import road_noise as road_noise
from .randomisation import randomised_params as randomised_params
from .robustness import infidelity_perturbations as infidelity_perturbations
from .robustness import sensitivity_noise as sensitivity_noise

__all__ = ["infidelity_perturbations", "mu_fidelity_draws", "mu_fidelity_masks", "randomised_params", "road_noise",
           "sensitivity_noise", "substrate"]
