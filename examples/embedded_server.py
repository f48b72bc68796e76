"""A small asyncio application with leptonrt's broker embedded in it.

It listens on 127.0.0.1:8765 for one-line requests and streams training progress back:

    python examples/embedded_server.py &
    printf 'train digits 5\\n' | nc 127.0.0.1 8765      # dataset spec, epochs
    printf 'jobs\\n' | nc 127.0.0.1 8765

Jobs from several clients are queued by the broker and run one after another. The broker
lives on this application's event loop: no signal handlers or loop policy are installed by
leptonrt; Ctrl-C here stops the server, and leaving the ``async with`` block stops the
running job's actors and frees its shared memory.
"""

import asyncio
import json

import leptonrt


async def handle(broker: leptonrt.Broker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    words = (await reader.readline()).decode(errors="replace").split()
    try:
        if words[:1] == ["train"] and len(words) in (2, 3):
            job = await broker.submit(leptonrt.TrainJob(dataset=words[1], epochs=int(words[2]) if len(words) == 3 else 5))
            writer.write(f"job {job.id} queued\n".encode())
            async for event in job.events():
                if isinstance(event, leptonrt.EpochEvent):
                    writer.write(f"epoch {event.epoch}/{event.epochs} test_acc {event.test_accuracy:.4f}\n".encode())
                    await writer.drain()
            writer.write((json.dumps(await job.result()) + "\n").encode())
        elif words == ["jobs"]:
            writer.write("".join(f"job {j.id} {j.state} {j.spec.dataset}\n" for j in broker.jobs()).encode())
        else:
            writer.write(b"usage: 'train SPEC [EPOCHS]' or 'jobs'\n")
    except (leptonrt.LeptonError, ValueError) as exc:
        writer.write(f"error: {exc}\n".encode())
    finally:
        await writer.drain()
        writer.close()


async def main() -> None:
    async with leptonrt.Broker(gpus="all", cpu_actors=None) as broker:
        server = await asyncio.start_server(lambda r, w: handle(broker, r, w), "127.0.0.1", 8765)
        async with server:
            print("listening on 127.0.0.1:8765")
            await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
