"""leptonrt: exact synchronous data-parallel training across every device you have."""

from .config import TrainJob
from .errors import (ConfigError, DataError, InternalError, JobFailed, LeptonError, NoDeviceError,
                     ProtocolError, UsageError)

__all__ = sorted([
    "ConfigError",
    "DataError",
    "InternalError",
    "JobFailed",
    "LeptonError",
    "NoDeviceError",
    "ProtocolError",
    "TrainJob",
    "UsageError",
])
__version__ = "0.1.0"
