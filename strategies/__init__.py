"""Aggregation strategies and the array math behind them."""

from strategies.fedavg import FedAvg

__all__ = ["FedAvg"]
