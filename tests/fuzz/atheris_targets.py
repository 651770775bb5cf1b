"""Coverage-guided fuzzing (atheris, libFuzzer) of the sans-IO core: the PDU framing and
decoder, the key=value text parser, and the target's login state machine.

    python -m tests.fuzz.atheris_targets pdu   -runs=200000
    python -m tests.fuzz.atheris_targets text  -max_total_time=600
    python -m tests.fuzz.atheris_targets login -max_total_time=600 corpus-dir/

Any exception other than the core's typed errors is a finding: libFuzzer stops, prints
the input and writes it to crash-<sha1> in a fresh temporary directory (its path is printed
first), or under the given -artifact_prefix=.  Arguments after the target name go to libFuzzer.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile

import atheris

with atheris.instrument_imports(enable_loader_override=False):
    from blockbridge.iscsi import pdu as P
    from blockbridge.iscsi.constants import LoginStatus
    from blockbridge.iscsi.errors import ISCSIError
    from blockbridge.iscsi.framing import PDUReader
    from blockbridge.iscsi.login import ChapCredentials, TargetLogin, TargetLoginConfig
    from blockbridge.iscsi.text import decode_text, encode_text

IQN = "iqn.2026-11.test:fuzz"
KEYS = ["InitiatorName", "TargetName", "SessionType", "AuthMethod", "CHAP_A", "CHAP_N",
        "CHAP_R", "CHAP_I", "CHAP_C", "HeaderDigest", "DataDigest", "MaxBurstLength",
        "ImmediateData", "InitialR2T", "MaxRecvDataSegmentLength", "FirstBurstLength",
        "ErrorRecoveryLevel", "MaxConnections", "X-junk", "TargetAlias"]
VALUES = ["None", "CHAP", "CHAP,None", "5", "7,6,5", "Yes", "No", "CRC32C", "CRC32C,None",
          "0", "262144", IQN, "iqn.2026-11.test:ini", "Discovery", "Normal", "alice", "-1",
          "0x" + "ab" * 16, "0b" + "q" * 22, "99999999999", ""]


def fuzz_pdu(data: bytes) -> None:
    reader = PDUReader(max_data_segment_length=1 << 16)
    fdp = atheris.FuzzedDataProvider(data)
    reader.header_digest = fdp.ConsumeBool()
    reader.data_digest = fdp.ConsumeBool()
    try:
        while fdp.remaining_bytes():
            reader.feed(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 600)))
            while (pdu := reader.next_pdu()) is not None:
                P.encode_pdu(pdu)  # whatever decodes must encode again
    except ISCSIError:
        pass


def fuzz_text(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    duplicates = fdp.ConsumeBool()
    with contextlib.suppress(ISCSIError):
        decode_text(fdp.ConsumeBytes(fdp.remaining_bytes()), allow_duplicates=duplicates)


def _resolve(session_type: str, target: str, initiator: str) -> TargetLoginConfig | LoginStatus:
    if session_type == "Discovery" or target == IQN:
        return TargetLoginConfig(target_name=IQN, incoming={"alice": b"alice-secret-123"},
                                 outgoing=ChapCredentials("tgt", b"target-secret-456"))
    return LoginStatus.NOT_FOUND


def fuzz_login(data: bytes) -> None:
    """A sequence of login PDUs, each a mutated header plus a text segment."""
    fdp = atheris.FuzzedDataProvider(data)
    machine = TargetLogin(portal_group_tag=1, resolve=_resolve,
                          random_bytes=lambda n: b"\7" * n)
    for _ in range(fdp.ConsumeIntInRange(1, 6)):
        bhs = bytearray(fdp.ConsumeBytes(48).ljust(48, b"\0"))
        bhs[0] = 0x43  # a login request, immediate
        if fdp.ConsumeBool():
            segment = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
        else:  # mostly well-formed text, so the machine gets past its first checks
            pairs = [(fdp.PickValueInList(KEYS),
                      fdp.PickValueInList(VALUES) if fdp.ConsumeBool()
                      else fdp.ConsumeUnicodeNoSurrogates(24))
                     for _ in range(fdp.ConsumeIntInRange(0, 8))]
            segment = encode_text(pairs)
        bhs[4] = 0
        bhs[5:8] = len(segment).to_bytes(3, "big")
        try:
            req = P.decode_pdu(bytes(bhs), b"", segment)
            if not isinstance(req, P.LoginRequest):
                return
            machine.receive(req, statsn=1, expcmdsn=1, maxcmdsn=2)
        except ISCSIError:
            return
        if machine.done or machine.failed:
            return


TARGETS = {"pdu": fuzz_pdu, "text": fuzz_text, "login": fuzz_login}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python -m tests.fuzz.atheris_targets {{{','.join(TARGETS)}}} "
                 "[libFuzzer options]")
    target = TARGETS[sys.argv[1]]
    options = sys.argv[2:]
    if not any(o.startswith("-artifact_prefix=") for o in options):
        findings = tempfile.mkdtemp(prefix="blockbridge-fuzz-")
        print(f"findings go to {findings}/", file=sys.stderr)
        options.append(f"-artifact_prefix={findings}/")
    atheris.Setup([sys.argv[0], *options], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
