#!/usr/bin/env python3
"""Write docs/cli.md, the command-line reference, from the argparse definitions.

    python scripts/gen_cli_doc.py            # rewrite docs/cli.md
    python scripts/gen_cli_doc.py --check    # exit 1 if docs/cli.md is out of date
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"


def help_text(parser: argparse.ArgumentParser) -> str:
    os.environ["COLUMNS"] = "92"  # stable wrapping, whatever the terminal
    return parser.format_help().rstrip()


def render() -> str:
    from blockbridge_target.cli import build_parser as target_parser

    from blockbridge.cli import build_parser as initiator_parser

    parts = ["# Command-line reference",
             "",
             "Generated from the programs' own `--help` by `scripts/gen_cli_doc.py`; the same",
             "definitions make the man pages and shell completions "
             "(`scripts/gen-man-and-completion`).",
             ""]
    for title, parser in (("blockbridge", initiator_parser()),
                          ("blockbridge-target", target_parser())):
        parser.prog = title
        parts += [f"## {title}", "", "```", help_text(parser), "```", ""]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    sub.prog = f"{title} {name}"
                    parts += [f"### {title} {name}", "", "```", help_text(sub), "```", ""]
    return "\n".join(parts)


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if DOC.read_text() != text:
            print("docs/cli.md is out of date: run python scripts/gen_cli_doc.py",
                  file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
