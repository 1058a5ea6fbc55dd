"""jaxplain: compiled, vectorized explanations for JAX image models."""

from jaxplain import distributed as distributed
from jaxplain.adapters.equinox import from_equinox as from_equinox
from jaxplain.adapters.flax import from_flax as from_flax
from jaxplain.adapters.keras import from_keras as from_keras
from jaxplain.layer_outputs import activations as activations
from jaxplain.layer_outputs import channel_means as channel_means
from jaxplain.layer_outputs import top_channels as top_channels
from jaxplain.errors import CostWarning as CostWarning
from jaxplain.errors import DownloadError as DownloadError
from jaxplain.errors import ImageError as ImageError
from jaxplain.errors import InputError as InputError
from jaxplain.errors import InputWarning as InputWarning
from jaxplain.errors import JaxplainError as JaxplainError
from jaxplain.errors import MissingDependency as MissingDependency
from jaxplain.errors import ToleranceWarning as ToleranceWarning
from jaxplain.errors import WeightsError as WeightsError
from jaxplain.engine.runner import explain as explain
from jaxplain.engine.evaluation import evaluate as evaluate
from jaxplain.engine.evaluation import evaluate_keys as evaluate_keys
from jaxplain.engine.runner import predict as predict
from jaxplain.features import visualize_features as visualize_features
from jaxplain.methods.attention import attention_rollout as attention_rollout
from jaxplain.methods.attention import transformer_attribution as transformer_attribution
from jaxplain.methods.cam import eigen_cam as eigen_cam
from jaxplain.methods.cam import grad_cam as grad_cam
from jaxplain.methods.cam import grad_cam_pp as grad_cam_pp
from jaxplain.methods.cam import guided_grad_cam as guided_grad_cam
from jaxplain.methods.cam import hires_cam as hires_cam
from jaxplain.methods.cam import layer_cam as layer_cam
from jaxplain.methods.cam import score_cam as score_cam
from jaxplain.methods.cam import xgrad_cam as xgrad_cam
from jaxplain.methods.gradients import deconvnet as deconvnet
from jaxplain.methods.gradients import gradient as gradient
from jaxplain.methods.gradients import gradient_x_input as gradient_x_input
from jaxplain.methods.gradients import guided_backprop as guided_backprop
from jaxplain.methods.integrated import blur_ig as blur_ig
from jaxplain.methods.integrated import expected_gradients as expected_gradients
from jaxplain.methods.integrated import guided_ig as guided_ig
from jaxplain.methods.integrated import integrated_gradients as integrated_gradients
from jaxplain.methods.layer import layer_gradient_x_activation as layer_gradient_x_activation
from jaxplain.methods.layer import layer_integrated_gradients as layer_integrated_gradients
from jaxplain.methods.layer import neuron_gradient as neuron_gradient
from jaxplain.methods.layer import neuron_integrated_gradients as neuron_integrated_gradients
from jaxplain.methods.perturb import occlusion as occlusion
from jaxplain.methods.perturb import rise as rise
from jaxplain.methods.perturb import rise_masks as rise_masks
from jaxplain.methods.smooth import smoothgrad as smoothgrad
from jaxplain.methods.surrogate import Fit as Fit
from jaxplain.methods.surrogate import feature_ablation as feature_ablation
from jaxplain.methods.surrogate import kernel_shap as kernel_shap
from jaxplain.methods.surrogate import lime as lime
from jaxplain.methods.xrai import xrai as xrai
from jaxplain.methods.xrai import Xrai as Xrai
from jaxplain.segmentation import segments as segments
from jaxplain.methods.smooth import squaregrad as squaregrad
from jaxplain.methods.smooth import vargrad as vargrad
from jaxplain.engine.precision import with_precision as with_precision
from jaxplain.xla_cache import compile_cache as compile_cache
from jaxplain.reductions import reduce as reduce
from jaxplain.registry import METHODS as METHODS
from jaxplain.registry import METRICS as METRICS
from jaxplain.types import Model as Model
from jaxplain import io as io  # the submodules the README uses as jaxplain.<name>
from jaxplain import segmentation as segmentation
from jaxplain import synthetic as synthetic
from jaxplain import viz as viz

__all__ = [
    "METHODS",
    "METRICS",
    "activations",
    "attention_rollout",
    "transformer_attribution",
    "channel_means",
    "compile_cache",
    "eigen_cam",
    "feature_ablation",
    "from_equinox",
    "from_flax",
    "from_keras",
    "kernel_shap",
    "lime",
    "segments",
    "grad_cam",
    "grad_cam_pp",
    "guided_grad_cam",
    "hires_cam",
    "layer_cam",
    "layer_gradient_x_activation",
    "layer_integrated_gradients",
    "neuron_gradient",
    "neuron_integrated_gradients",
    "occlusion",
    "rise",
    "rise_masks",
    "score_cam",
    "top_channels",
    "visualize_features",
    "xgrad_cam",
    "distributed",
    "CostWarning",
    "DownloadError",
    "ImageError",
    "InputError",
    "InputWarning",
    "JaxplainError",
    "MissingDependency",
    "Fit",
    "Xrai",
    "ToleranceWarning",
    "Model",
    "WeightsError",
    "blur_ig",
    "deconvnet",
    "expected_gradients",
    "evaluate",
    "evaluate_keys",
    "explain",
    "gradient",
    "gradient_x_input",
    "guided_backprop",
    "guided_ig",
    "integrated_gradients",
    "predict",
    "reduce",
    "smoothgrad",
    "squaregrad",
    "vargrad",
    "xrai",
    "with_precision",
]
