"""Imports every module that registers gin configurables.

Gin can only bind a configurable after its module was imported, so the
entry points import this module before parsing any gin file.
"""

# pylint: disable=unused-import
from sutra_jax import languages
