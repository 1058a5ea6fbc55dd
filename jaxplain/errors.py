"""The exceptions jaxplain raises; every one is a JaxplainError."""


class JaxplainError(Exception):
    """Base class of every error jaxplain raises on purpose."""


class InputError(JaxplainError, ValueError):
    """An argument is wrong: shape, range, name, or a missing setting."""


class ImageError(JaxplainError):
    """An image file cannot be read or decoded."""


class WeightsError(JaxplainError):
    """A weight file is missing, corrupt, of an unknown format or of another architecture."""


class DownloadError(WeightsError):
    """A weight file could not be fetched or did not match its published hash."""


class CostWarning(UserWarning):
    """A setting will make a method far more expensive than usual; the message says how much."""


class InputWarning(UserWarning):
    """An input is used but looks wrong: a picture far from square or of several frames, images
    whose values are far from what the model's preprocessing gives."""


class ToleranceWarning(UserWarning):
    """Integrated gradients to a ``tolerance`` stopped at its ``max_steps`` above the tolerance."""


class MissingDependency(JaxplainError, ImportError):
    """An optional extra a setting needs is not installed; the message names the pip command."""
