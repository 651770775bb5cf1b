"""Live LUN changes: keep the block devices of a target in step with the target.

A target reports a LUN that grew (CAPACITY DATA HAS CHANGED) or LUNs that came or went
(REPORTED LUNS DATA HAS CHANGED) with a unit attention on the next command to a LUN
(``blockbridge.scsi.changes`` says which sense data means what).  Every block device
passes the attentions its commands see to ``LiveLuns.notice``; a task then reads the
capacity or the LUN list again, updates the devices (a new size; new LUNs opened;
removed ones closed, so that they refuse I/O), and tells the listener, the file system.

A unit attention needs a command to be reported.  A LUN in use sees it on its next read
or write; for a LUN nobody uses, ``LiveLuns`` sends one TEST UNIT READY every
``idle_check`` seconds (default 2) to each LUN that answered no command in that time, so
a change reaches the files within that time plus one round trip.  Nothing else is read
periodically: the capacity and REPORT LUNS only after an attention, after a reconnection
(the new session has no attentions for what changed meanwhile), and on ``rescan()``.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from blockbridge.scsi.changes import AttentionTracker, Rescan

from .blockdev import DISK, BlockDevice, CommandChannel, list_disk_luns
from .errors import InitiatorError

log = logging.getLogger(__name__)

DEFAULT_IDLE_CHECK = 2.0


class LunListener(Protocol):
    """What is told of the changes: the file system."""

    def resized(self, target: str, lun: int) -> None:
        """The device of ``lun`` has a new size (``BlockDevice.size``)."""

    def luns_changed(self, target: str, luns: dict[int, BlockDevice]) -> None:
        """The target's LUNs are now ``luns``; the devices left out were closed."""


class LiveSession(CommandChannel, Protocol):
    @property
    def closed(self) -> str | None: ...


class LiveLuns:
    """The LUNs of one target session.  ``devices`` is updated in place."""

    def __init__(self, target: str, session: LiveSession, devices: dict[int, BlockDevice],
                 *, idle_check: float = DEFAULT_IDLE_CHECK) -> None:
        self.target = target
        self.session = session
        self.devices = devices
        self.idle_check = idle_check
        self.listener: LunListener | None = None
        self._tracker = AttentionTracker()
        self._wake = trio.Event()
        self._lock = trio.Lock()  # one rescan at a time
        self._seen: dict[int, int] = {}  # LUN -> its device's command count at the last check
        for dev in devices.values():
            dev.on_attention = self.notice

    def notice(self, lun: int, sense: bytes) -> None:
        """A command to ``lun`` reported a unit attention (called by the block devices)."""
        if self._tracker.notice(lun, sense):
            self._wake.set()

    def request_all(self) -> None:
        """Read the LUN list and every capacity again soon (after a reconnection)."""
        self._tracker.request(True, set(self.devices))
        self._wake.set()

    async def rescan(self) -> list[str]:
        """Read the LUN list and every capacity now; the changes, one line each."""
        try:
            return await self._apply(Rescan(True, frozenset(self.devices)))
        except InitiatorError as exc:
            log.warning("%s: rescan failed: %s", self.target, exc)
            raise

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Apply what unit attentions report, and check idle LUNs, until cancelled."""
        async with trio.open_nursery() as nursery:
            if self.idle_check > 0:
                nursery.start_soon(self._check_idle)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                work = self._tracker.take()
                if not work:
                    continue
                try:
                    await self._apply(work)
                except InitiatorError as exc:
                    log.warning("%s: rescan failed: %s", self.target, exc)

    async def _check_idle(self) -> None:
        while True:
            await trio.sleep(self.idle_check)
            if self.session.closed is not None:
                continue  # reconnecting: request_all() follows
            for number, dev in list(self.devices.items()):
                if self._seen.get(number, dev.commands) == dev.commands:
                    try:
                        await dev.test_unit_ready()
                    except InitiatorError as exc:
                        log.debug("%s: TEST UNIT READY of LUN %d: %s", self.target, number, exc)
                self._seen[number] = dev.commands

    async def _apply(self, work: Rescan) -> list[str]:
        async with self._lock:
            changes = await self._rescan_luns() if work.luns else []
            for number in sorted(work.capacity):
                dev = self.devices.get(number)
                if dev is None:
                    continue
                before = dev.size
                if await dev.refresh_capacity():
                    changes.append(f"{self.target}: LUN {number} is now {dev.size} bytes "
                                   f"(was {before})")
                    log.info("%s", changes[-1])
                    if self.listener is not None:
                        self.listener.resized(self.target, number)
            return changes

    async def _rescan_luns(self) -> list[str]:
        found = {info.number for info in await list_disk_luns(self.session)
                 if info.device_type == DISK}
        changes: list[str] = []
        try:
            for number in sorted(set(self.devices) - found):
                dev = self.devices.pop(number)
                dev.close(f"LUN {number} was removed from the target")
                self._seen.pop(number, None)
                changes.append(f"{self.target}: LUN {number} was removed from the target; "
                               "its file answers EIO")
                log.warning("%s", changes[-1])
            for number in sorted(found - set(self.devices)):
                dev = await BlockDevice.open(self.session, number)
                dev.on_attention = self.notice
                self.devices[number] = dev
                changes.append(f"{self.target}: LUN {number} appeared ({dev.size} bytes)")
                log.info("%s", changes[-1])
        finally:
            if changes and self.listener is not None:
                self.listener.luns_changed(self.target, dict(self.devices))
        return changes
