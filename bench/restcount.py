"""A counting TCP relay in front of the state aggregator: every process reaches the aggregator
through it (``STATE_AGGREGATOR_URL``), and it counts the HTTP requests by method and path, so
the harness can say how many REST calls the bridge makes per state cycle. It adds one local hop
to each aggregator call, so it is used only in the scale section."""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

from .mqttload import CTX

REQUEST = re.compile(rb"(GET|POST|PUT|DELETE|PATCH) (/[^ ?]*)\S* HTTP/1\.[01]\r\n")
TAIL = 256


def _main(listen_port: int, target_port: int, conn: Connection) -> None:
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, count: bool) -> None:
        tail = b""
        try:
            while data := await src.read(65536):
                if count:
                    buf = tail + data
                    with lock:
                        for m in REQUEST.finditer(buf):
                            if m.end() > len(tail):
                                path = m.group(2).decode()
                                # /device/<id>/... counts as one path
                                path = re.sub(r"^/(device|sensor)/[^/]+", r"/\1/{id}", path)
                                counts[f"{m.group(1).decode()} {path}"] += 1
                    tail = buf[-TAIL:]
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            dst.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, up_w, True), pump(up_r, writer, False))

    def control() -> None:
        while True:
            try:
                cmd = conn.recv()
            except EOFError:
                return
            with lock:
                conn.send(dict(counts))
            if cmd == "stop":
                return

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
        conn.send("ready")
        async with server:
            await server.serve_forever()

    threading.Thread(target=control, daemon=True).start()
    asyncio.run(serve())


class RequestCounter:
    def __init__(self, listen_port: int, target_port: int) -> None:
        self._conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=_main, args=(listen_port, target_port, child), daemon=True)
        self.proc.start()
        if not self._conn.poll(20):
            raise TimeoutError("the counting relay did not start")
        self._conn.recv()

    def counts(self) -> dict[str, int]:
        self._conn.send("counts")
        result: dict[str, int] = self._conn.recv()
        return result

    def close(self) -> None:
        self.proc.terminate()
        self.proc.join(5)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, Any]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
