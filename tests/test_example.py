"""examples/embedded_server.py works as its docstring says, on a private unix socket."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embedded_server.py"


def ask(path: Path, line: str, timeout: float = 120) -> list[str]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(line.encode() + b"\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode().splitlines()


@pytest.mark.process
def test_the_embedded_server_trains_on_request_and_stops_cleanly(private_runtime_dir, no_leftovers):
    path = private_runtime_dir / "example.sock"
    # SIGABRT dumps the server's stacks, should it ever fail to stop
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, str(EXAMPLE)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        assert oct(path.parent.stat().st_mode & 0o777) == "0o700"
        lines = ask(path, "train digits 2")
        assert lines[0] == "job 1 queued"
        assert [line.split()[1] for line in lines[1:3]] == ["1/2", "2/2"]
        result = json.loads(lines[3])
        assert result["epochs"] == 2 and len(result["history_digest"]) == 64
        assert ask(path, "jobs") == ["job 1 done digits"]
        usage = ["usage: 'train SPEC [EPOCHS]', 'jobs' or 'log'"]
        assert ask(path, "fly me to the moon") == usage and ask(path, "train digits many") == usage
        # a client that hangs up mid-job: its job goes on, and the server says nothing of it
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
            s.sendall(b"train digits 3\n")
            assert s.recv(100).startswith(b"job 2 queued")
        client = subprocess.run([sys.executable, str(EXAMPLE), "ask", "jobs"], env=env, capture_output=True,
                                text=True, timeout=60)
        assert client.returncode == 0 and client.stdout.startswith("job 1 done digits\njob 2 ")
        deadline = time.monotonic() + 120
        while ask(path, "jobs")[-1] != "job 2 done digits":
            assert time.monotonic() < deadline, (ask(path, "jobs"), ask(path, "log"))
            time.sleep(0.2)
        assert "job 2 finished" in "\n".join(ask(path, "log"))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)
            out, _ = proc.communicate(timeout=30)
            pytest.fail(f"the server did not stop on SIGINT within 60 s:\n{out}")
    assert not path.exists()
    assert "Traceback" not in out
