"""The FUSE mount options the mount adds from what its LUNs can do."""

from __future__ import annotations

from typing import Any, cast

from blockbridge.initiator.blockdev import BlockDevice
from blockbridge.mount import read_size_option


class Dev:
    def __init__(self, max_io: int) -> None:
        self.max_io = max_io


def tree(*sizes: int) -> Any:
    return {"iqn.2026-12.test:t": {n: cast(BlockDevice, Dev(s)) for n, s in enumerate(sizes)}}


def test_reads_are_no_larger_than_one_read_of_every_lun() -> None:
    assert read_size_option(tree(1 << 20, 256 << 10), ["allow_other"]) == ["max_read=262144"]
    assert read_size_option(tree(1 << 20), []) == ["max_read=1048576"]


def test_a_size_the_user_chose_stays_and_no_lun_adds_nothing() -> None:
    assert read_size_option(tree(256 << 10), ["max_read=65536"]) == []
    assert read_size_option({}, []) == []
