"""CLI output to a pipe whose reader went away (blockbridge status | head) ends quietly,
while SIGPIPE stays ignored so a closed socket is an error, not a silent death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def test_status_into_a_closed_pipe_prints_no_traceback() -> None:
    # block-buffered, as for a user: the write fails only when Python flushes at exit
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    p = subprocess.Popen([sys.executable, "-m", "blockbridge", "status"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # the reader is gone before the command writes
    err = p.stderr.read().decode()
    assert p.wait(30) in (0, 1)
    assert "Traceback" not in err and err == ""


def test_sigpipe_stays_ignored() -> None:
    from blockbridge import cli

    before = signal.getsignal(signal.SIGPIPE)
    cli.main(["status"])
    assert signal.getsignal(signal.SIGPIPE) == before == signal.SIG_IGN
