"""Lifecycles as tables, after h11's ``_state.py``: a lifecycle is a set of states, a set of
events, and a table of the transitions allowed; ``apply`` is the only way to move, and an
illegal move is our bug, an ``InternalError`` naming the role, the state and the event.
The broker's job and actor slots (``broker.lifecycle``) and the host agent
(``actors.agentcore``) are tables of this kind."""

from __future__ import annotations

from enum import Enum
from typing import Generic, TypeVar

from .errors import InternalError

S = TypeVar("S", bound=Enum)


class Table(Generic[S]):
    """The transitions one role allows: (state, event) -> next state."""

    def __init__(self, role: str, transitions: dict[tuple[S, str], S]) -> None:
        self.role, self.transitions = role, dict(transitions)

    def apply(self, state: S, event: str) -> S:
        """The state after ``event`` in ``state``; InternalError if the table does not allow it."""
        try:
            return self.transitions[state, event]
        except KeyError:
            raise InternalError(f"{self.role}: event {event!r} is not allowed in state {state.value!r}") from None

    def allows(self, state: S, event: str) -> bool:
        return (state, event) in self.transitions
