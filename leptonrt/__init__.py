"""leptonrt: exact synchronous data-parallel training across every device you have."""

from .broker.embedded import Broker, BrokerClosed, Job
from .broker.run import ActorLost, EpochEvent, Recovered, SplitChanged
from .broker.stats import Snapshot
from .client import RemoteBroker, RemoteJob, RemoteJobFailed, connect
from .config import TrainJob
from .errors import (ConfigError, DataError, InternalError, Interrupted, JobFailed, LeptonError, NoDeviceError,
                     ProtocolError, UsageError)

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
