"""Any JAX model as a jaxplain Model."""

from jaxplain.adapters.flax import from_flax as from_flax
