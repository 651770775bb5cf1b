"""Every message of docs/troubleshooting.md, provoked through the real programs.

Each documented message is turned into a regular expression (HOST, PORT, FILE... match a
value, a repeated placeholder must repeat the same value, ``…`` matches anything) and a
test runs ``python -m blockbridge`` or ``python -m blockbridge_target`` until the message
appears on standard error or in a log.  Peers are real processes on 127.0.0.1.

``test_every_documented_message_has_a_test`` reads the tables of the page: a row without
an entry in ``DOCUMENTED`` fails the suite.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockbridge.iscsi import pdu as P
from blockbridge.tls import generate_self_signed
from tests.interop.daemons import RunningTarget, free_port, have, our_target
from tests.needs import needs

from .desktop import DesktopUser
from .fusectl import UNMOUNTED_STATUS, wait_for_queue_line, without_fusectl

system = pytest.mark.system  # every test but the two that only read the page
needs_fuse = needs("/dev/fuse")
PROGRAMS = ("blockbridge: ", "blockbridge-target: ")

DOC = Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md"

# Documented message (as written in the first column of the page) -> the test provoking it.
DOCUMENTED: dict[str, str] = {
    # blockbridge (initiator)
    "cannot connect to HOST:PORT: Connection refused": "test_connection_refused",
    "cannot connect to HOST:PORT: host name not found": "test_host_name_lookup_fails[not-found]",
    "cannot connect to HOST:PORT: no answer from the DNS server (check the network and "
    "/etc/resolv.conf, or use an address)": "test_host_name_lookup_fails[dns-silent]",
    "HOST:PORT closed the connection during login (if it is a TLS portal, add --tls)":
        "test_plain_client_on_a_tls_portal",
    "target IQN is not offered by HOST:PORT (offered: …)": "test_target_not_offered",
    "…: authentication failed (status 0x0201)": "test_wrong_chap_secret",
    "the target failed mutual CHAP authentication": "test_mutual_chap[wrong-target-secret]",
    "the target skipped authentication but mutual CHAP was required":
        "test_mutual_chap[target-without-chap]",
    "…: target not found on this portal (status 0x0203)":
        "test_initiator_refused_by_initiators_allow",
    "--initiator-name '…' is not a valid iSCSI name: …": "test_invalid_initiator_name",
    "FILE holds '…', not a valid iSCSI name: … (fix it, or delete it to get a new one)":
        "test_invalid_initiator_name",
    "runtime directory DIR is not safe to use: …": "test_unsafe_runtime_directory",
    "cannot serve DIR: …": "test_mount_undone_when_its_control_socket_fails",
    "the target's CHAP challenge is … bytes, shorter than the …-byte … digest: refused …":
        "test_short_target_challenge",
    "--chap-digests: unknown CHAP digest …": "test_unknown_chap_digest",
    "FILE is readable by other users; run: chmod 600 FILE": "test_credentials_readable_by_others",
    "mount point DIR does not exist (create it with mkdir -p DIR)":
        "test_mount_point_does_not_exist",
    "DIR is already a mount point (unmount it first with blockbridge umount DIR)":
        "test_already_a_mount_point",
    "/dev/fuse is not open to you (mode N): ask your administrator to run chmod 666 "
    "/dev/fuse (udev does it on most systems)": "test_dev_fuse_closed_to_users",
    "cannot mount on DIR: cannot run fusermount3: … (install fuse3)":
        "test_fusermount3_missing",
    "cannot mount on DIR: unknown FUSE mount option …": "test_unknown_mount_option_as_root",
    "request N interrupted": "test_a_killed_process_interrupts_its_request",
    "-o allow_other needs 'user_allow_other' in /etc/fuse.conf":
        "test_allow_other_without_user_allow_other",
    "certificate of HOST:PORT does not match the pinned fingerprint (…)":
        "test_tls_certificate_checks[pinned-mismatch]",
    "HOST:PORT is not a known host; its certificate is SHA256:…":
        "test_tls_certificate_checks[unknown-host]",
    "certificate of HOST:PORT changed: expected …, got …":
        "test_tls_certificate_checks[changed-certificate]",
    "FILE is not a LUN file of a running blockbridge mount": "test_discard_outside_a_mount",
    "DIR is not a running blockbridge mount": "test_rescan_outside_a_mount",
    "rescan of DIR failed: …": "test_rescan_of_an_unreachable_target",
    "IQN: rescan failed: …": "test_rescan_of_an_unreachable_target",
    "IQN: LUN N was removed from the target; its file answers EIO": "test_lun_removed",
    "FUSE max_background left at the kernel's default: fusectl is not mounted, so loop "
    "devices and io_uring on the LUN files get fewer requests in flight (fix, as root: "
    "mount -t fusectl none /sys/fs/fuse/connections)": "test_fusectl_not_mounted",
    "I/O errors (EIO) after a pause": "test_eio_after_the_replacement_timeout",
    "HOST:PORT: reconnecting failed: …": "test_eio_after_the_replacement_timeout",
    "No space left on device": "test_target_storage_full",
    "write of N bytes at … failed: …: space allocation failed (the target's storage is full)":
        "test_target_storage_full",
    # blockbridge-target
    "FILE:LINE: …": "test_target_refuses_to_start[config-error]",
    "FILE:LINE: Lun N: backing file PATH does not exist":
        "test_target_refuses_to_start[backing-file-missing]",
    "PATH does not exist: give --size to create it, e.g. --size 1G":
        "test_target_refuses_to_start[disk-without-size]",
    "FILE:LINE: unknown Lun parameter '…' for Type=… (known: …)":
        "test_target_refuses_to_start[unknown-lun-key]",
    "FILE:LINE: Lun N: Type=nbd needs libnbd's Python binding: install the Debian package "
    "python3-libnbd (scripts/bootstrap does), in a virtual environment made with "
    "--system-site-packages": "test_target_refuses_to_start[nbd-binding-missing]",
    "FILE:LINE: Lun N: cannot connect to …: …": "test_target_refuses_to_start[nbd-unreachable]",
    "FILE:LINE: Lun N: … cannot serve BlockSize … (its own block size is …, its size … bytes)":
        "test_target_refuses_to_start[block-size-misfit]",
    "--lun …: …": "test_target_refuses_to_start[bad-lun]",
    "cannot listen on HOST:PORT: address already in use — is another target running? …":
        "test_port_already_in_use",
    "cannot listen on HOST:PORT: permission denied …": "test_low_port_without_privileges",
    "file I/O uses worker threads: the kernel refused io_uring: …":
        "test_io_uring_refused_by_the_kernel",
    "--tls-portal needs --tls-cert and --tls-key …":
        "test_target_refuses_to_start[tls-portal-without-key]",
    "FILE:LINE: the CHAP secret of USER is shorter than 12 characters":
        "test_target_refuses_to_start[weak-secret]",
    "login of IQN to TARGET refused: authentication failed: …": "test_wrong_chap_secret",
    "login of IQN to TARGET refused: target not found on this portal: TARGET is hidden from "
    "IQN at … by initiators.allow or targets.allow": "test_initiator_refused_by_initiators_allow",
    "login of IQN to TARGET refused: target not found on this portal: no target TARGET here":
        "test_login_to_a_missing_target",
    "login of ? to … refused: initiator error: invalid InitiatorName '…': …":
        "test_forged_initiator_name",
    "FILE has vanished; keeping its last N rules (to allow everyone, write 'ALL ALL' in it)":
        "test_initiators_allow_vanishes",
    "N failed logins in the last minute; slowing this address down":
        "test_repeated_failures_slow_the_address_down",
    "FILE:LINE: the secret of OutgoingUser USER (line N) is also the secret of IncomingUser "
    "… (line …)": "test_target_refuses_to_start[secret-both-directions]",
    "connection refused: N connections from … are logging in or in discovery sessions "
    "(--max-logins-per-address N)": "test_unproven_connections_are_capped",
    "connection refused: N connections are logging in or in discovery sessions "
    "(--max-logins N)": "test_unproven_connections_are_capped",
    "accepting connections paused: Too many open files; raise LimitNOFILE or lower "
    "--max-logins (docs/security.md)": "test_out_of_descriptors",
    "the limit on open files is N, less than --max-logins …": "test_out_of_descriptors",
    "no Data-Out for task 0x… within …s (… of … bytes received): aborted with INITIATOR "
    "RESPONSE TIMEOUT": "test_writes_the_target_cannot_hold",
    "no buffer budget for task 0x… (N bytes) within …s: answered BUSY (the session holds …, "
    "all sessions …)": "test_writes_the_target_cannot_hold",
    "no buffer budget for the unsolicited data of task 0x…: answered BUSY":
        "test_writes_the_target_cannot_hold",
    "dropping command with CmdSN N outside the window …": "test_writes_the_target_cannot_hold",
    "discovery session N closed: idle for …": "test_discovery_sessions_end",
    "discovery session N closed: open for …, the longest allowed": "test_discovery_sessions_end",
    "IQN has N sessions with TARGET already (--max-sessions-per-initiator N)":
        "test_sessions_per_initiator",
    "login of IQN to TARGET refused: this initiator is not allowed to use the target: session "
    "N of IQN (ISID …) belongs to CHAP user …, not …: reinstatement refused":
        "test_session_takeover_and_reflection",
    "login of IQN to TARGET refused: authentication failed: CHAP user … sent a challenge this "
    "target issued to another login: reflection refused": "test_session_takeover_and_reflection",
    "dropping connection: …": "test_protocol_violation_drops_the_connection",
    "TLS handshake failed (…)": "test_plain_client_on_a_tls_portal",
    "LUN N: I/O error on …: … No space left on device": "test_target_storage_full",
}

# ----------------------------------------------------------------------------- the page

_PLACEHOLDERS = {"HOST": r"[^\s:]+", "PORT": r"\d+", "LINE": r"\d+", "N": r"\d+",
                 "FILE": r"\S+", "DIR": r"\S+", "PATH": r"\S+", "IQN": r"\S+",
                 "TARGET": r"\S+", "USER": r"\S+"}
_TOKEN = re.compile(r"(…|\b(?:" + "|".join(_PLACEHOLDERS) + r")\b)")


def documented_messages() -> list[str]:
    """The first column of every table row: its backquoted messages (several when
    separated by ' / '), or the plain text of a row that describes a symptom."""
    out = []
    for line in DOC.read_text().splitlines():
        if not line.startswith("|"):
            continue
        first = line.split("|")[1].strip()
        if first in ("Message", "") or set(first) <= {"-"}:
            continue
        for part in first.split(" / "):
            quoted = re.search(r"`([^`]+)`", part)
            out.append(quoted[1] if quoted else part.strip())
    return out


def pattern(message: str) -> re.Pattern[str]:
    """A documented message as a regular expression; a placeholder used twice must stand
    for the same text both times."""
    seen: set[str] = set()
    parts = []
    for piece in _TOKEN.split(message):
        if piece == "…":
            parts.append(".+?")
        elif piece in _PLACEHOLDERS:
            parts.append(f"(?P={piece})" if piece in seen else
                         f"(?P<{piece}>{_PLACEHOLDERS[piece]})")
            seen.add(piece)
        else:
            parts.append(re.escape(piece))
    return re.compile("".join(parts))


def expect(message: str, text: str) -> None:
    assert message in DOCUMENTED, f"not a documented message: {message}"
    assert pattern(message).search(text), f"documented {message!r} not found in:\n{text}"


def expect_error(message: str, r: subprocess.CompletedProcess[str]) -> None:
    """A user-facing failure: non-zero status, no traceback, and a line of standard error
    that is the program's name followed by the documented message."""
    output = r.stdout + r.stderr
    assert r.returncode != 0, output
    assert "Traceback" not in output and "internal error" not in output, output
    assert message in DOCUMENTED, f"not a documented message: {message}"
    documented = pattern(message)
    assert any(line.startswith(PROGRAMS) and documented.match(line.split(": ", 1)[1])
               for line in r.stderr.splitlines()), f"no line {message!r} in:\n{r.stderr}"


# ----------------------------------------------------------------------------- helpers


@dataclass
class Home:
    """A private configuration and runtime directory for the initiator."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        return dict(os.environ, XDG_CONFIG_HOME=str(self.root / "config"),
                    XDG_RUNTIME_DIR=str(self.root / "run"))

    def bb(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "blockbridge", *args],
                              capture_output=True, text=True, timeout=timeout, env=self.env)

    def credentials(self, name: str, secret: str, target_secret: str | None = None,
                    mode: int = 0o600) -> Path:
        text = f'[default]\nuser = "alice"\nsecret = "{secret}"\n'
        if target_secret:
            text += f'target_user = "filer"\ntarget_secret = "{target_secret}"\n'
        path = self.root / name
        path.write_text(text)
        path.chmod(mode)
        return path

    @contextlib.contextmanager
    def mounted(self, portal: str, mnt: Path, *extra: str) -> Iterator[Path]:
        mnt.mkdir(exist_ok=True)
        r = self.bb("mount", portal, str(mnt), *extra)
        assert r.returncode == 0, r.stderr
        try:
            yield mnt
        finally:
            self.bb("umount", str(mnt))
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


@pytest.fixture
def home(tmp_path: Path) -> Home:
    (tmp_path / "run").mkdir(mode=0o700)
    return Home(tmp_path)


def target_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "blockbridge_target", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def quick(disk: Path, iqn: str, *extra: str) -> list[str]:
    return ["--disk", str(disk), "--size", "16M", "--target-name", iqn,
            "--portal", "127.0.0.1:0", *extra]


def chap_config(workdir: Path, iqn: str, *, incoming: str | None, outgoing: str | None,
                port: int = 0, acl: Path | None = None) -> list[str]:
    disk = workdir / "chap.img"
    if not disk.exists():
        disk.write_bytes(bytes(4 << 20))
    text = f"Target {iqn}\n  Lun 0 Path={disk}\n"
    if incoming:
        text += f"  IncomingUser alice {incoming}\n"
    if outgoing:
        text += f"  OutgoingUser filer {outgoing}\n"
    conf = workdir / "ietd.conf"
    conf.write_text(text)
    args = ["-c", str(conf), "--portal", f"127.0.0.1:{port}"]
    return [*args, "--initiators-allow", str(acl)] if acl else args


def wait_for(predicate: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def private_mounts(binds: dict[str, Path], command: list[str]) -> list[str]:
    """COMMAND in a private mount namespace where each key path shows the given file; the
    real files are never touched and the bind mounts vanish with the namespace."""
    script = " && ".join(f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}"
                         for dst, src in binds.items())
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'{script} && exec "$@"', "sh", *command]


def can_isolate() -> bool:
    """Root with unshare: private mount namespaces work here."""
    if os.geteuid() != 0 or not have("unshare"):
        return False
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"],
                       capture_output=True, timeout=10)
    return r.returncode == 0


# ----------------------------------------------------------------------------- the page


def test_every_documented_message_has_a_test() -> None:
    listed = documented_messages()
    assert len(listed) == len(set(listed)), "a message is listed twice"
    assert set(listed) == set(DOCUMENTED), (
        f"rows without a test: {sorted(set(listed) - set(DOCUMENTED))}; "
        f"tests of messages no longer documented: {sorted(set(DOCUMENTED) - set(listed))}")
    ids = set()
    for name, func in globals().items():
        if not name.startswith("test_") or not callable(func):
            continue
        ids.add(name)
        for mark in getattr(func, "pytestmark", []):
            if mark.name == "parametrize":
                ids |= {f"{name}[{p.id}]" for p in mark.args[1] if getattr(p, "id", None)}
    missing = {m: t for m, t in DOCUMENTED.items() if t not in ids}
    assert not missing, f"DOCUMENTED names tests that do not exist: {missing}"


def test_placeholders_become_patterns() -> None:
    chmod = pattern("FILE is readable by other users; run: chmod 600 FILE")
    assert chmod.fullmatch("/a/c.toml is readable by other users; run: chmod 600 /a/c.toml")
    assert not chmod.search("/a/c.toml is readable by other users; run: chmod 600 /b")
    assert pattern("cannot connect to HOST:PORT: Connection refused").fullmatch(
        "cannot connect to 127.0.0.1:3260: Connection refused")


# ----------------------------------------------------------------------------- initiator


@system
def test_connection_refused(home: Home) -> None:
    r = home.bb("discover", f"127.0.0.1:{free_port()}")
    expect_error("cannot connect to HOST:PORT: Connection refused", r)


@contextlib.contextmanager
def silent_name_server() -> Iterator[Callable[[], bool]]:
    """Hold UDP port 53 of the loopback interface and never answer: a name server that
    does not respond, and the proof that no other one listens there.  Yields a function
    telling whether a query arrived."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", 53))
        except OSError as exc:
            pytest.skip(f"cannot hold 127.0.0.1:53 ({exc.strerror}); a resolver listening "
                        "there might forward the query beyond this machine")
        s.setblocking(False)

        def asked() -> bool:
            try:
                return bool(s.recv(4096))
            except BlockingIOError:
                return False

        yield asked


@system
@pytest.mark.skipif(os.path.exists("/run/nscd/socket"),
                    reason="nscd would answer host lookups with its own configuration")
@pytest.mark.parametrize("hosts, message", [
    pytest.param("files", "cannot connect to HOST:PORT: host name not found", id="not-found"),
    pytest.param("files dns", "cannot connect to HOST:PORT: no answer from the DNS server "
                 "(check the network and /etc/resolv.conf, or use an address)",
                 id="dns-silent"),
])
def test_host_name_lookup_fails(hosts: str, message: str, home: Home, tmp_path: Path
                                ) -> None:
    if not can_isolate():
        pytest.skip("needs root and unshare for a private /etc/nsswitch.conf; without it the "
                    "lookup would ask the DNS server of this machine, which is not loopback")
    # The lookup sees private copies of nsswitch.conf and resolv.conf: names come from
    # /etc/hosts, and from DNS only through a server on 127.0.0.1 that this test holds
    # silent. A name under the reserved .invalid domain sends nothing beyond loopback.
    nsswitch, resolv = tmp_path / "nsswitch.conf", tmp_path / "resolv.conf"
    nsswitch.write_text(f"passwd: files\ngroup: files\nhosts: {hosts}\n")
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    command = private_mounts({"/etc/nsswitch.conf": nsswitch, "/etc/resolv.conf": resolv},
                             [sys.executable, "-m", "blockbridge", "discover",
                              "blockbridge-test.invalid:3260"])
    with silent_name_server() as asked:
        start = time.monotonic()
        r = subprocess.run(command, capture_output=True, text=True, timeout=60, env=home.env)
        elapsed = time.monotonic() - start
        assert asked() == ("dns" in hosts)  # DNS went to loopback, or was not asked at all
    expect_error(message, r)
    assert "blockbridge-test.invalid:3260" in r.stderr
    assert elapsed < 30


@pytest.fixture(scope="module")
def tls_target(tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[RunningTarget, str]]:
    work = tmp_path_factory.mktemp("tls")
    crt, key, fp = generate_self_signed(work / "certs")
    args = ["--disk", str(work / "d.img"), "--size", "16M", "--target-name",
            "iqn.2026-11.test:trouble-tls", "--tls-portal", "127.0.0.1:0", "--tls-cert",
            str(crt), "--tls-key", str(key)]
    with our_target(args, work) as t:
        yield t, fp


@system
def test_plain_client_on_a_tls_portal(home: Home, tls_target: tuple[RunningTarget, str]
                                      ) -> None:
    t, _ = tls_target
    r = home.bb("discover", t.portal)
    expect_error("HOST:PORT closed the connection during login (if it is a TLS portal, "
                 "add --tls)", r)
    assert wait_for(lambda: "TLS handshake failed" in t.log())
    expect("TLS handshake failed (…)", t.log())
    assert t.process.poll() is None


@system
@pytest.mark.parametrize("case", [
    pytest.param("pinned", id="pinned-mismatch"),
    pytest.param("unknown", id="unknown-host"),
    pytest.param("changed", id="changed-certificate"),
])
def test_tls_certificate_checks(case: str, home: Home, tls_target: tuple[RunningTarget, str]
                                ) -> None:
    t, fp = tls_target
    other = "SHA256:" + "ab" * 32
    if case == "pinned":
        r = home.bb("discover", "--tls-fingerprint", other, t.portal)
        message = "certificate of HOST:PORT does not match the pinned fingerprint (…)"
    elif case == "unknown":
        r = home.bb("discover", "--tls", t.portal)
        message = "HOST:PORT is not a known host; its certificate is SHA256:…"
        assert fp in r.stderr
    else:
        known = home.root / "config" / "blockbridge" / "known_hosts"
        known.parent.mkdir(parents=True)
        known.write_text(f"{t.portal} {other}\n")
        r = home.bb("discover", "--tls", t.portal)
        message = "certificate of HOST:PORT changed: expected …, got …"
        assert f"expected {other}, got {fp}" in r.stderr
    expect_error(message, r)
    assert t.portal in r.stderr


@pytest.fixture(scope="module")
def plain_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTarget]:
    work = tmp_path_factory.mktemp("plain")
    with our_target(quick(work / "d.img", "iqn.2026-11.test:trouble-plain"), work) as t:
        yield t


@system
@needs_fuse
def test_target_not_offered(home: Home, plain_target: RunningTarget) -> None:
    mnt = home.root / "mnt"
    mnt.mkdir()
    r = home.bb("mount", plain_target.portal, str(mnt), "-t", "iqn.2026-11.test:not-there")
    expect_error("target IQN is not offered by HOST:PORT (offered: …)", r)
    assert "(offered: iqn.2026-11.test:trouble-plain)" in r.stderr
    assert not os.path.ismount(mnt)


CHAP_IQN = "iqn.2026-11.test:trouble-chap"
SECRET, TARGET_SECRET = "alice-secret-123", "target-secret-456"


@system
@needs_fuse
@pytest.mark.parametrize("mode", [pytest.param([], id="background"),
                                  pytest.param(["--foreground"], id="foreground")])
def test_wrong_chap_secret(mode: list[str], home: Home, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    wrong = home.credentials("wrong.toml", "not-the-secret-0")
    with our_target(chap_config(tmp_path, CHAP_IQN, incoming=SECRET, outgoing=None),
                    tmp_path) as t:
        r = home.bb("mount", *mode, t.portal, str(mnt), "--auth-file", str(wrong))
        expect_error("…: authentication failed (status 0x0201)", r)
        assert f"blockbridge: {CHAP_IQN}: authentication failed" in r.stderr
        assert not os.path.ismount(mnt)
        assert wait_for(lambda: "refused" in t.log())
        expect("login of IQN to TARGET refused: authentication failed: …", t.log())
        assert f"to {CHAP_IQN} refused: authentication failed: CHAP response did not " \
            "match" in t.log()
        assert "Traceback" not in t.log() and "not-the-secret-0" not in t.log()


@system
@needs_fuse
@pytest.mark.parametrize("incoming, outgoing, message", [
    pytest.param(SECRET, "not-what-we-expect", "the target failed mutual CHAP authentication",
                 id="wrong-target-secret"),
    pytest.param(None, None, "the target skipped authentication but mutual CHAP was required",
                 id="target-without-chap"),
])
def test_mutual_chap(incoming: str | None, outgoing: str | None, message: str, home: Home,
                     tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    creds = home.credentials("mutual.toml", SECRET, TARGET_SECRET)
    with our_target(chap_config(tmp_path, CHAP_IQN, incoming=incoming, outgoing=outgoing),
                    tmp_path) as t:
        r = home.bb("mount", t.portal, str(mnt), "--auth-file", str(creds))
        expect_error(message, r)
        assert not os.path.ismount(mnt)


@system
def test_repeated_failures_slow_the_address_down(home: Home, tmp_path: Path) -> None:
    wrong = home.credentials("wrong.toml", "not-the-secret-0")
    with our_target(chap_config(tmp_path, CHAP_IQN, incoming=SECRET, outgoing=None),
                    tmp_path) as t:
        for _ in range(3):
            r = home.bb("discover", "--luns", t.portal, "--auth-file", str(wrong))
            expect_error("…: authentication failed (status 0x0201)", r)
        assert wait_for(lambda: "slowing" in t.log())
        expect("N failed logins in the last minute; slowing this address down", t.log())
        assert "127.0.0.1: 3 failed logins in the last minute" in t.log()


@system
@needs_fuse
def test_initiator_refused_by_initiators_allow(home: Home, tmp_path: Path) -> None:
    # Our target (like tgtd) hides a target from SendTargets when the initiator may not
    # use it, so a fresh mount says "not offered".  The refusal itself reaches a mount
    # that was allowed when it started: the access list changes, the target restarts,
    # and the reconnection is refused until I/O fails.  It is "not found", as for a
    # target that does not exist: the status tells no one which targets exist.
    me = "iqn.2026-11.test:trusted-host"
    allow = tmp_path / "initiators.allow"
    allow.write_text(f"ALL {re.escape(me)}\n")
    port = free_port()
    args = chap_config(tmp_path, CHAP_IQN, incoming=None, outgoing=None, port=port, acl=allow)
    mount_log = tmp_path / "mount.log"
    with our_target(args, tmp_path) as t:
        mounted = home.mounted(t.portal, tmp_path / "mnt", "--initiator-name", me,
                               "--replacement-timeout", "2", "--log-file", str(mount_log))
        with mounted as mnt:
            allow.write_text("ALL iqn\\.2026-11\\.test:someone-else\n")
            t.process.send_signal(signal.SIGTERM)
            t.process.wait(30)
            with our_target(args, tmp_path) as again:
                with pytest.raises(OSError) as failed:
                    fd = os.open(mnt / CHAP_IQN / "lun0", os.O_RDONLY)
                    try:
                        os.pread(fd, 4096, 0)
                    finally:
                        os.close(fd)
                assert failed.value.errno == errno.EIO
                assert "is hidden from" in again.log()
                expect("login of IQN to TARGET refused: target not found on this portal: "
                       "TARGET is hidden from IQN at … by initiators.allow or targets.allow",
                       again.log())
                assert f"{CHAP_IQN} is hidden from {me} at 127.0.0.1 by" in again.log()
    log = mount_log.read_text()
    expect("…: target not found on this portal (status 0x0203)", log)
    # the refusal is the reason given, also when the last attempt was cut short while
    # the target held its answer to a repeated failure
    assert f"failing I/O ({CHAP_IQN}: target not found on this portal" in log
    assert "Traceback" not in log


@system
def test_invalid_initiator_name(home: Home) -> None:
    r = home.bb("discover", "127.0.0.1:9", "--initiator-name", "my laptop")
    expect_error("--initiator-name '…' is not a valid iSCSI name: …", r)
    assert "the character ' ' is not allowed" in r.stderr
    stored = home.root / "config" / "blockbridge" / "initiatorname"
    stored.parent.mkdir(parents=True)
    stored.write_text("iqn.2026-11.test:host\x1b[2J\n")
    r = home.bb("discover", "127.0.0.1:9")
    expect_error("FILE holds '…', not a valid iSCSI name: … (fix it, or delete it to get a "
                 "new one)", r)
    assert f"{stored} holds 'iqn.2026-11.test:host\\x1b[2J'" in r.stderr


@system
def test_unsafe_runtime_directory(home: Home) -> None:
    run = home.root / "run"
    run.chmod(0o755)
    for command in (["status"], ["umount", str(home.root)],
                    ["mount", "127.0.0.1:9", str(home.root)]):
        r = home.bb(*command)
        expect_error("runtime directory DIR is not safe to use: …", r)
        assert f"runtime directory {run} is not safe to use: its mode is 0755, not 0700; " \
            f"run chmod 700 {run}" in r.stderr
        assert len(r.stderr.splitlines()) == 1, r.stderr


@system
@needs_fuse
def test_mount_undone_when_its_control_socket_fails(plain_target: RunningTarget,
                                                    tmp_path: Path) -> None:
    # a runtime directory whose socket path is too long for AF_UNIX (108 bytes): FUSE is
    # mounted before the control socket is made, and must be unmounted again
    run = tmp_path / ("r" * 120)
    run.mkdir(mode=0o700)
    home = Home(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([sys.executable, "-m", "blockbridge", "mount", plain_target.portal,
                        str(mnt)], capture_output=True, text=True, timeout=90,
                       env=dict(home.env, XDG_RUNTIME_DIR=str(run)))
    expect_error("cannot serve DIR: …", r)
    assert f"cannot serve {mnt}: AF_UNIX path too long" in r.stderr, r.stderr
    assert not os.path.ismount(mnt)

    def logged_out() -> bool:  # every session of the target's that started has ended
        log = plain_target.log()
        return log.count("closed (target iqn.2026-11.test:trouble-plain)") == \
            log.count("logged in to iqn.2026-11.test:trouble-plain")
    assert wait_for(logged_out)


@system
def test_credentials_readable_by_others(home: Home) -> None:
    loose = home.credentials("loose.toml", SECRET, mode=0o644)
    r = home.bb("discover", "127.0.0.1:1", "--auth-file", str(loose))
    expect_error("FILE is readable by other users; run: chmod 600 FILE", r)
    assert str(loose) in r.stderr


@system
def test_mount_point_does_not_exist(home: Home) -> None:
    r = home.bb("mount", "127.0.0.1:1", str(home.root / "no" / "such" / "dir"))
    expect_error("mount point DIR does not exist (create it with mkdir -p DIR)", r)


@system
@needs_fuse
@pytest.mark.usefixtures("fuse_engine")
def test_already_a_mount_point(home: Home, plain_target: RunningTarget) -> None:
    with home.mounted(plain_target.portal, home.root / "mnt") as mnt:
        r = home.bb("mount", plain_target.portal, str(mnt))
        expect_error("DIR is already a mount point (unmount it first with blockbridge umount "
                     "DIR)", r)
        assert (mnt / "iqn.2026-11.test:trouble-plain" / "lun0").exists()


@system
@needs("root")
def test_dev_fuse_closed_to_users(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # a normal user of the pyfuse3 engine (libfuse opens /dev/fuse itself; ours leaves
    # that to fusermount3), seeing a /dev/fuse only root may open (as a container's /dev
    # may have it) in a private mount namespace
    if not can_isolate():
        pytest.skip("needs unshare to show the user a /dev/fuse of its own")
    user: DesktopUser = request.getfixturevalue("desktop_user")
    closed = tmp_path / "fuse"
    closed.write_bytes(b"")
    closed.chmod(0o600)
    command = private_mounts({"/dev/fuse": closed},
                             user.command("blockbridge", "mount", "--fuse-engine",
                                          "pyfuse3", "127.0.0.1:1", str(user.home)))
    r = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")
    expect_error("/dev/fuse is not open to you (mode N): ask your administrator to run "
                 "chmod 666 /dev/fuse (udev does it on most systems)", r)
    assert "(mode 0600)" in r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr  # and no word from libfuse


@system
@needs_fuse
@needs("root")
def test_fusermount3_missing(plain_target: RunningTarget, tmp_path: Path,
                             request: pytest.FixtureRequest) -> None:
    if not can_isolate():
        pytest.skip("needs unshare to hide fusermount3 from a user")
    user: DesktopUser = request.getfixturevalue("desktop_user")
    broken = tmp_path / "fusermount3"
    broken.write_bytes(b"")
    broken.chmod(0o644)  # there, but not a program
    mnt = user.home / "no-fusermount"
    user.run("mkdir", "-p", str(mnt))
    command = private_mounts({shutil.which("fusermount3") or "/usr/bin/fusermount3": broken},
                             user.command("blockbridge", "mount", "--fuse-engine",
                                          "blockbridge", plain_target.portal, str(mnt)))
    r = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/")
    expect_error("cannot mount on DIR: cannot run fusermount3: … (install fuse3)", r)
    assert f"cannot mount on {mnt}: cannot run fusermount3: Permission denied" in r.stderr


@system
@needs_fuse
@needs("root")
def test_unknown_mount_option_as_root(home: Home, plain_target: RunningTarget) -> None:
    mnt = home.root / "mnt"
    mnt.mkdir()
    r = home.bb("mount", "--fuse-engine", "blockbridge", "-o", "nosuid,bogus_option",
                plain_target.portal, str(mnt))
    expect_error("cannot mount on DIR: unknown FUSE mount option …", r)
    assert "unknown FUSE mount option bogus_option" in r.stderr
    assert not os.path.ismount(mnt)


@system
@needs_fuse
def test_a_killed_process_interrupts_its_request(home: Home, tmp_path: Path) -> None:
    iqn = "iqn.2026-11.test:trouble-interrupt"
    mount_log = tmp_path / "mount.log"
    with our_target(quick(tmp_path / "d.img", iqn), tmp_path) as t:
        # a short replacement timeout, so that the unmount does not wait long either
        mounted = home.mounted(t.portal, tmp_path / "mnt", "--fuse-engine", "blockbridge",
                               "--replacement-timeout", "8", "--log-file", str(mount_log))
        with mounted as mnt:
            t.process.send_signal(signal.SIGKILL)
            t.process.wait(30)
            reader = subprocess.Popen(["dd", f"if={mnt / iqn / 'lun0'}", "of=/dev/null",
                                       "bs=4k", "count=1", "status=none"])
            time.sleep(1.5)
            assert reader.poll() is None, "the read did not wait for the target"
            reader.kill()
            assert reader.wait(10) == -signal.SIGKILL
    expect("request N interrupted", mount_log.read_text())


def fuse_conf_allows_other() -> bool:
    try:
        return any(line.strip() == "user_allow_other"
                   for line in Path("/etc/fuse.conf").read_text().splitlines())
    except OSError:
        return False


@system
def test_allow_other_without_user_allow_other(home: Home, tmp_path: Path,
                                              request: pytest.FixtureRequest) -> None:
    if os.geteuid() != 0 and fuse_conf_allows_other():
        pytest.skip("/etc/fuse.conf has user_allow_other, and only root could hide it")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    argv = ["mount", "-o", "ro,allow_other", "127.0.0.1:1"]
    command = [sys.executable, "-m", "blockbridge", *argv, str(mnt)]
    env: dict[str, str] | None = home.env
    if os.geteuid() == 0:
        # root may always use allow_other: run as a normal user with their own
        # installation, with an /etc/fuse.conf without the line seen only inside a
        # private mount namespace.
        if not can_isolate():
            pytest.skip("needs unshare to show the user an /etc/fuse.conf of its own")
        user: DesktopUser = request.getfixturevalue("desktop_user")
        conf = tmp_path / "fuse.conf"
        conf.write_text("# mount_max = 1000\n")
        conf.chmod(0o644)
        command = private_mounts({"/etc/fuse.conf": conf},
                                 user.command("blockbridge", *argv, str(user.home)))
        env = None
    r = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd="/", env=env)
    expect_error("-o allow_other needs 'user_allow_other' in /etc/fuse.conf", r)


@system
def test_discard_outside_a_mount(home: Home) -> None:
    f = home.root / "plain.img"
    f.write_bytes(bytes(4096))
    r = home.bb("discard", str(f))
    expect_error("FILE is not a LUN file of a running blockbridge mount", r)
    assert str(f) in r.stderr


def test_rescan_outside_a_mount(home: Home) -> None:
    r = home.bb("rescan", str(home.root))
    expect_error("DIR is not a running blockbridge mount", r)
    assert str(home.root) in r.stderr


@system
@needs_fuse
def test_rescan_of_an_unreachable_target(home: Home, tmp_path: Path) -> None:
    iqn = "iqn.2026-11.test:trouble-rescan"
    mount_log = tmp_path / "mount.log"
    with our_target(quick(tmp_path / "d.img", iqn), tmp_path) as t, \
            home.mounted(t.portal, tmp_path / "mnt", "--replacement-timeout", "1",
                         "--log-file", str(mount_log)) as mnt:
        t.process.send_signal(signal.SIGTERM)
        t.process.wait(30)
        r = home.bb("rescan", str(mnt))
    expect_error("rescan of DIR failed: …", r)
    assert f"failed: target unreachable: cannot connect to {t.portal}" in r.stderr
    expect("IQN: rescan failed: …", mount_log.read_text())


@system
@needs_fuse
def test_lun_removed(home: Home, tmp_path: Path) -> None:
    iqn = "iqn.2026-11.test:trouble-removed"
    disks = [tmp_path / f"d{n}.img" for n in range(2)]
    for d in disks:
        d.write_bytes(bytes(4 << 20))
    conf = tmp_path / "ietd.conf"
    conf.write_text(f"Target {iqn}\n  Lun 0 Path={disks[0]}\n  Lun 1 Path={disks[1]}\n")
    mount_log = tmp_path / "mount.log"
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t, \
            home.mounted(t.portal, tmp_path / "mnt", "--log-file", str(mount_log)) as mnt:
        fd = os.open(mnt / iqn / "lun1", os.O_RDONLY)
        try:
            conf.write_text(f"Target {iqn}\n  Lun 0 Path={disks[0]}\n")
            t.process.send_signal(signal.SIGHUP)
            assert wait_for(lambda: "was removed" in mount_log.read_text())
            with pytest.raises(OSError) as failed:
                os.pread(fd, 4096, 0)
            assert failed.value.errno == errno.EIO
        finally:
            os.close(fd)
    expect("IQN: LUN N was removed from the target; its file answers EIO",
           mount_log.read_text())


@system
@needs_fuse
@needs("root", "unshare", "nsenter")
def test_fusectl_not_mounted(home: Home, plain_target: RunningTarget, tmp_path: Path) -> None:
    mount_log = tmp_path / "mount.log"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with without_fusectl() as ns:

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*ns.prefix, sys.executable, "-m", "blockbridge", *args],
                                  capture_output=True, text=True, timeout=90, env=home.env)

        r = run("mount", plain_target.portal, str(mnt), "--log-file", str(mount_log),
                "--fuse-engine", "pyfuse3")  # ours asks for its limits at INIT
        assert r.returncode == 0, r.stderr
        try:
            queue = wait_for_queue_line(lambda: run("status").stdout)
            # the mount works all the same, with the kernel's queue limit
            lun = mnt / "iqn.2026-11.test:trouble-plain" / "lun0"
            head = subprocess.run([*ns.prefix, "head", "-c", "4096", str(lun)],
                                  capture_output=True, timeout=30)
            assert head.returncode == 0 and len(head.stdout) == 4096, head.stderr
        finally:
            u = run("umount", str(mnt))
        assert u.returncode == 0, u.stderr
        assert not ns.is_mount(mnt)
    assert queue == UNMOUNTED_STATUS
    log = mount_log.read_text()
    expect("FUSE max_background left at the kernel's default: fusectl is not mounted, so loop "
           "devices and io_uring on the LUN files get fewer requests in flight (fix, as root: "
           "mount -t fusectl none /sys/fs/fuse/connections)", log)
    assert log.count("fusectl is not mounted") == 1
    assert "WARNING" in next(line for line in log.splitlines() if "fusectl is not" in line)


@system
@needs_fuse
@pytest.mark.usefixtures("fuse_engine")
def test_eio_after_the_replacement_timeout(home: Home, tmp_path: Path) -> None:
    iqn = "iqn.2026-11.test:trouble-gone"
    mount_log = tmp_path / "mount.log"
    with our_target(quick(tmp_path / "d.img", iqn), tmp_path) as t:
        mounted = home.mounted(t.portal, tmp_path / "mnt", "--replacement-timeout", "2",
                               "--log-file", str(mount_log))
        with mounted as mnt:
            fd = os.open(mnt / iqn / "lun0", os.O_RDONLY)
            try:
                assert len(os.pread(fd, 4096, 0)) == 4096
                t.process.send_signal(signal.SIGTERM)
                t.process.wait(30)
                start = time.monotonic()
                with pytest.raises(OSError) as failed:
                    os.pread(fd, 4096, 4096)
                waited = time.monotonic() - start
            finally:
                os.close(fd)
            assert failed.value.errno == errno.EIO
            assert 1.5 < waited < 30, waited
    log = mount_log.read_text()
    expect("HOST:PORT: reconnecting failed: …", log)
    assert f"{t.portal}: reconnecting failed: cannot connect to {t.portal}: Connection " \
        "refused" in log
    assert f"failing I/O (cannot connect to {t.portal}: Connection refused)" in log
    assert log.count("reconnecting failed") == 1, log  # said once, not once per attempt


@system
@needs_fuse
@needs("root")
@pytest.mark.usefixtures("fuse_engine")
def test_target_storage_full(home: Home, tmp_path: Path) -> None:
    """A thin LUN (a sparse 16 MiB file) on a 2 MiB file system: writes fail with ENOSPC
    once it is full, the mount and the target say why, and what was written stays."""
    iqn = "iqn.2026-11.test:trouble-full"
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    mount_log = tmp_path / "mount.log"
    blobs = [os.urandom(1 << 20) for _ in range(16)]
    try:
        with our_target(quick(small / "thin.img", iqn), tmp_path) as t, \
                home.mounted(t.portal, tmp_path / "mnt", "--log-file", str(mount_log)) as mnt:
            fd = os.open(mnt / iqn / "lun0", os.O_RDWR)
            try:
                written = 0
                with pytest.raises(OSError) as failed:
                    for i, blob in enumerate(blobs):
                        os.pwrite(fd, blob, i << 20)
                        written += 1
                assert failed.value.errno == errno.ENOSPC
                assert 1 <= written < 16
                for i in range(written):
                    assert os.pread(fd, 1 << 20, i << 20) == blobs[i]
            finally:
                os.close(fd)
        target_log = t.log_path.read_text()
    finally:
        subprocess.run(["umount", "--lazy", str(small)], check=True)
    expect("No space left on device", str(failed.value))
    expect("write of N bytes at … failed: …: space allocation failed (the target's storage "
           "is full)", mount_log.read_text())
    expect("LUN N: I/O error on …: … No space left on device", target_log)
    assert "Traceback" not in target_log and "internal error" not in target_log


# ----------------------------------------------------------------------------- target


@system
@needs("root", "qemu-img", "qemu-iscsi")
def test_io_uring_refused_by_the_kernel(tmp_path: Path) -> None:
    """With io_uring switched off (kernel.io_uring_disabled=2) the target says so once,
    when it first needs it (a flush), and serves through threads."""
    knob = Path("/proc/sys/kernel/io_uring_disabled")
    if not knob.exists():
        pytest.skip("this kernel has no kernel.io_uring_disabled switch")
    iqn = "iqn.2026-11.test:trouble-uring"
    before = knob.read_text().strip()
    knob.write_text("2")
    try:
        with our_target(quick(tmp_path / "u.img", iqn), tmp_path) as t:
            r = subprocess.run(["qemu-img", "bench", "-w", "-c", "4", "-d", "1", "-s", "4k",
                                "--flush-interval", "1", "-f", "raw",
                                f"iscsi://{t.portal}/{iqn}/0"],
                               capture_output=True, text=True, timeout=60, check=False)
            assert r.returncode == 0, r.stdout + r.stderr
            assert wait_for(lambda: "worker threads" in t.log())
            log = t.log()
    finally:
        knob.write_text(before)
    expect("file I/O uses worker threads: the kernel refused io_uring: …", log)
    assert log.count("worker threads") == 1 and "Traceback" not in log




def _config_error(work: Path) -> list[str]:
    conf = work / "ietd.conf"
    conf.write_text("Target iqn.2026-11.test:cfg\n  Lun 0 Type=fileio\n")
    return ["-c", str(conf), "--portal", "127.0.0.1:0"]


def _backing_file_missing(work: Path) -> list[str]:
    conf = work / "ietd.conf"
    conf.write_text(f"Target iqn.2026-11.test:cfg\n  Lun 0 Path={work / 'missing.img'}\n")
    return ["-c", str(conf), "--portal", "127.0.0.1:0"]


def _disk_without_size(work: Path) -> list[str]:
    return ["--disk", str(work / "new.img"), "--portal", "127.0.0.1:0"]


def _tls_portal_without_key(work: Path) -> list[str]:
    return ["--disk", str(work / "d.img"), "--size", "1M", "--tls-portal", "127.0.0.1:0"]


def _weak_secret(work: Path) -> list[str]:
    (work / "w.img").write_bytes(bytes(1 << 20))
    conf = work / "ietd.conf"
    conf.write_text(f"Target iqn.2026-11.test:cfg\n  Lun 0 Path={work / 'w.img'}\n"
                    "  IncomingUser bob short\n")
    return ["-c", str(conf), "--refuse-weak-secrets", "--portal", "127.0.0.1:0"]


def _secret_both_directions(work: Path) -> list[str]:
    (work / "s.img").write_bytes(bytes(1 << 20))
    conf = work / "ietd.conf"
    conf.write_text(f"Target iqn.2026-11.test:cfg\n  Lun 0 Path={work / 's.img'}\n"
                    "  IncomingUser bob same-secret-4567\n  OutgoingUser filer same-secret-4567\n")
    return ["-c", str(conf), "--portal", "127.0.0.1:0"]


def _unknown_lun_key(work: Path) -> list[str]:
    conf = work / "ietd.conf"
    conf.write_text("Target iqn.2026-11.test:cfg\n  Lun 0 Type=memory,Size=1M,Path=/a\n")
    return ["-c", str(conf), "--portal", "127.0.0.1:0"]


def _nbd_binding_missing(work: Path) -> list[str]:
    # the program runs in WORK, first on its module path: this nbd hides Debian's
    (work / "nbd.py").write_text("raise ImportError('hidden by the test')\n")
    conf = work / "ietd.conf"
    conf.write_text("Target iqn.2026-11.test:cfg\n  Lun 0 Type=nbd,Uri=nbd://localhost/x\n")
    return ["-c", str(conf), "--portal", "127.0.0.1:0"]


def _nbd_unreachable(work: Path) -> list[str]:
    conf = work / "ietd.conf"
    conf.write_text("Target iqn.2026-11.test:cfg\n"
                    f"  Lun 0 Type=nbd,Uri=nbd+unix:///?socket={work / 'none.sock'}\n")
    return ["-c", str(conf), "--portal", "127.0.0.1:0"]


def _block_size_misfit(work: Path) -> list[str]:
    conf = work / "ietd.conf"
    conf.write_text("Target iqn.2026-11.test:cfg\n  Lun 0 Type=memory,Size=1000,BlockSize=4096\n")
    return ["-c", str(conf), "--portal", "127.0.0.1:0"]


def _bad_lun(work: Path) -> list[str]:
    return ["--lun", "Type=memory", "--portal", "127.0.0.1:0"]


def _unknown_digest(work: Path) -> list[str]:
    return ["--disk", str(work / "d.img"), "--size", "1M", "--chap-digests", "SHA-256,sha512"]


@system
@pytest.mark.parametrize("make_args, message, exact", [
    pytest.param(_secret_both_directions, "FILE:LINE: the secret of OutgoingUser USER (line N) "
                 "is also the secret of IncomingUser … (line …)",
                 "ietd.conf:4: the secret of OutgoingUser filer (line 4)",
                 id="secret-both-directions"),
    pytest.param(_unknown_digest, "--chap-digests: unknown CHAP digest …", "'sha512'",
                 id="unknown-digest"),
    pytest.param(_config_error, "FILE:LINE: …", "ietd.conf:2: Lun 0 has no Path",
                 id="config-error"),
    pytest.param(_backing_file_missing, "FILE:LINE: Lun N: backing file PATH does not exist",
                 "ietd.conf:2: Lun 0: backing file ", id="backing-file-missing"),
    pytest.param(_disk_without_size,
                 "PATH does not exist: give --size to create it, e.g. --size 1G", "new.img",
                 id="disk-without-size"),
    pytest.param(_tls_portal_without_key, "--tls-portal needs --tls-cert and --tls-key …",
                 "--generate-cert DIR", id="tls-portal-without-key"),
    pytest.param(_weak_secret, "FILE:LINE: the CHAP secret of USER is shorter than 12 "
                 "characters", "ietd.conf:3: the CHAP secret of bob", id="weak-secret"),
    pytest.param(_unknown_lun_key, "FILE:LINE: unknown Lun parameter '…' for Type=… (known: …)",
                 "ietd.conf:2: unknown Lun parameter 'Path' for Type=memory", id="unknown-lun-key"),
    pytest.param(_nbd_binding_missing, "FILE:LINE: Lun N: Type=nbd needs libnbd's Python "
                 "binding: install the Debian package python3-libnbd (scripts/bootstrap does), "
                 "in a virtual environment made with --system-site-packages",
                 "ietd.conf:2: Lun 0: Type=nbd", id="nbd-binding-missing",
                 marks=needs("libnbd-python")),
    pytest.param(_nbd_unreachable, "FILE:LINE: Lun N: cannot connect to …: …",
                 "none.sock: ", id="nbd-unreachable", marks=needs("libnbd-python")),
    pytest.param(_block_size_misfit, "FILE:LINE: Lun N: … cannot serve BlockSize … (its own "
                 "block size is …, its size … bytes)", "memory 1000 bytes cannot serve",
                 id="block-size-misfit"),
    pytest.param(_bad_lun, "--lun …: …", "--lun Type=memory: Lun 0 has no Size",
                 id="bad-lun"),
])
def test_target_refuses_to_start(make_args: Callable[[Path], list[str]], message: str,
                                 exact: str, tmp_path: Path) -> None:
    r = target_cli(*make_args(tmp_path), cwd=tmp_path)
    expect_error(message, r)
    assert r.returncode == 2
    assert exact in r.stderr
    assert "listening on" not in r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("blockbridge-target: ")
    expect(message, last)


@system
def test_port_already_in_use(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        r = target_cli("--disk", str(tmp_path / "d.img"), "--size", "1M",
                       "--portal", f"127.0.0.1:{port}", cwd=tmp_path)
    expect_error("cannot listen on HOST:PORT: address already in use — is another target "
                 "running? …", r)
    assert f"127.0.0.1:{port}" in r.stderr


def _unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


LOW_PORT = 860  # iSCSI's system port, unused by the tests


@system
def test_low_port_without_privileges(request: pytest.FixtureRequest) -> None:
    if _unprivileged_port_start() <= LOW_PORT:
        pytest.skip("every user may bind low ports here (net.ipv4.ip_unprivileged_port_start)")
    with tempfile.TemporaryDirectory(prefix="bb-lowport-") as name:
        # root may bind it: root runs it as a normal user (no capabilities) with their own
        # installation, who only needs to read the configuration, so it lives in a
        # directory of its own that every user can read.
        work = Path(name)
        work.chmod(0o755)
        conf = work / "ietd.conf"
        conf.write_text("Target iqn.2026-11.test:low\n  Lun 0 Type=nullio,Blocks=2048\n")
        conf.chmod(0o644)
        args = ("-c", str(conf), "--portal", f"127.0.0.1:{LOW_PORT}")
        if os.geteuid() == 0:
            user: DesktopUser = request.getfixturevalue("desktop_user")
            r = user.run("blockbridge-target", *args, timeout=60)
        else:
            r = target_cli(*args, cwd=Path("/"))
    expect_error("cannot listen on HOST:PORT: permission denied …", r)
    assert f"127.0.0.1:{LOW_PORT}" in r.stderr
    assert r.returncode == 2


@system
def test_protocol_violation_drops_the_connection(plain_target: RunningTarget) -> None:
    command_before_login = P.encode_pdu(P.SCSICommand(cdb=bytes(16)))
    with socket.create_connection(("127.0.0.1", plain_target.port), timeout=10) as s:
        s.sendall(command_before_login)
        s.settimeout(10)
        assert s.recv(4096) == b""  # closed without an answer
    assert wait_for(lambda: "dropping connection" in plain_target.log())
    expect("dropping connection: …", plain_target.log())
    assert plain_target.process.poll() is None
    with socket.create_connection(("127.0.0.1", plain_target.port), timeout=10):
        pass  # and it still accepts others


@system
def test_login_to_a_missing_target(plain_target: RunningTarget) -> None:
    from blockbridge.iscsi.errors import LoginFailed

    missing = "iqn.2026-11.test:not-here"
    with pytest.raises(LoginFailed, match="target not found on this portal \\(status 0x0203"):
        raw_login(plain_target.port, missing, bytes.fromhex("800000000011"))
    assert wait_for(lambda: f"no target {missing}" in plain_target.log())
    expect("login of IQN to TARGET refused: target not found on this portal: no target TARGET "
           "here", plain_target.log())


@system
def test_forged_initiator_name(plain_target: RunningTarget) -> None:
    """A name with a line break, to forge a line in the target's log."""
    from blockbridge.iscsi.constants import Stage
    from blockbridge.iscsi.framing import PDUReader
    from blockbridge.iscsi.text import encode_text

    forged = "iqn.2026-11.test:x\n2026-11-05 12:00:00 INFO blockbridge_target: all is well"
    with socket.create_connection(("127.0.0.1", plain_target.port), timeout=10) as s:
        s.sendall(P.encode_pdu(P.LoginRequest(
            transit=True, csg=Stage.SECURITY, nsg=Stage.OPERATIONAL, isid=bytes(6),
            data=encode_text([("InitiatorName", forged), ("SessionType", "Normal"),
                              ("TargetName", "iqn.2026-11.test:trouble-plain")]))))
        reader = PDUReader()
        while (rsp := reader.next_pdu()) is None:
            reader.feed(s.recv(65536))
    assert isinstance(rsp, P.LoginResponse)
    assert (rsp.status_class, rsp.status_detail) == (2, 0)  # initiator error
    assert wait_for(lambda: "invalid InitiatorName" in plain_target.log())
    expect("login of ? to … refused: initiator error: invalid InitiatorName '…': …",
           plain_target.log())
    assert "invalid InitiatorName 'iqn.2026-11.test:x\\x0a2026-11-05" in plain_target.log()
    assert not any(line.startswith("2026-11-05 12:00:00")
                   for line in plain_target.log().splitlines())


@system
def test_initiators_allow_vanishes(tmp_path: Path) -> None:
    from blockbridge.iscsi.errors import LoginFailed

    allow = tmp_path / "initiators.allow"
    allow.write_text("ALL iqn\\.2026-11\\.test:trusted\n")
    args = chap_config(tmp_path, CHAP_IQN, incoming=None, outgoing=None, acl=allow)
    with our_target(args, tmp_path) as t:
        with pytest.raises(LoginFailed, match="0x0203"):
            raw_login(t.port, CHAP_IQN, bytes.fromhex("800000000021"))
        allow.unlink()
        with pytest.raises(LoginFailed, match="0x0203"):  # still refused
            raw_login(t.port, CHAP_IQN, bytes.fromhex("800000000022"))
        assert wait_for(lambda: "has vanished" in t.log())
        expect("FILE has vanished; keeping its last N rules (to allow everyone, write 'ALL "
               "ALL' in it)", t.log())


# ----------------------------------------------------------------- limits and CHAP rules

def raw_login(port: int, target: str | None, isid: bytes, **kw: object) -> socket.socket:
    """Log in with our login machine over a plain socket; the socket stays open (raises
    LoginFailed when refused)."""
    from blockbridge.iscsi.framing import PDUReader
    from blockbridge.iscsi.initiator_login import InitiatorLogin

    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    kw.setdefault("random_bytes", os.urandom)
    login = InitiatorLogin(initiator_name="iqn.2026-11.test:raw", target_name=target,
                           isid=isid, **kw)  # type: ignore[arg-type]
    reader = PDUReader()
    req: P.LoginRequest | None = login.start(cmdsn=1)
    try:
        while req is not None:
            s.sendall(P.encode_pdu(req))
            while (rsp := reader.next_pdu()) is None:
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("closed by the target")
                reader.feed(chunk)
            assert isinstance(rsp, P.LoginResponse)
            req = login.receive(rsp)
    except BaseException:
        s.close()
        raise
    return s


def write16(itt: int, cmdsn: int, blocks: int, data: bytes = b"") -> bytes:
    cdb = bytes([0x8A, 0]) + bytes(8) + blocks.to_bytes(4, "big") + b"\0\0"
    return P.encode_pdu(P.SCSICommand(
        itt=itt, lun=P.encode_lun(0), cdb=cdb, expected_length=blocks * 512, cmdsn=cmdsn,
        expstatsn=0, write=True, final=True, data=data))


@system
def test_writes_the_target_cannot_hold(tmp_path: Path) -> None:
    # -vv: only the first of these lines of a connection is a warning, the rest debug
    args = quick(tmp_path / "d.img", "iqn.2026-11.test:budget", "--size", "64M", "-vv",
                 "--session-buffer-budget", "32M", "--data-out-timeout", "1")
    with our_target(args, tmp_path) as t:
        s = raw_login(t.port, "iqn.2026-11.test:budget", bytes.fromhex("800000000011"))
        try:
            s.sendall(write16(1, 1, 65536))  # 32 MiB: the whole session budget, no data
            s.sendall(write16(2, 2, 16, bytes(4096)))  # data unasked, nowhere to go
            s.sendall(write16(3, 3, 1))  # waits for budget, in vain
            s.sendall(write16(4, 1000, 1))  # far beyond MaxCmdSN
            assert wait_for(lambda: "within 1s (0 of" in t.log())
            assert wait_for(lambda: "(512 bytes) within 1s" in t.log())
        finally:
            s.close()
        log = t.log()
    expect("no Data-Out for task 0x… within …s (… of … bytes received): aborted with "
           "INITIATOR RESPONSE TIMEOUT", log)
    expect("no buffer budget for task 0x… (N bytes) within …s: answered BUSY (the session "
           "holds …, all sessions …)", log)
    expect("no buffer budget for the unsolicited data of task 0x…: answered BUSY", log)
    expect("dropping command with CmdSN N outside the window …", log)


@system
def test_unproven_connections_are_capped(tmp_path: Path) -> None:
    for option in ("--max-logins-per-address", "--max-logins"):
        with our_target(quick(tmp_path / "d.img", "iqn.2026-11.test:cap", option, "1"),
                        tmp_path) as t:
            with socket.create_connection(("127.0.0.1", t.port)), \
                    socket.create_connection(("127.0.0.1", t.port)) as second:
                second.settimeout(10)
                assert second.recv(10) == b""
            assert wait_for(lambda: "connection refused" in t.log())
            expect(f"connection refused: N connections {'from … ' if 'address' in option else ''}"
                   f"are logging in or in discovery sessions ({option} N)", t.log())


@system
def test_out_of_descriptors(tmp_path: Path) -> None:
    args = quick(tmp_path / "d.img", "iqn.2026-11.test:fd", "--max-logins", "500",
                 "--max-logins-per-address", "500")
    with our_target(args, tmp_path, nofile=48) as t:
        held = [socket.create_connection(("127.0.0.1", t.port), timeout=10) for _ in range(60)]
        try:
            assert wait_for(lambda: "accepting connections paused" in t.log())
        finally:
            for c in held:
                c.close()
        expect("accepting connections paused: Too many open files; raise LimitNOFILE or "
               "lower --max-logins (docs/security.md)", t.log())
        expect("the limit on open files is N, less than --max-logins …", t.log())


@system
def test_discovery_sessions_end(tmp_path: Path) -> None:
    for extra, message in ((["--discovery-idle", "0.3"], "discovery session N closed: idle for …"),
                           (["--discovery-lifetime", "0.3"],
                            "discovery session N closed: open for …, the longest allowed")):
        with our_target(quick(tmp_path / "d.img", "iqn.2026-11.test:disc", *extra),
                        tmp_path) as t:
            s = raw_login(t.port, None, bytes.fromhex("800000000001"))
            s.settimeout(10)
            assert s.recv(10) == b""
            s.close()
            assert wait_for(lambda: "discovery session" in t.log())
            expect(message, t.log())


@system
def test_sessions_per_initiator(tmp_path: Path) -> None:
    from blockbridge.iscsi.errors import LoginFailed

    iqn = "iqn.2026-11.test:per-initiator"
    with our_target(quick(tmp_path / "d.img", iqn, "--max-sessions-per-initiator", "1"),
                    tmp_path) as t:
        with raw_login(t.port, iqn, bytes.fromhex("800000000001")), \
                pytest.raises(LoginFailed, match="0x0206"):
            raw_login(t.port, iqn, bytes.fromhex("800000000002"))
        assert wait_for(lambda: "--max-sessions-per-initiator" in t.log())
        expect("IQN has N sessions with TARGET already (--max-sessions-per-initiator N)",
               t.log())


@system
def test_session_takeover_and_reflection(tmp_path: Path) -> None:
    from blockbridge.iscsi.errors import LoginFailed
    from blockbridge.iscsi.login import ChapCredentials
    from blockbridge.iscsi.text import decode_text

    iqn = "iqn.2026-11.test:takeover"
    disk = tmp_path / "t.img"
    disk.write_bytes(bytes(1 << 20))
    conf = tmp_path / "ietd.conf"
    conf.write_text(f"Target {iqn}\n  Lun 0 Path={disk}\n  IncomingUser alice {SECRET}\n"
                    "  IncomingUser bob bob-secret-45678\n  OutgoingUser filer filer-secret-999\n")
    alice = ChapCredentials("alice", SECRET.encode())
    isid = bytes.fromhex("800000000007")
    with our_target(["-c", str(conf), "--portal", "127.0.0.1:0"], tmp_path) as t:
        with raw_login(t.port, iqn, isid, credentials=alice), \
                pytest.raises(LoginFailed, match="0x0202"):
            raw_login(t.port, iqn, isid, credentials=ChapCredentials("bob", b"bob-secret-45678"))
        assert wait_for(lambda: "reinstatement refused" in t.log())
        expect("login of IQN to TARGET refused: this initiator is not allowed to use the "
               "target: session N of IQN (ISID …) belongs to CHAP user …, not …: "
               "reinstatement refused", t.log())
        # take a challenge of the target's, then ask the target to answer it
        with socket.create_connection(("127.0.0.1", t.port), timeout=10) as s:
            from blockbridge.iscsi.framing import PDUReader
            from blockbridge.iscsi.initiator_login import InitiatorLogin

            probe = InitiatorLogin(initiator_name="iqn.2026-11.test:raw", target_name=iqn,
                                   isid=bytes.fromhex("800000000008"), credentials=alice,
                                   chap_algorithms=(5,), random_bytes=os.urandom)
            reader = PDUReader()
            req = probe.start(cmdsn=1)
            keys: dict[str, str] = {}
            for _ in range(2):
                s.sendall(P.encode_pdu(req))
                while (rsp := reader.next_pdu()) is None:
                    reader.feed(s.recv(65536))
                assert isinstance(rsp, P.LoginResponse)
                keys = dict(decode_text(rsp.data))
                if "CHAP_C" in keys:
                    break
                nxt = probe.receive(rsp)
                assert nxt is not None
                req = nxt
            ident, challenge = int(keys["CHAP_I"]), bytes.fromhex(keys["CHAP_C"][2:])

            def rigged(n: int) -> bytes:
                return bytes([ident]) if n == 1 else challenge

            with pytest.raises(LoginFailed, match="0x0201"):
                raw_login(t.port, iqn, bytes.fromhex("800000000009"), credentials=alice,
                          target_credentials=ChapCredentials("filer", b"filer-secret-999"),
                          random_bytes=rigged, chap_algorithms=(5,))
        assert wait_for(lambda: "reflection refused" in t.log())
        expect("login of IQN to TARGET refused: authentication failed: CHAP user … sent a "
               "challenge this target issued to another login: reflection refused", t.log())


@system
def test_short_target_challenge(home: Home) -> None:
    """A fake target that sends a 5-byte MD5 challenge."""
    import threading

    from blockbridge.iscsi.framing import PDUReader
    from blockbridge.iscsi.text import encode_text

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def fake() -> None:
        with contextlib.suppress(OSError), server, server.accept()[0] as c:
            reader = PDUReader()
            for answer in ([("AuthMethod", "CHAP")],
                           [("CHAP_A", "5"), ("CHAP_I", "1"), ("CHAP_C", "0x0102030405")]):
                while (req := reader.next_pdu()) is None:
                    reader.feed(c.recv(65536))
                assert isinstance(req, P.LoginRequest)
                c.sendall(P.encode_pdu(P.LoginResponse(
                    itt=req.itt, isid=req.isid, csg=req.csg, nsg=req.csg,
                    data=encode_text(answer))))
            c.recv(100)

    thread = threading.Thread(target=fake, daemon=True)
    thread.start()
    creds = home.credentials("c.toml", SECRET)
    r = home.bb("discover", f"127.0.0.1:{port}", "--auth-file", str(creds), timeout=30)
    thread.join(10)
    expect_error("the target's CHAP challenge is … bytes, shorter than the …-byte … digest: "
                 "refused …", r)
    assert "5 bytes, shorter than the 16-byte MD5 digest" in r.stderr


@system
def test_unknown_chap_digest(home: Home) -> None:
    r = home.bb("discover", "127.0.0.1:9", "--chap-digests", "md4")
    expect_error("--chap-digests: unknown CHAP digest …", r)
