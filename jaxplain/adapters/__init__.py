"""Any JAX model as a jaxplain Model."""

from jaxplain.adapters.equinox import from_equinox as from_equinox
from jaxplain.adapters.flax import from_flax as from_flax
from jaxplain.adapters.keras import from_keras as from_keras
