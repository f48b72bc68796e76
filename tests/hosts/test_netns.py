"""The namespace fixture itself: the hosts see each other where they should, and only there."""

import subprocess
import sys

import pytest

from tests.hosts.conftest import PRIVATE, PUBLIC

pytestmark = pytest.mark.hosts

LISTEN = "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',7421))\ns.listen()\ntime.sleep(60)"


def test_the_public_segment_joins_all_three_and_the_private_link_only_two(hosts):
    server = hosts.popen("head", sys.executable, "-c", LISTEN)
    try:
        assert any(port == 7421 for _a, port in _wait_listening(hosts))
        assert hosts.connects("agent", PUBLIC["head"], 7421)
        assert hosts.connects("third", PUBLIC["head"], 7421)
        assert hosts.connects("agent", PRIVATE["head"], 7421)
        assert not hosts.connects("third", PRIVATE["head"], 7421, timeout=1.0)
    finally:
        server.kill()
        server.wait()


def test_the_addresses_exist_only_inside_the_namespaces(hosts):
    mine = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
    assert "10.231." not in mine
    assert PUBLIC["head"] in hosts.run("head", "ip", "-o", "addr").stdout


def _wait_listening(hosts):
    import time
    for _ in range(100):
        found = hosts.listening("head")
        if found:
            return found
        time.sleep(0.05)
    return []
