"""leptonrt: exact synchronous data-parallel training across every device you have."""

from .broker.embedded import Broker, BrokerClosed, Job
from .broker.run import EpochEvent, SplitChanged
from .config import TrainJob
from .errors import (ConfigError, DataError, InternalError, JobFailed, LeptonError, NoDeviceError,
                     ProtocolError, UsageError)

__all__ = [
    "Broker",
    "BrokerClosed",
    "ConfigError",
    "DataError",
    "EpochEvent",
    "InternalError",
    "Job",
    "JobFailed",
    "LeptonError",
    "NoDeviceError",
    "ProtocolError",
    "SplitChanged",
    "TrainJob",
    "UsageError",
]
__version__ = "0.1.0"
