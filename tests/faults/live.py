"""Live load against a running target: hostile connections and verified healthy sessions.

``hostile_client`` opens connection after connection and misbehaves in one of several ways
(random bytes, mutated headers, oversized segments, half PDUs, bad digests, and, after a real
login, random commands, stray Data-Out, reused task tags, CmdSN far outside the window, long and
repeated text keys, task management on unknown tasks).  ``VerifiedDisk`` drives one healthy
session with a shadow copy of everything it wrote and checks every read against it.

Used by the tests (short runs) and by ``bench/soak.py`` (long runs)::

    python -m tests.faults.live --portal 127.0.0.1:3260 --healthy IQN --hostile IQN2
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from blockbridge.initiator.blockdev import BlockDevice
from blockbridge.initiator.errors import InitiatorError
from blockbridge.initiator.session import Session
from blockbridge.iscsi import pdu as P
from blockbridge.iscsi.constants import Stage
from blockbridge.iscsi.errors import ISCSIError
from blockbridge.iscsi.framing import encode_bytes
from blockbridge.iscsi.text import encode_text
from blockbridge.transport import ConnectionClosed

log = logging.getLogger(__name__)

# -- hostile ---------------------------------------------------------------------------


@dataclass
class HostileStats:
    connections: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)


def _login_request(rng: random.Random, target: str) -> P.LoginRequest:
    keys = [("InitiatorName", f"iqn.2026-11.fuzz:{rng.randrange(1000)}"),
            ("TargetName", target), ("SessionType", "Normal"), ("AuthMethod", "None")]
    return P.LoginRequest(itt=rng.getrandbits(32), isid=rng.randbytes(6), tsih=0,
                          csg=Stage.SECURITY, nsg=Stage.OPERATIONAL, transit=True,
                          cmdsn=0, expstatsn=0, data=encode_text(keys))


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(b))
        b[i] = rng.getrandbits(8)
    return bytes(b)


def _random_cdb(rng: random.Random) -> bytes:
    opcode = rng.choice([0x00, 0x03, 0x08, 0x0A, 0x12, 0x15, 0x1A, 0x1B, 0x25, 0x28, 0x2A,
                         0x2F, 0x35, 0x41, 0x42, 0x55, 0x5A, 0x5E, 0x5F, 0x88, 0x89, 0x8A,
                         0x8F, 0x93, 0x9E, 0xA0, 0xA3, rng.getrandbits(8)])
    n = 6 if opcode < 0x20 else 10 if opcode < 0x80 else 16 if opcode < 0xA0 else 12
    return bytes([opcode]) + rng.randbytes(n - 1)


def _random_pdu(rng: random.Random, s: Session) -> P.PDU:
    itt = rng.choice([1, 2, 3, rng.getrandbits(32)])  # small tags repeat: ITT reuse
    cmdsn = rng.choice([s.cmdsn, s.cmdsn + 1, s.cmdsn + rng.getrandbits(31),
                        rng.getrandbits(32)]) & 0xFFFFFFFF
    lun = P.encode_lun(rng.choice([0, 1, 7, 255]))
    kind = rng.randrange(8)
    if kind <= 2:
        write = rng.random() < 0.5
        length = rng.choice([0, 512, 4096, 65536, rng.getrandbits(24)])
        data = rng.randbytes(rng.choice([0, 512, 8192])) if write else b""
        return P.SCSICommand(itt=itt, lun=lun, cdb=_random_cdb(rng), expected_length=length,
                             cmdsn=cmdsn, expstatsn=s.expstatsn, read=not write or
                             rng.random() < 0.2, write=write, final=rng.random() < 0.9,
                             attr=rng.randrange(8), immediate=rng.random() < 0.2, data=data)
    if kind == 3:
        return P.DataOut(itt=itt, lun=lun, ttt=rng.getrandbits(32), datasn=rng.getrandbits(8),
                         offset=rng.choice([0, 512, rng.getrandbits(31)]),
                         final=rng.random() < 0.5, data=rng.randbytes(rng.choice([0, 512])))
    if kind == 4:
        key = "X" * rng.choice([1, 63, 64, 300])
        value = "v" * rng.choice([1, 255, 256, 8192])
        pairs = [(key, value)] * rng.choice([1, 2, 50]) + [("SendTargets", "All")]
        return P.TextRequest(itt=itt, cmdsn=cmdsn, expstatsn=s.expstatsn,
                             cont=rng.random() < 0.3, final=rng.random() < 0.7,
                             ttt=rng.choice([0xFFFFFFFF, rng.getrandbits(32)]),
                             data=encode_text(pairs)[:rng.choice([65536, 8192])])
    if kind == 5:
        return P.TaskManagementRequest(itt=itt, function=rng.randrange(1, 16), lun=lun,
                                       referenced_itt=rng.getrandbits(32), cmdsn=cmdsn,
                                       expstatsn=s.expstatsn, refcmdsn=rng.getrandbits(32))
    if kind == 6:
        return P.SNACKRequest(itt=itt, snack_type=rng.randrange(4), lun=lun,
                              ttt=rng.getrandbits(32), begrun=rng.getrandbits(32),
                              runlength=rng.getrandbits(8))
    return P.NopOut(itt=rng.choice([itt, 0xFFFFFFFF]), ttt=rng.choice([0xFFFFFFFF, 5]),
                    cmdsn=cmdsn, expstatsn=s.expstatsn, immediate=rng.random() < 0.5,
                    data=rng.randbytes(rng.choice([0, 48, 4096])))


async def _drain(stream: trio.abc.Stream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        while await stream.receive_some(1 << 20):
            pass


async def _raw(host: str, port: int, payload: bytes, rng: random.Random) -> None:
    stream = await trio.open_tcp_stream(host, port)
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(_drain, stream)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await stream.send_all(payload)
            await trio.sleep(rng.random() * 0.2)
        nursery.cancel_scope.cancel()


async def _logged_in(host: str, port: int, target: str, rng: random.Random,
                     digests: bool) -> None:
    proposals = {"HeaderDigest": "CRC32C", "DataDigest": "CRC32C"} if digests else None
    s = await Session.connect(host, port, initiator_name=f"iqn.2026-11.fuzz:{rng.random()}",
                              target_name=target, proposals=proposals)
    raw = s.stream.stream
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_drain, raw)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            for _ in range(rng.randint(1, 200)):
                pdu = _random_pdu(rng, s)
                wire = encode_bytes(pdu, header_digest=digests, data_digest=digests)
                roll = rng.random()
                if roll < 0.1:
                    wire = _mutate(rng, wire)
                elif roll < 0.15:
                    wire = wire[: rng.randrange(1, len(wire))]
                await raw.send_all(wire)
                if rng.random() < 0.05:
                    await trio.sleep(0.01)
            await trio.sleep(rng.random() * 0.1)
        nursery.cancel_scope.cancel()
    await s.stream.aclose()


async def _one_attack(host: str, port: int, target: str, rng: random.Random) -> str:
    kind = rng.choice(["random-bytes", "mutated-login", "oversized-segment", "half-pdu",
                       "commands", "commands", "commands-with-digests"])
    login = encode_bytes(_login_request(rng, target))
    if kind == "random-bytes":
        await _raw(host, port, rng.randbytes(rng.choice([1, 47, 48, 4096, 70000])), rng)
    elif kind == "mutated-login":
        await _raw(host, port, _mutate(rng, login) + rng.randbytes(rng.randrange(64)), rng)
    elif kind == "oversized-segment":
        bhs = bytearray(login[:48])
        bhs[5:8] = (0xFFFFFF).to_bytes(3, "big")
        await _raw(host, port, bytes(bhs) + rng.randbytes(1024), rng)
    elif kind == "half-pdu":
        await _raw(host, port, login[: rng.randrange(1, len(login))], rng)
    else:
        await _logged_in(host, port, target, rng, kind == "commands-with-digests")
    return kind


async def hostile_client(host: str, port: int, target: str, seed: int, duration: float,
                         stats: HostileStats) -> None:
    """Misbehave against ``target`` for ``duration`` seconds, one connection at a time."""
    rng = random.Random(seed)
    with trio.move_on_after(duration):
        while True:
            try:
                with trio.fail_after(10):
                    kind = await _one_attack(host, port, target, rng)
            except (OSError, ISCSIError, InitiatorError, ConnectionClosed,
                    trio.BrokenResourceError, trio.TooSlowError) as exc:
                kind = type(exc).__name__
            stats.connections += 1
            stats.by_kind[kind] = stats.by_kind.get(kind, 0) + 1


# -- healthy ---------------------------------------------------------------------------


class VerifiedDisk:
    """Random writes and reads of one region of a LUN, each read checked against a shadow."""

    def __init__(self, dev: BlockDevice, start: int, length: int, seed: int) -> None:
        self.dev, self.start, self.length = dev, start, length
        self.shadow = bytearray(length)
        self.rng = random.Random(seed)
        self.written = self.verified = 0

    async def fill(self) -> None:
        """Write the whole region once so the shadow is the truth from the start."""
        data = self.rng.randbytes(self.length)
        await self.dev.write(self.start, data)
        self.shadow[:] = data
        self.written += self.length

    async def step(self) -> None:
        bs = self.dev.block_size
        n = self.rng.choice([1, 8, 64, 256]) * bs
        off = self.rng.randrange(0, self.length - n + 1, bs)
        if self.rng.random() < 0.5:
            data = self.rng.randbytes(n)
            await self.dev.write(self.start + off, data)
            self.shadow[off : off + n] = data
            self.written += n
        else:
            got = await self.dev.read(self.start + off, n)
            if got != self.shadow[off : off + n]:
                raise AssertionError(f"mismatch at byte {self.start + off} (+{n})")
            self.verified += n

    async def check_all(self) -> None:
        got = await self.dev.read(self.start, self.length)
        if got != self.shadow:
            first = next(i for i in range(self.length) if got[i] != self.shadow[i])
            raise AssertionError(f"mismatch at byte {self.start + first}")
        self.verified += self.length


async def healthy_sessions(host: str, port: int, target: str, *, sessions: int,
                           region: int, duration: float, seed: int = 1,
                           progress: Callable[[list[VerifiedDisk]], Awaitable[None]] | None
                           = None) -> list[VerifiedDisk]:
    """``sessions`` logins with distinct initiator names, each doing verified I/O on its own
    ``region`` bytes of LUN 0 for ``duration`` seconds, then re-reading everything."""
    disks: list[VerifiedDisk] = []
    async with trio.open_nursery() as nursery:
        opened: list[Session] = []
        for i in range(sessions):
            s = await Session.connect(host, port, target_name=target,
                                      initiator_name=f"iqn.2026-11.test:healthy-{i}")
            opened.append(s)
            nursery.start_soon(s.run)
            dev = await BlockDevice.open(s, 0)
            if dev.size < region * sessions:
                raise ValueError(f"LUN of {dev.size} bytes is too small for the regions")
            disks.append(VerifiedDisk(dev, i * region, region, seed * 1000 + i))

        async def work(disk: VerifiedDisk) -> None:
            await disk.fill()
            deadline = trio.current_time() + duration
            while trio.current_time() < deadline:  # never cancel a write half-way
                await disk.step()
            await disk.dev.flush()
            await disk.check_all()

        async with trio.open_nursery() as workers:
            for disk in disks:
                workers.start_soon(work, disk)
            if progress is not None:
                workers.start_soon(progress, disks)
        for s in opened:
            await s.logout()
        nursery.cancel_scope.cancel()
    return disks


def main() -> None:
    parser = argparse.ArgumentParser(description="Hostile and healthy load on a target.")
    parser.add_argument("--portal", required=True, metavar="HOST:PORT")
    parser.add_argument("--healthy", required=True, metavar="IQN")
    parser.add_argument("--hostile", required=True, metavar="IQN")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--attackers", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=1)
    parser.add_argument("--region", type=int, default=8 << 20)
    args = parser.parse_args()
    host, _, port = args.portal.rpartition(":")

    async def run() -> None:
        stats = HostileStats()
        async with trio.open_nursery() as nursery:
            for i in range(args.attackers):
                nursery.start_soon(hostile_client, host, int(port), args.hostile, i,
                                   args.seconds, stats)
            disks = await healthy_sessions(host, int(port), args.healthy,
                                           sessions=args.sessions, region=args.region,
                                           duration=args.seconds)
        print(f"healthy: {sum(d.written for d in disks)} bytes written, "
              f"{sum(d.verified for d in disks)} verified, no mismatch")
        print(f"hostile: {stats.connections} connections {stats.by_kind}")

    logging.basicConfig(level=logging.WARNING)
    trio.run(run)


if __name__ == "__main__":
    main()
