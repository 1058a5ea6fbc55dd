"""jaxplain: compiled, vectorized explanations for JAX image models."""

from jaxplain.errors import DownloadError as DownloadError
from jaxplain.errors import ImageError as ImageError
from jaxplain.errors import InputError as InputError
from jaxplain.errors import JaxplainError as JaxplainError
from jaxplain.errors import WeightsError as WeightsError
from jaxplain.explain import explain as explain
from jaxplain.explain import predict as predict
from jaxplain.methods.gradients import deconvnet as deconvnet
from jaxplain.methods.gradients import gradient as gradient
from jaxplain.methods.gradients import gradient_x_input as gradient_x_input
from jaxplain.methods.gradients import guided_backprop as guided_backprop
from jaxplain.methods.integrated import blur_ig as blur_ig
from jaxplain.methods.integrated import expected_gradients as expected_gradients
from jaxplain.methods.integrated import guided_ig as guided_ig
from jaxplain.methods.integrated import integrated_gradients as integrated_gradients
from jaxplain.methods.smooth import smoothgrad as smoothgrad
from jaxplain.methods.smooth import squaregrad as squaregrad
from jaxplain.methods.smooth import vargrad as vargrad
from jaxplain.reduce import reduce as reduce
from jaxplain.registry import METHODS as METHODS
from jaxplain.types import Model as Model

__all__ = [
    "METHODS",
    "DownloadError",
    "ImageError",
    "InputError",
    "JaxplainError",
    "Model",
    "WeightsError",
    "blur_ig",
    "deconvnet",
    "expected_gradients",
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
]
