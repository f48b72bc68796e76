"""A spare's start-up work runs at the lowest priority, and the process comes back to its own."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux scheduling")

PROBE = r"""
import json, os, threading
from leptonrt.actors.idle import at_idle_priority, autogroup_nice
me = lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
before = {"group": autogroup_nice(), "thread": me()}
seen = {}
def work():
    seen.update(group=autogroup_nice(), thread=me())
    if os.environ.get("FAIL"):
        raise ValueError("the work failed")
try:
    at_idle_priority(work)
    error = None
except ValueError as exc:
    error = str(exc)
print(json.dumps({"before": before, "during": seen, "after": {"group": autogroup_nice(), "thread": me()},
                  "error": error}))
"""


def probe(fail=False):
    # a session of its own, as the supervisor starts actors: the group lowered is the probe's alone
    env = {"PATH": "/usr/bin:/bin", **({"FAIL": "1"} if fail else {})}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60,
                         start_new_session=True, env=env, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("fail", [False, True], ids=["work", "failing work"])
def test_the_work_runs_at_the_lowest_priority_and_the_process_gets_its_own_back(fail):
    seen = probe(fail)
    assert seen["during"]["thread"] == 19
    if seen["before"]["group"] is not None:   # a kernel with autogroup: the session's group too
        assert seen["during"]["group"] == 19
    assert seen["after"] == seen["before"]
    assert seen["error"] == ("the work failed" if fail else None)


def test_an_actor_process_gets_to_its_idle_start_up_before_importing_pytorch():
    # `python -m leptonrt.actors` imports leptonrt, then leptonrt.actors, then runs __main__:
    # none of that may import PyTorch, or a spare pays for it at normal priority
    code = "import sys, leptonrt, leptonrt.actors, leptonrt.actors.idle; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
