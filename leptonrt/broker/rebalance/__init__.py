"""The rebalancer as a statistical model: per-actor cost estimators, one change test, one rule.

Pure: imports neither zmq, asyncio, torch nor time. ``Rebalancer`` is what the broker calls;
``simulate`` judges it against an oracle on a simulated cluster with known truth.
"""

from .config import RebalanceConfig
from .model import CollectiveModel, CostModel
from .policy import Move, RankStatistics, RebalanceStatistics, Rebalancer, Regroup

__all__ = ["CollectiveModel", "CostModel", "Move", "RankStatistics", "RebalanceConfig", "RebalanceStatistics",
           "Rebalancer", "Regroup"]
