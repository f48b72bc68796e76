"""The rebalancer as a statistical model: per-actor cost estimators, one change test, one rule.

Pure: imports neither zmq, asyncio, torch nor time. ``Rebalancer`` is what the broker calls;
``simulate`` judges it against an oracle on a simulated cluster with known truth.
"""

from .config import RebalanceConfig
from .model import CollectiveModel, CostModel
from .policy import Cores, Move, RankStatistics, RebalanceStatistics, Rebalancer, Regroup

__all__ = ["CollectiveModel", "CostModel", "Cores", "Move", "RankStatistics", "RebalanceConfig", "RebalanceStatistics",
           "Rebalancer", "Regroup"]
