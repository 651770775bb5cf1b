#!/usr/bin/env python3
"""Long reliability runs: the short tests of tests/interop/test_live_fuzz.py and
tests/system/test_faults.py, for minutes instead of seconds.

    python bench/soak.py fuzz   --minutes 5    # hostile connections + verified sessions
    python bench/soak.py faults --minutes 5    # ext4 on a loop device over a mount whose
                                               # connection a proxy cuts every few seconds
                                               # (root: loop devices and mount)

Each run prints what it did and ends with PASS or FAIL (exit status 0 or 1).  Every process
it starts is stopped and every mount and loop device is removed, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio

from tests.faults.live import (
    HostileStats,
    VerifiedDisk,
    healthy_sessions,
    hostile_client,
)
from tests.faults.proxy import FaultProxy
from tests.interop.daemons import free_port, our_target, stop
from tests.interop.test_live_fuzz import (
    HEALTHY,
    HOSTILE,
    assert_on_disk,
    config,
    rss_kib,
)
from tests.system.workload import (
    fio_result,
    kernel_errors,
    kernel_log_lines,
    loop_filesystem,
    mounted,
    start_fio_verify,
    start_target,
)


def soak_fuzz(workdir: Path, seconds: float, attackers: int, sessions: int) -> bool:
    conf = config(workdir, 256 << 20)
    stats = HostileStats()
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], workdir) as target:
        pid = target.process.pid
        start_rss = rss_kib(pid)
        peak = [start_rss]

        async def watch(disks: list[VerifiedDisk]) -> None:
            begin = time.monotonic()
            while time.monotonic() - begin < seconds:
                await trio.sleep(10)
                peak[0] = max(peak[0], rss_kib(pid))
                print(f"  {time.monotonic() - begin:5.0f} s  target RSS {rss_kib(pid) >> 10} "
                      f"MiB  hostile connections {stats.connections}  verified "
                      f"{sum(d.verified for d in disks) >> 20} MiB", flush=True)

        async def main() -> list[VerifiedDisk]:
            async with trio.open_nursery() as nursery:
                for _ in range(attackers):
                    nursery.start_soon(hostile_client, target.host, target.port, HOSTILE,
                                       random.randrange(1 << 30), seconds, stats)
                return await healthy_sessions(
                    target.host, target.port, HEALTHY, sessions=sessions,
                    region=(256 << 20) // sessions // 512 * 512, duration=seconds,
                    progress=watch)

        disks = trio.run(main)
        alive = target.process.poll() is None
        log = target.log()
    assert_on_disk(workdir / "healthy.img", disks)
    print(f"hostile: {stats.connections} connections: {stats.by_kind}")
    print(f"healthy: {len(disks)} sessions, {sum(d.written for d in disks) >> 20} MiB written, "
          f"{sum(d.verified for d in disks) >> 20} MiB verified, no mismatch, on disk intact")
    print(f"target: {'alive' if alive else 'DIED'}, RSS {start_rss >> 10} MiB at start, "
          f"peak {peak[0] >> 10} MiB; tracebacks in log: {log.count('Traceback')}")
    return alive and "Traceback" not in log


def soak_faults(workdir: Path, seconds: float, every: float) -> bool:
    disk, port, iqn = workdir / "disk.img", free_port(), "iqn.2026-11.soak:faults"
    target = start_target(disk, port, workdir, iqn, size="1G")
    log_start = kernel_log_lines()
    try:
        with FaultProxy("127.0.0.1", port) as proxy, \
                mounted(f"127.0.0.1:{proxy.port}", workdir / "mnt", "--nop-interval", "1",
                        "--replacement-timeout", "60") as mnt, \
                loop_filesystem(mnt / iqn / "lun0", workdir / "fs") as fs:
            totals = {"written": 0, "verified": 0, "errors": 0}
            ok, end, rounds = True, time.monotonic() + seconds, 0
            with proxy.repeating(every, [proxy.cut, lambda: proxy.cut(mid_pdu=True)]):
                while ok and time.monotonic() < end:
                    fio = start_fio_verify(fs.directory, "64M", workdir / "fio.json")
                    try:
                        result = fio_result(fio, workdir / "fio.json", timeout=600)
                    except AssertionError as exc:
                        print(f"fio: {exc}")
                        result = {"errors": 1, "written": 0, "verified": 0}
                    ok = result["errors"] == 0 and result["verified"] == result["written"]
                    for k in totals:
                        totals[k] += result[k]
                    rounds += 1
            print(f"fio: {rounds} rounds, {totals['written'] >> 20} MiB written, "
                  f"{totals['verified'] >> 20} MiB verified, {totals['errors']} errors; "
                  f"proxy cut {proxy.cuts} times, {proxy.connections} connections")
        errors = kernel_errors(fs.device, log_start)
        print(f"kernel log errors on {fs.device}: {len(errors)}")
        return ok and not errors
    finally:
        stop(target)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("what", choices=["fuzz", "faults"])
    parser.add_argument("--minutes", type=float, default=5)
    parser.add_argument("--attackers", type=int, default=4, help="fuzz: hostile clients")
    parser.add_argument("--sessions", type=int, default=4, help="fuzz: healthy sessions")
    parser.add_argument("--cut-every", type=float, default=3, metavar="SECONDS",
                        help="faults: seconds between connection cuts")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bb-soak-", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        if args.what == "fuzz":
            ok = soak_fuzz(workdir, args.minutes * 60, args.attackers, args.sessions)
        else:
            ok = soak_faults(workdir, args.minutes * 60, args.cut_every)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
