"""How a candidate is scored: cost (MACs, parameters) and, later, accuracy and latency."""

from vitpareto.evaluators._cost import (
    analytic_macs,
    count_macs,
    count_params,
    exit_head_macs,
    mac_profile,
)

__all__ = ["analytic_macs", "count_macs", "count_params", "exit_head_macs", "mac_profile"]
