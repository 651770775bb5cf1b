"""A LU's serial (VPD 0x80) and designators (VPD 0x83): stable, unique, well formed."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import trio
from blockbridge_target import pages
from blockbridge_target.backends.null import NullBackend
from blockbridge_target.config import parse_config
from blockbridge_target.configured import build_targets
from blockbridge_target.lun import LogicalUnit, Nexus

ROOT = Path(__file__).resolve().parents[2]
CASES = [("iqn.2026-11.test:a", 0), ("iqn.2026-11.test:a", 1), ("iqn.2026-11.test:b", 0)]


async def _inquiry(lu: LogicalUnit, page: int) -> bytes:
    nexus = Nexus("iqn.2026-11.test:initiator", bytes(6), lu.identity.target_name)
    result = await lu.execute(bytes([0x12, 0x01, page, 0x01, 0x00, 0x00]), b"", nexus)
    assert result.status == 0
    return bytes(result.data)


def dump() -> str:
    """Pages 0x80 and 0x83 of CASES as INQUIRY returns them, one hex line each."""
    async def main() -> list[str]:
        lines = []
        for name, number in CASES:
            lu = LogicalUnit(number, NullBackend(1 << 20), target_name=name)
            for page in (0x80, 0x83):
                lines.append((await _inquiry(lu, page)).hex())
            lu.close()
        return lines
    return "\n".join(trio.run(main))


@dataclass
class Designator:
    protocol: int
    code_set: int
    piv: bool
    association: int
    type: int
    value: bytes


def designators(page: bytes) -> list[Designator]:
    """Split a VPD 0x83 page, checking its lengths add up."""
    assert page[1] == 0x83
    assert int.from_bytes(page[2:4], "big") == len(page) - 4
    out, at = [], 4
    while at < len(page):
        length = page[at + 3]
        value = page[at + 4 : at + 4 + length]
        assert len(value) == length
        out.append(Designator(page[at] >> 4, page[at] & 0x0F, bool(page[at + 1] & 0x80),
                              (page[at + 1] >> 4) & 0x03, page[at + 1] & 0x0F, value))
        at += 4 + length
    assert at == len(page)
    return out


def test_same_inputs_give_the_same_pages_whatever_the_hash_seed() -> None:
    here = dump()
    script = "from tests.unit.test_identity import dump; print(dump())"
    for seed in ("0", "1", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=60, check=True)
        assert child.stdout.strip() == here
    assert len(set(here.splitlines())) == 2 * len(CASES)


def test_the_derivation_does_not_change() -> None:
    # These values are what disks served by this version report; a change here gives
    # every deployed LUN a new identity.
    ident = pages.Identity.derive("iqn.2026-11.test:a", 0)
    assert ident.serial == ident.scsi_id == "33792b2141f44e9d"
    assert ident.naa.hex() == "3fcd5e426f6bf019"


def test_luns_and_targets_never_share_an_identity() -> None:
    names = [f"iqn.2026-11.test:t{i}" for i in range(4)] + ["iqn.2026-11.test:t1x"]
    idents = [pages.Identity.derive(n, lun) for n in names for lun in range(256)]
    for field in ("serial", "scsi_id", "naa"):
        assert len({getattr(i, field) for i in idents}) == len(idents), field
    # fields do not run into each other: ("t1", 10) is not ("t11", 0)
    assert pages.Identity.derive("iqn.x:t1", 10).naa != pages.Identity.derive("iqn.x:t11", 0).naa


def test_page_0x83_is_well_formed() -> None:
    for name in ("iqn.2026-11.test:a", "iqn.2026-11.x:" + "y" * 209):  # up to 223 bytes
        ident = pages.Identity.derive(name, 7)
        page = pages.vpd_page(0x83, ident, pages.Geometry(512, 2048, False, 2048))
        assert page is not None
        found = {(d.association, d.type): d for d in designators(page)}
        assert len(found) == 6
        naa = found[0, 3]
        assert (naa.code_set, naa.piv, len(naa.value)) == (1, False, 8)
        assert naa.value[0] >> 4 == 3 and naa.value == ident.naa
        t10 = found[0, 1]
        assert t10.code_set == 2 and t10.value == pages.VENDOR + ident.scsi_id.encode()
        assert all(0x20 <= b <= 0x7E for b in t10.value)
        for key in ((1, 4), (1, 5)):  # relative target port, target port group
            d = found[key]
            assert (d.protocol, d.code_set, d.piv, d.value) == (5, 1, True, b"\0\0\0\1")
        for key, text in (((1, 8), f"{name},t,0x0001"), ((2, 8), name)):
            d = found[key]
            assert (d.protocol, d.code_set, d.piv) == (5, 3, True)
            assert len(d.value) % 4 == 0 and d.value.rstrip(b"\0").decode() == text
            assert d.value[len(text.encode())] == 0


def test_page_0x80_is_the_serial_in_ascii() -> None:
    ident = pages.Identity.derive("iqn.2026-11.test:a", 3)
    page = pages.vpd_page(0x80, ident, pages.Geometry(512, 2048, False, 2048))
    assert page == bytes([0, 0x80, 0, 16]) + ident.serial.encode()
    assert all(0x20 <= b <= 0x7E for b in page[4:])


def _luns(text: str) -> dict[tuple[str, int], pages.Identity]:
    cfg = parse_config(text, "ietd.conf")
    out = {}
    for target in build_targets(cfg, "ietd.conf"):
        for number, lu in target.luns.items():
            out[target.name, number] = lu.identity
            lu.close()
    return out


def test_scsi_id_and_scsi_sn_override_the_derived_identity() -> None:
    ids = _luns("Target iqn.2026-11.test:a\n"
                "  Lun 0 Type=nullio,ScsiId=shelf1-disk0,ScsiSN=SN-0001\n"
                "  Lun 1 Type=nullio,ScsiSN=SN-0002\n"
                "  Lun 2 Type=nullio,ScsiId=shelf1-disk2\n"
                "  Lun 3 Type=nullio\n")
    derived = {n: pages.Identity.derive("iqn.2026-11.test:a", n) for n in range(4)}
    pinned = ids["iqn.2026-11.test:a", 0]
    assert (pinned.serial, pinned.scsi_id) == ("SN-0001", "shelf1-disk0")
    assert pinned.naa != derived[0].naa and pinned.naa[0] >> 4 == 3
    serial_only = ids["iqn.2026-11.test:a", 1]
    assert serial_only.serial == "SN-0002"
    assert (serial_only.scsi_id, serial_only.naa) == (derived[1].scsi_id, derived[1].naa)
    id_only = ids["iqn.2026-11.test:a", 2]
    assert id_only.serial == id_only.scsi_id == "shelf1-disk2"
    assert ids["iqn.2026-11.test:a", 3] == derived[3]
    # ScsiId pins the designators: renaming the target or moving the LUN keeps them
    moved = _luns("Target iqn.2026-11.test:renamed\n"
                  "  Lun 5 Type=nullio,ScsiId=shelf1-disk0,ScsiSN=SN-0001\n"
                  "  Lun 0 Type=nullio\n")
    again = moved["iqn.2026-11.test:renamed", 5]
    assert (again.serial, again.scsi_id, again.naa) == (
        pinned.serial, pinned.scsi_id, pinned.naa)
    assert moved["iqn.2026-11.test:renamed", 0].naa != derived[0].naa


def test_scsi_id_set_to_the_current_id_keeps_the_whole_identity_through_a_rename() -> None:
    old = pages.Identity.derive("iqn.2026-11.test:old-name", 3)
    new = _luns(f"Target iqn.2026-11.test:new-name\n  Lun 0 Type=nullio,ScsiId={old.scsi_id}\n")
    kept = new["iqn.2026-11.test:new-name", 0]
    assert (kept.serial, kept.scsi_id, kept.naa) == (old.serial, old.scsi_id, old.naa)
