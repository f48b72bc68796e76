"""What each ``leptonrt`` command does, once ``leptonrt.cli`` has parsed its command line:
``train`` (run a job here or submit it to a running broker) and ``serve`` (``up`` and the
commands that talk to a running broker). No PyTorch at import: the client's commands must
answer fast. uvloop is chosen here, for the commands' own loop only.
"""

from __future__ import annotations

import asyncio


def run_async(coro):
    """Run ``coro`` on uvloop when it is installed, else on asyncio's default loop."""
    try:
        import uvloop
        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)
