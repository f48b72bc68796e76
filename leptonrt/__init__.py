"""leptonrt: exact synchronous data-parallel training across every device you have.

The public names load on first use, so that a process importing one submodule (an actor
starting, say) does not pay for PyTorch and the broker before it wants them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOMES = {
    "Broker": ".broker.embedded", "BrokerClosed": ".broker.embedded", "Job": ".broker.embedded",
    "ActorLost": ".broker.events", "EpochEvent": ".broker.events", "Recovered": ".broker.events",
    "SplitChanged": ".broker.events",
    "Snapshot": ".broker.stats",
    "RemoteBroker": ".client", "RemoteJob": ".client", "RemoteJobFailed": ".client", "connect": ".client",
    "TrainJob": ".config",
    "ConfigError": ".errors", "DataError": ".errors", "InternalError": ".errors", "Interrupted": ".errors",
    "JobCancelled": ".errors", "JobFailed": ".errors", "LeptonError": ".errors", "NoDeviceError": ".errors",
    "ProtocolError": ".errors",
    "UsageError": ".errors",
}

__all__ = [
    "ActorLost",
    "Broker",
    "BrokerClosed",
    "ConfigError",
    "DataError",
    "EpochEvent",
    "InternalError",
    "Interrupted",
    "Job",
    "JobCancelled",
    "JobFailed",
    "LeptonError",
    "NoDeviceError",
    "ProtocolError",
    "Recovered",
    "RemoteBroker",
    "RemoteJob",
    "RemoteJobFailed",
    "Snapshot",
    "SplitChanged",
    "TrainJob",
    "UsageError",
    "connect",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'leptonrt' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from .broker.embedded import Broker, BrokerClosed, Job
    from .broker.events import ActorLost, EpochEvent, Recovered, SplitChanged
    from .broker.stats import Snapshot
    from .client import RemoteBroker, RemoteJob, RemoteJobFailed, connect
    from .config import TrainJob
    from .errors import (ConfigError, DataError, InternalError, Interrupted, JobCancelled, JobFailed, LeptonError,
                         NoDeviceError, ProtocolError, UsageError)
