"""A loopback TCP proxy that tests use to break the connection between initiator and target.

The proxy runs trio in its own thread, so synchronous tests drive it with plain method
calls: :meth:`FaultProxy.cut` closes every connection (optionally in the middle of a PDU,
after forwarding only part of the next chunk), :meth:`stall` stops forwarding for a while
without closing anything, and :attr:`delay` adds latency to every chunk.  It knows nothing
of iSCSI: a cut at an arbitrary byte offset is what a real network failure looks like.

Run it by hand for longer experiments::

    python -m tests.faults.proxy --listen 3261 --upstream 127.0.0.1:3260 --cut-every 3
"""

from __future__ import annotations

import argparse
import contextlib
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import trio

CHUNK = 256 << 10


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int = 0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = 0.0
        self.cuts = 0
        self.connections = 0
        self._listen_port = listen_port
        self._scopes: set[trio.CancelScope] = set()
        self._truncate = False
        self._resume = trio.Event()
        self._resume.set()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self.port = 0

    # -- control, from any thread --------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")
        return self

    def close(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._call(self._stop.set)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cut(self, mid_pdu: bool = False) -> None:
        """Close every open connection now; with ``mid_pdu``, wait for the next chunk
        to pass in either direction, forward only a random part of it, then close."""
        if mid_pdu:
            self._call(self._arm_truncate)
        else:
            self._call(self._cut_all)

    def stall(self, seconds: float) -> None:
        """Stop forwarding in both directions for ``seconds``, keeping connections open."""
        self._call(self._stall, seconds)

    @contextlib.contextmanager
    def repeating(self, every: float, steps: Sequence[Callable[[], object]]) -> Iterator[None]:
        """Inside the block, run ``steps`` in turn, one every ``every`` seconds, from a
        background thread (e.g. ``[proxy.cut, lambda: proxy.cut(mid_pdu=True)]``)."""
        done = threading.Event()

        def loop() -> None:
            n = 0
            while not done.wait(every):
                steps[n % len(steps)]()
                n += 1

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join()

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        assert self._token is not None
        trio.from_thread.run_sync(fn, *args, trio_token=self._token)

    # -- inside the trio thread ----------------------------------------------------------

    def _cut_all(self) -> None:
        if self._scopes:
            self.cuts += 1
        for scope in list(self._scopes):
            scope.cancel()

    def _arm_truncate(self) -> None:
        self._truncate = True

    def _stall(self, seconds: float) -> None:
        self._resume = trio.Event()
        resume = self._resume
        assert self._nursery is not None

        async def later() -> None:
            await trio.sleep(seconds)
            resume.set()

        self._nursery.start_soon(later)

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        listeners = await trio.open_tcp_listeners(self._listen_port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            self._nursery: trio.Nursery | None = nursery
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        try:
            server = await trio.open_tcp_stream(*self.upstream)
        except OSError:
            await client.aclose()
            return
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                    nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
            finally:
                self._scopes.discard(scope)
        for stream in (client, server):
            with trio.CancelScope(shield=True):
                await _abort(stream)

    async def _pump(self, src: trio.SocketStream, dst: trio.SocketStream,
                    done: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(CHUNK):
                await self._resume.wait()
                if self.delay:
                    await trio.sleep(self.delay)
                if self._truncate and len(data) > 1:
                    self._truncate = False
                    self.cuts += 1
                    await dst.send_all(data[: random.randrange(1, len(data))])
                    break
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        done.cancel()


async def _abort(stream: trio.SocketStream) -> None:
    """Close with a reset, like a peer whose host vanished."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await stream.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, default=0)
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT")
    parser.add_argument("--cut-every", type=float, metavar="SECONDS")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    with FaultProxy(host, int(port), args.listen) as proxy:
        print(f"listening on 127.0.0.1:{proxy.port}", flush=True)
        if not args.cut_every:
            threading.Event().wait()
        with proxy.repeating(args.cut_every, [proxy.cut, lambda: proxy.cut(mid_pdu=True)]):
            threading.Event().wait()


if __name__ == "__main__":
    main()
