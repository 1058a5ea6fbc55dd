"""jaxplain: compiled, vectorized explanations for JAX image models."""

from jaxplain.errors import DownloadError as DownloadError
from jaxplain.errors import ImageError as ImageError
from jaxplain.errors import InputError as InputError
from jaxplain.errors import JaxplainError as JaxplainError
from jaxplain.errors import WeightsError as WeightsError
from jaxplain.types import Model as Model

__all__ = [
    "DownloadError",
    "ImageError",
    "InputError",
    "JaxplainError",
    "Model",
    "WeightsError",
]
