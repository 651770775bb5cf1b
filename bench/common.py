"""What every part of the benchmark shares: units, names, options, errors."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

OUR_IQN = "iqn.2026-11.local.blockbridge:bench.ours"
TGTD_IQN = "iqn.2026-11.local.blockbridge:bench.tgtd"
INITIATOR = "iqn.2026-11.local.blockbridge:bench.initiator"
# qemu-storage-daemon logs in to the same tgtd target as a blockbridge mount: a name of its
# own keeps tgtd from taking the second login for a reinstatement of the first.
QSD_INITIATOR = "iqn.2026-11.local.blockbridge:bench.qsd"

# Children run in "/", so that `python -m blockbridge` imports the installed package and not
# a checkout that happens to be the current directory.
CHILD_CWD = "/"


class BenchError(Exception):
    """A step of the benchmark failed; the section is reported as failed."""


@dataclass(frozen=True)
class Options:
    runs: int
    seconds: int
    size: int
    quick: bool
    workdir: Path
    drop_caches: bool

    @property
    def stream_bytes(self) -> int:
        """How much dd moves per run."""
        return min(self.size, 128 * MiB) if self.quick else self.size

    @property
    def scale_read_bytes(self) -> int:
        return min(self.size, (64 if self.quick else 256) * MiB)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

