"""A small asyncio application with leptonrt's broker embedded in it.

It listens on a unix socket in your private runtime directory (mode 0700: only you can
reach it; a TCP port would be open to every local user) for one-line requests, and streams
training progress back:

    python examples/embedded_server.py &
    python examples/embedded_server.py ask 'train digits 5'    # a client: dataset spec, epochs
    python examples/embedded_server.py ask jobs
    python examples/embedded_server.py ask log                  # what the broker did lately

(``nc -U PATH`` works as a client too, where it is installed.)

Jobs from several clients are queued by the broker and run one after another. The broker
lives on this application's event loop: no signal handlers or loop policy are installed by
leptonrt; Ctrl-C here stops the server, and leaving the ``async with`` block stops the
running job's actors and frees its shared memory.
"""

import asyncio
import json
import socket
import sys

import leptonrt
from leptonrt.broker.address import runtime_dir


def socket_path():
    """Where the server listens: in the user's private runtime directory."""
    return runtime_dir() / "example.sock"


USAGE = b"usage: 'train SPEC [EPOCHS]', 'jobs' or 'log'\n"


async def handle(broker: leptonrt.Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        words = (await reader.readline()).decode(errors="replace").split()
        if words[:1] == ["train"] and len(words) in (2, 3):
            if len(words) == 3 and not words[2].isdigit():
                writer.write(USAGE)
                return
            job = await broker.submit(leptonrt.TrainJob(dataset=words[1], epochs=int(words[2]) if len(words) == 3 else 5))
            writer.write(f"job {job.id} queued\n".encode())
            async for event in job.events():
                if isinstance(event, leptonrt.EpochEvent):
                    writer.write(f"epoch {event.epoch}/{event.epochs} test_acc {event.test_accuracy:.4f}\n".encode())
                    await writer.drain()
            writer.write((json.dumps(await job.result()) + "\n").encode())
        elif words == ["jobs"]:
            writer.write("".join(f"job {j.id} {j.state} {j.spec.dataset}\n" for j in broker.jobs()).encode())
        elif words == ["log"]:
            writer.write("".join(f"{event.text}\n" for event in broker.log).encode())
        else:
            writer.write(USAGE)
    except leptonrt.LeptonError as exc:
        writer.write(f"error: {exc}\n".encode())
    except ConnectionError:
        pass   # the client went away; its job, if any, goes on
    finally:
        try:
            await writer.drain()
            writer.close()
        except ConnectionError:
            pass


async def main() -> None:
    async with leptonrt.Broker(gpus="all", cpu_actors=None) as broker:
        path = socket_path()
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(lambda r, w: handle(broker, r, w), path)
        try:
            async with server:
                print(f"listening on {path}")
                await server.serve_forever()
        finally:
            path.unlink(missing_ok=True)


def ask(line: str) -> None:
    """The client: send one request, print what comes back until the server hangs up."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(socket_path()))
        s.sendall(line.encode() + b"\n")
        for reply in s.makefile("rb"):
            print(reply.decode(errors="replace"), end="", flush=True)


if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["ask"]:
            ask(" ".join(sys.argv[2:]))
        else:
            asyncio.run(main())
    except KeyboardInterrupt:
        pass
    except (FileNotFoundError, ConnectionRefusedError):
        sys.exit("no example server is listening: start one with `python examples/embedded_server.py`")
