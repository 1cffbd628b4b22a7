"""Mixture of experts of the concept core: router, dispatch strategies, layer.

See `layer.py` for the layer and how a dispatch strategy is chosen.
"""

from sutra_jax.models.config import CHOICES
from sutra_jax.models.moe.layer import MoE
from sutra_jax.models.moe.router import (RouterOutput, expert_load,
                                         expert_slot_counts,
                                         load_balancing_loss, route_top_k,
                                         router_z_loss)

DISPATCH_STRATEGIES = CHOICES["moe_dispatch"]

__all__ = ["MoE", "RouterOutput", "expert_load", "expert_slot_counts",
           "load_balancing_loss", "route_top_k", "router_z_loss",
           "DISPATCH_STRATEGIES"]
