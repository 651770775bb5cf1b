"""Man pages and shell completions are generated from the argparse definitions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.needs import needs

ROOT = Path(__file__).resolve().parents[2]


@needs("argparse-manpage")
def test_generated_man_pages_and_completions(tmp_path: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    subprocess.run([str(ROOT / "scripts" / "gen-man-and-completion"), str(tmp_path)],
                   check=True, capture_output=True, env=env, timeout=120)
    man = (tmp_path / "man/man1/blockbridge.1").read_text()
    for command in ("discover", "mount", "umount", "status", "discard", "cp", "rescan"):
        assert f"blockbridge {command}" in man
    target_man = (tmp_path / "man/man1/blockbridge-target.1").read_text()
    assert "tls" in target_man and "initiators" in target_man
    bash = (tmp_path / "bash-completion/completions/blockbridge").read_text()
    assert "discover" in bash and "--replacement-timeout" in bash and "--nop-interval" in bash
    assert (tmp_path / "zsh/site-functions/_blockbridge-target").read_text().strip()


def test_cli_reference_is_up_to_date() -> None:
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_doc.py"), "--check"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
