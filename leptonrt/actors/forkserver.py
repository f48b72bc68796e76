"""The fork server: one warm process per broker, which every actor is forked from.

An actor spends seconds starting before it trains a step: PyTorch's import (and, where
the fused optimizer kernels are missing, ``torch.optim``'s import of ``torch._dynamo``).
Each actor started with its own interpreter pays it, all of them at once, beside the broker
doing its own start-up: on a small machine start-up took longer than a short job. The
server pays it once and forks each actor from there, ready in milliseconds, as the
broker asks (``forked.ForkServer`` is the broker's side; ``forkwire`` the records).

    python -m leptonrt.actors.forkserver --connect ipc://RUN_DIR/broker.sock --parent-pid BROKER

Why a server of our own rather than ``multiprocessing``'s 'forkserver': that one is a
single server per interpreter, shared by every pool (and by the host application of an
embedded broker), started with the environment of its first use; it sends its work as
pickles, and its children run multiprocessing's bootstrap. Ours is one per pool, its
children are actors from the first instruction, and everything on its pipes is checked
msgpack.

What a forked actor gets, as an actor started with its own interpreter does: a session
of its own; stdout and stderr in its log file; its own environment (set before anything
reads it: CUDA_VISIBLE_DEVICES before CUDA starts, which it only does in the child);
its cores; a parent-death signal (the server's death: the server dies with the broker).
The server reaps every child and reports its exit status to the broker, and signals a
child only while it is unreaped, so a pid is never mistaken for another process's.

Nothing is shared that must not be: the server runs one thread, opens no socket and
creates no ZeroMQ context (an actor makes its own, after the fork), and NEVER touches
``torch.cuda``: CUDA cannot be used in a forked child once its parent initialised it.
"""

from __future__ import annotations

import argparse
import gc
import os
import select
import signal
import sys
import traceback

from . import forkwire
from .spawn import pin
from .tether import Tether

READ_BYTES = 1 << 16


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m leptonrt.actors.forkserver",
                                description="forks a leptonrt broker's actors (started by the broker)")
    p.add_argument("--connect", required=True)
    p.add_argument("--parent-pid", type=int, required=True)
    return p.parse_args(argv)


class Server:
    """Takes requests from ``requests`` (a pipe from the broker), forks, signals and
    pins children, and writes what became of them to ``reports``."""

    def __init__(self, tether: Tether, requests: int, reports: int) -> None:
        self.tether, self.pid = tether, os.getpid()
        self.requests, self.reports = requests, reports
        self.reader = forkwire.Reader(forkwire.REQUESTS)
        self.pids: dict[int, int] = {}    # n -> pid, until reaped
        self.numbers: dict[int, int] = {}  # pid -> n
        self.wake_r, self.wake_w = os.pipe()

    def serve(self) -> None:
        """Until the broker closes the requests pipe (or stops reading reports)."""
        for fd in (self.wake_r, self.wake_w):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(self.wake_w)   # a child's exit wakes the select below
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        try:
            while True:
                ready, _, _ = select.select([self.requests, self.wake_r], [], [])
                if self.wake_r in ready:
                    self._drain_wakeups()
                self._reap()
                if self.requests in ready:
                    data = os.read(self.requests, READ_BYTES)
                    if not data:
                        return
                    for request in self.reader.feed(data):
                        self._handle(request)
        except BrokenPipeError:
            return   # the broker stopped reading: it is gone
        finally:
            self._kill_all()

    def _handle(self, request) -> None:
        if isinstance(request, forkwire.Fork):
            pid = self._fork(request)
            self.pids[request.n], self.numbers[pid] = pid, request.n
            self._report(forkwire.Forked(n=request.n, pid=pid))
        elif isinstance(request, forkwire.Signal) and request.n in self.pids:
            os.kill(self.pids[request.n], request.signum)   # unreaped: still our child, never another's
        elif isinstance(request, forkwire.Pin) and request.n in self.pids:
            pin(self.pids[request.n], request.cores)

    def _fork(self, request) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = self._become_actor(request)
            except SystemExit as exc:   # argparse's, say
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        return pid

    def _become_actor(self, request) -> int:
        """In the child: leave the server behind, take the actor's settings, run it."""
        tether = Tether(self.tether.broker_pid, self.pid, self.tether.connect)
        tether.hold()   # first: the server may die any time
        os.setsid()
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in (self.wake_r, self.wake_w, self.requests, self.reports):
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        log = os.open(request.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        os.environ.update(item.split("=", 1) for item in request.env)
        for name in request.unset:
            os.environ.pop(name, None)
        if request.cores:
            os.sched_setaffinity(0, request.cores)   # one thread yet: the ones it starts inherit it
        from .main import main
        try:
            return main(["--connect", self.tether.connect, "--actor-id", request.actor_id, "--device", request.device,
                         "--threads", str(request.threads), "--parent-pid", str(self.tether.broker_pid)], tether)
        finally:
            _finish_sends()

    def _report(self, record) -> None:
        frame = forkwire.encode(record)
        while frame:
            frame = frame[os.write(self.reports, frame):]

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, READ_BYTES):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        """Report every child that has ended."""
        while self.numbers:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                return
            n = self.numbers.pop(pid)
            del self.pids[n]
            self._report(forkwire.Exited(n=n, code=os.waitstatus_to_exitcode(status)))

    def _kill_all(self) -> None:
        """The broker let us go: no child outlives the server (there are none after a
        clean close; after a broken one, these would be nobody's)."""
        for pid in self.numbers:
            os.kill(pid, signal.SIGKILL)
        for pid in self.numbers:
            os.waitpid(pid, 0)


def _finish_sends() -> None:
    """A forked child ends with ``os._exit``, so nothing of the server's runs in it; end
    its ZeroMQ context first, so that its last messages (a Failure, say) leave."""
    import zmq
    zmq.Context.instance().destroy()


def _get_ready() -> None:
    """Pay for what every actor needs, once: PyTorch, the actor's code, the optimizers'
    first construction. On the CPU only: never torch.cuda here (see the module's docstring)."""
    import torch

    from .main import _warm_up
    _warm_up(torch.device("cpu"))
    if torch.cuda.is_initialized():   # reads a flag, starts nothing; forked GPU actors would fail
        raise RuntimeError("CUDA was initialised in the fork server; its actors could not use it")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    tether = Tether(args.parent_pid, args.parent_pid, args.connect)
    tether.hold()   # first, before seconds of imports: a broker that dies meanwhile takes us along
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the broker decides when we stop
    # the pipes are ours alone: a stray print of a library goes to the log instead
    requests, reports = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    _get_ready()
    gc.freeze()   # what is loaded by now stays out of the children's collections: no copy of its pages
    Server(tether, requests, reports).serve()
    sys.stderr.flush()
    os._exit(0)   # nothing to finalise: no file, no socket; PyTorch's teardown would take a second


if __name__ == "__main__":
    main()
