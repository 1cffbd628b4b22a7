"""Imports every module that registers gin configurables.

Gin can only bind a configurable after its module was imported, so the
entry points import this module before parsing any gin file.
"""

# pylint: disable=unused-import
from sutra_jax import languages
from sutra_jax.training import guard
from sutra_jax.training import losses
from sutra_jax.training import optimizers
from sutra_jax.training import phases
from sutra_jax.data import mixtures
from sutra_jax.training import trainer
from sutra_jax.models import config as _model_config
from sutra_jax.models import flops
from sutra_jax import partitioning
from sutra_jax import distributed
