"""ietd.conf parsing: the IET syntax, warnings with file:line, errors that stop startup
(and the initiator's credentials file, which shares the weak-secret check)."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from blockbridge_target.config import ConfigError, parse_config
from blockbridge_target.configured import StartupError, server_from_config
from hypothesis import given
from hypothesis import strategies as st

from blockbridge.credentials import parse

EXAMPLE = """\
# global section: discovery accounts
IncomingUser discover discovery-secret-1
Target iqn.2010-filer.network.local:iscsi.lun1
   Lun 0 Path=/iscsi.disk,Type=fileio
   Alias filer-lun1
   IncomingUser alice alice-secret-123
   OutgoingUser tgt target-secret-456
   MaxRecvDataSegmentLength 65536
   ImmediateData Yes
   HeaderDigest CRC32C,None
   QueuedCommands 64
Target iqn.2010-filer.network.local:iscsi.lun2
   Lun 0 Path=/dev/sdb,Type=blockio,IOMode=ro,ScsiSN=SN123,ScsiId=ID9
   Lun 1 Blocks=10000,BlockSize=4096,Type=nullio
"""


def test_the_classic_example() -> None:
    cfg = parse_config(EXAMPLE, "ietd.conf")
    assert cfg.incoming_users == [("discover", "discovery-secret-1")]
    first, second = cfg.targets
    assert first.name == "iqn.2010-filer.network.local:iscsi.lun1"
    assert first.alias == "filer-lun1"
    assert first.luns[0].path == "/iscsi.disk" and first.luns[0].type == "fileio"
    assert first.luns[0].iomode == "wt"
    assert first.incoming_users == [("alice", "alice-secret-123")]
    assert first.outgoing_user == ("tgt", "target-secret-456")
    assert first.params == {"MaxRecvDataSegmentLength": "65536", "ImmediateData": "Yes",
                            "HeaderDigest": "CRC32C,None"}
    assert first.queued_commands == 64
    ro, null = second.luns
    assert (ro.type, ro.iomode, ro.scsi_sn, ro.scsi_id) == ("blockio", "ro", "SN123", "ID9")
    assert (null.type, null.blocks, null.block_size, null.path) == ("nullio", 10000, 4096, None)
    assert [w.line for w in cfg.warnings] == [3, 12]  # the walkthrough's names lack a month


def test_keywords_are_case_insensitive_and_continuations_work() -> None:
    cfg = parse_config("target iqn.2026-11.x:y\n  lun 0 \\\n   path=/a,type=FileIO\n")
    assert cfg.targets[0].luns[0].path == "/a"


def test_last_line_without_newline_counts() -> None:
    cfg = parse_config("Target iqn.2026-11.x:y\nLun 0 Path=/a")
    assert cfg.targets[0].luns[0].path == "/a"


@pytest.mark.parametrize("text, line, message", [
    ("Lun 0 Path=/a\n", 1, "Lun outside a Target section"),
    ("Target iqn.2026-11.x:y\nLun 0 Type=fileio\n", 2, "Lun 0 has no Path"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a,Type=tape\n", 2, "unknown Type"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a,IOMode=xx\n", 2, "unknown IOMode"),
    ("Target iqn.2026-11.x:y\nLun 99999 Path=/a\n", 2, "outside 0..16383"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a\nLun 0 Path=/b\n", 3, "defined twice"),
    ("Target disk1\n", 1, "invalid target name"),
    ("Target iqn.2026-11.x:y\nTarget iqn.2026-11.x:y\n", 2, "defined twice"),
    ("Target iqn.2026-11.x:y\nIncomingUser alice\n", 2, "needs a user name and a secret"),
    ("Target iqn.2026-11.x:y\nMaxBurstLength lots\n", 2, "needs a number"),
    ("Target iqn.2026-11.x:y\nMaxBurstLength 100\n", 2, "outside 512..16777215"),
    ("Target iqn.2026-11.x:y\nImmediateData maybe\n", 2, "must be Yes or No"),
    ("Target iqn.2026-11.x:y\nHeaderDigest MD5\n", 2, "must be None, CRC32C"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a,Colour=red\n", 2, "unknown Lun parameter"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a,ScsiSN=01234567890123456\n", 2, "longer than 16"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a,ScsiSN=disk\u00e9\n", 2, "not printable ASCII"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a,ScsiId=a\x7fb\n", 2, "not printable ASCII"),
    (f"Target iqn.2026-11.x:{'y' * 210}\n", 1, "longer than 223 bytes"),
    ("Target iqn.2026-11.x:y\nLun 0 Type=memory\n", 2, "Lun 0 has no Size"),
    ("Target iqn.2026-11.x:y\nLun 0 Type=memory,Size=lots\n", 2, "Lun 0: Size invalid size"),
    ("Target iqn.2026-11.x:y\nLun 0 Type=memory,Size=1G,Path=/a\n", 2,
     "unknown Lun parameter 'Path' for Type=memory"),
    ("Target iqn.2026-11.x:y\nLun 0 Type=nullio,Blocks=many\n", 2,
     "Lun 0: Blocks needs a number of blocks"),
])
def test_errors_name_file_and_line(text: str, line: int, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "ietd.conf")
    assert info.value.line == line
    assert message in str(info.value)
    assert str(info.value).startswith(f"ietd.conf:{line}: ")


@pytest.mark.parametrize("text, fragment", [
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a\nFrobnicate 1\n", "unknown keyword 'Frobnicate'"),
    ("iSNSServer 10.0.0.1\n", "iSNS"),
    ("MaxBurstLength 4096\n", "global section is ignored"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a\nMaxConnections 4\n", "MC/S"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a\nErrorRecoveryLevel 2\n", "ErrorRecoveryLevel 0"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a\nIncomingUser a short\n", "shorter than 12"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a\nImmediateData yes\n", "exactly"),
    ("Target iqn.2026-11.x:y\nLun 0 Path=/a\nWthreads 8\n", "ignored"),
    ("Target iqn.2026-11.x:y\nLun 1 Path=/a\n", "no Lun 0"),
])
def test_warnings_with_location(text: str, fragment: str) -> None:
    cfg = parse_config(text, "ietd.conf")
    assert any(fragment in str(w) and str(w).startswith("ietd.conf:") for w in cfg.warnings), \
        [str(w) for w in cfg.warnings]


def test_clamped_values() -> None:
    cfg = parse_config("Target iqn.2026-11.x:y\nMaxConnections 4\nDataPDUInOrder No\n")
    assert cfg.targets[0].params == {"MaxConnections": "1", "DataPDUInOrder": "Yes"}


@given(st.text(max_size=300))
def test_random_text_raises_only_config_errors(text: str) -> None:
    with contextlib.suppress(ConfigError):
        parse_config(text)


def test_a_weak_secret_is_one_flagged_warning(tmp_path: Path) -> None:
    text = "Target iqn.2026-11.x:y\nLun 0 Type=nullio,Blocks=8\nIncomingUser bob short\n" \
           "IncomingUser eve twelve-chars\n"
    [weak] = [w for w in parse_config(text, "ietd.conf").warnings if w.weak_secret]
    assert str(weak) == ("ietd.conf:3: the CHAP secret of bob is shorter than 12 characters; "
                         "RFC 7143 asks for at least 12")
    conf = tmp_path / "ietd.conf"
    conf.write_text(text)
    server_from_config(conf, None)  # a warning only
    with pytest.raises(ConfigError) as info:
        server_from_config(conf, None, refuse_weak_secrets=True)
    assert str(info.value).startswith(
        f"{conf}:3: the CHAP secret of bob is shorter than 12 characters (use a secret")


def test_a_weak_initiator_secret_warns(caplog: pytest.LogCaptureFixture) -> None:
    parse('[default]\nuser = "alice"\nsecret = "short"\n', "credentials.toml")
    assert "credentials.toml: [default] secret is shorter than 12 characters; RFC 7143 " \
           "recommends 12 or more (or TLS)" in caplog.text
    caplog.clear()
    parse('[default]\nuser = "alice"\nsecret = "twelve-chars"\n', "credentials.toml")
    assert "shorter" not in caplog.text


@pytest.mark.parametrize("text, line", [
    # one target's OutgoingUser secret is another target's IncomingUser secret
    ("Target iqn.2026-11.x:a\n  IncomingUser bob bob-secret-45678\n"
     "  OutgoingUser a shared-secret-99\n"
     "Target iqn.2026-11.x:b\n  IncomingUser carol shared-secret-99\n", 5),
    # the same within one target, the outgoing one written last
    ("Target iqn.2026-11.x:a\n  IncomingUser bob shared-secret-99\n"
     "  OutgoingUser a shared-secret-99\n", 3),
    # discovery's OutgoingUser and a target's IncomingUser
    ("OutgoingUser filer shared-secret-99\nTarget iqn.2026-11.x:a\n"
     "  IncomingUser carol shared-secret-99\n", 3),
])
def test_a_secret_in_both_directions_is_refused(text: str, line: int) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "ietd.conf")
    assert str(err.value).startswith(f"ietd.conf:{line}: the secret of OutgoingUser ")
    assert "is also the secret of IncomingUser" in str(err.value)
    assert "RFC 7143 forbids a secret in both directions" in str(err.value)


def test_the_same_incoming_secret_on_two_targets_is_allowed() -> None:
    cfg = parse_config("Target iqn.2026-11.x:a\n  IncomingUser bob bob-secret-45678\n"
                       "Target iqn.2026-11.x:b\n  IncomingUser bob bob-secret-45678\n")
    assert len(cfg.targets) == 2


def test_each_type_takes_its_own_keys() -> None:
    cfg = parse_config("Target iqn.2026-11.x:y\n Lun 0 Type=memory,Size=64M\n"
                       " Lun 1 Type=nullio,Sectors=100\n Lun 2 Path=/a,Type=blockio\n")
    mem, null, block = cfg.targets[0].luns
    assert (mem.type, mem.options) == ("memory", {"size": 64 << 20})
    assert (null.type, null.blocks) == ("nullio", 100)
    assert (block.type, block.path) == ("blockio", "/a")


def test_a_lun_that_cannot_be_served_names_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "ietd.conf"
    conf.write_text("Target iqn.2026-11.x:y\n  Lun 0 Type=memory,Size=1000,BlockSize=4096\n")
    with pytest.raises(StartupError) as info:
        server_from_config(conf, None)
    assert str(info.value) == (f"{conf}:2: Lun 0: memory 1000 bytes cannot serve BlockSize "
                               "4096 (its own block size is 512, its size 1000 bytes)")
