"""Errors leptonrt raises, and the exit code each one maps to.

::

    LeptonError                  base; ``exit_code`` is what the CLI exits with
    ├── UsageError        (2)    the command line is malformed
    ├── ConfigError       (78)   a setting is out of range or contradicts another
    ├── DataError         (66)   a dataset spec or file is unusable
    ├── NoDeviceError     (69)   nothing to connect to, or no device to run on
    ├── ProtocolError     (70)   a peer sent a message that is not valid (its fault)
    ├── JobFailed         (1)    training started but could not finish
    │   └── RestartBudgetExceeded (70)  actors were lost more often than --max-restarts allows
    ├── JobCancelled      (3)    somebody cancelled the job (``leptonrt jobs cancel``)
    ├── Interrupted       (130)  stopped on request at a step boundary
    └── InternalError     (70)   a bug of ours, or a dependency broke

A ``ProtocolError`` is about bytes that came from outside; an ``InternalError`` means
we did something illegal ourselves. The two are kept apart so a bad peer is counted
and dropped, while a bug of ours is loud.
"""

from __future__ import annotations


class LeptonError(Exception):
    """Base of every error leptonrt raises on purpose."""

    exit_code = 70


class UsageError(LeptonError):
    """The command line is malformed."""

    exit_code = 2


class ConfigError(LeptonError):
    """A setting is out of range, or contradicts another setting."""

    exit_code = 78


class DataError(LeptonError):
    """A dataset spec or file cannot be used; the message names the file and the problem."""

    exit_code = 66


class NoDeviceError(LeptonError):
    """Nothing is listening at an address, or no device matches the selection."""

    exit_code = 69


class ProtocolError(LeptonError):
    """A message from a peer is malformed, of an unknown version or kind, or out of range."""

    exit_code = 70


class JobFailed(LeptonError):
    """A job started but could not finish (an actor failed, a peer was lost)."""

    exit_code = 1


class RestartBudgetExceeded(JobFailed):
    """Actors were lost more often than the restart budget allows; the report names each."""

    exit_code = 70


class JobCancelled(LeptonError):
    """The job was cancelled on request before it could finish; nothing is wrong with it.
    Its own exit code, so that a script can tell it from a failure (1) or a closed broker (75)."""

    exit_code = 3


class InternalError(LeptonError):
    """A bug of ours: a state transition we never meant to allow."""

    exit_code = 70


class Interrupted(LeptonError):
    """Stopped on request (Ctrl-C, SIGTERM, a closing broker) at a step boundary."""

    exit_code = 130
