"""The io_uring binding's encoding and ring bookkeeping, over memory that stands in for the
kernel's (no system call here)."""

from __future__ import annotations

import errno
import struct

import pytest
from blockbridge_target import uring_abi as abi
from blockbridge_target.uring import outcome_of

U32 = struct.Struct("=I")
SQ_ENTRIES, CQ_ENTRIES = 4, 8
# where a made-up kernel puts each field
PARAMS = abi.Params(SQ_ENTRIES, CQ_ENTRIES, 0, abi.IORING_FEAT_SINGLE_MMAP,
                    abi.SQOffsets(head=0, tail=4, ring_mask=8, ring_entries=12, flags=16,
                                  dropped=20, array=64),
                    abi.CQOffsets(head=0, tail=4, ring_mask=8, ring_entries=12, overflow=16,
                                  cqes=64))


class FakeKernel:
    """The kernel's side of a ring: takes submissions, posts completions."""

    def __init__(self, start: int = 0, ordered: bool = True) -> None:
        self.sq = bytearray(64 + 4 * SQ_ENTRIES)
        self.cq = bytearray(64 + 16 * CQ_ENTRIES)
        self.sqes = bytearray(64 * SQ_ENTRIES)
        for ring, entries in ((self.sq, SQ_ENTRIES), (self.cq, CQ_ENTRIES)):
            U32.pack_into(ring, 8, entries - 1)
            U32.pack_into(ring, 12, entries)
            U32.pack_into(ring, 0, start)  # head
            U32.pack_into(ring, 4, start)  # tail
        atomic = None if ordered else abi.atomics()
        self.queues = abi.Queues(memoryview(self.sq), memoryview(self.cq),
                                 memoryview(self.sqes), PARAMS, ordered=ordered, atomic=atomic)

    def word(self, ring: bytearray, at: int) -> int:
        value: int = U32.unpack_from(ring, at)[0]
        return value

    def take(self) -> list[tuple[int, ...]]:
        """Every published submission entry, decoded, as io_uring_enter would."""
        head, tail = self.word(self.sq, 0), self.word(self.sq, 4)
        got = []
        while head != tail:
            index = self.word(self.sq, 64 + 4 * (head & (SQ_ENTRIES - 1)))
            got.append(abi.SQE.unpack_from(self.sqes, 64 * index))
            head = (head + 1) & 0xFFFFFFFF
        U32.pack_into(self.sq, 0, head)
        return got

    def post(self, user_data: int, res: int) -> None:
        tail = self.word(self.cq, 4)
        abi.CQE.pack_into(self.cq, 64 + 16 * (tail & (CQ_ENTRIES - 1)), user_data, res, 0)
        U32.pack_into(self.cq, 4, (tail + 1) & 0xFFFFFFFF)


def test_params_are_encoded_and_decoded_at_the_kernels_offsets() -> None:
    raw = abi.encode_params(0, abi.IORING_SETUP_SUBMIT_ALL)
    assert len(raw) == 120 and struct.unpack_from("=3I", raw) == (0, 0, 128)
    filled = bytearray(raw)
    struct.pack_into("=7I", filled, 0, 256, 512, 128, 0, 0, 0x3FFFF, 0)
    struct.pack_into("=7I", filled, 40, 0, 4, 16, 24, 36, 32, 8256)
    struct.pack_into("=6I", filled, 80, 8, 12, 20, 28, 44, 64)
    p = abi.decode_params(filled)
    assert (p.sq_entries, p.cq_entries, p.flags, p.features) == (256, 512, 128, 0x3FFFF)
    assert p.sq == abi.SQOffsets(0, 4, 16, 24, 36, 32, 8256)
    assert p.cq == abi.CQOffsets(8, 12, 20, 28, 44, 64)


def test_a_submission_entry_has_the_uapi_layout() -> None:
    k = FakeKernel()
    k.queues.push(abi.IORING_OP_READ, 7, 1 << 33, 0xDEADBEEF000, 4096, 0, 42)
    k.queues.push(abi.IORING_OP_FSYNC, 8, 0, 0, 0, abi.IORING_FSYNC_DATASYNC, 43)
    assert k.queues.unsubmitted() == 2
    raw = bytes(k.sqes[:64])
    assert raw[0] == 22 and raw[1] == 0  # opcode, flags
    assert struct.unpack_from("=i", raw, 4)[0] == 7  # fd
    assert struct.unpack_from("=QQII", raw, 8) == (1 << 33, 0xDEADBEEF000, 4096, 0)
    assert struct.unpack_from("=Q", raw, 32)[0] == 42  # user_data
    assert raw[40:] == bytes(24)
    fsync = k.take()[1]
    assert (fsync[0], fsync[3], fsync[7], fsync[8]) == (3, 8, 1, 43)
    assert k.queues.unsubmitted() == 0


@pytest.mark.parametrize("start", [0, 0xFFFFFFFF - 5])  # counters that pass 2**32
def test_heads_and_tails_wrap_around_the_ring_and_the_counter(start: int) -> None:
    k = FakeKernel(start)
    keys = iter(range(1, 1000))
    seen: list[int] = []
    for _round in range(5):  # 15 operations through a ring of 4 and a queue of 8
        batch = [next(keys) for _ in range(3)]
        for key in batch:
            k.queues.push(abi.IORING_OP_READ, 3, key * 512, 0, 512, 0, key)
        taken = [sqe[8] for sqe in k.take()]
        assert taken == batch
        for key in taken:
            k.post(key, 512)
        seen += [key for key, res, _flags in k.queues.reap() if res == 512]
        assert k.queues.reap() == []  # nothing twice
    assert seen == list(range(1, 16))
    assert k.word(k.cq, 0) == k.word(k.cq, 4) == (start + 15) & 0xFFFFFFFF  # head given back


def test_more_operations_than_entries_are_refused_until_the_kernel_takes_some() -> None:
    k = FakeKernel()
    for key in range(SQ_ENTRIES):
        k.queues.push(abi.IORING_OP_READ, 3, 0, 0, 1, 0, key)
    with pytest.raises(OSError) as err:
        k.queues.push(abi.IORING_OP_READ, 3, 0, 0, 1, 0, 99)
    assert err.value.errno == errno.EBUSY
    assert len(k.take()) == SQ_ENTRIES
    k.queues.push(abi.IORING_OP_READ, 3, 0, 0, 1, 0, 99)  # room again


def test_entries_not_taken_can_be_withdrawn() -> None:
    k = FakeKernel(0xFFFFFFFF)
    k.queues.push(abi.IORING_OP_READ, 3, 0, 0, 1, 0, 1)
    k.take()
    k.queues.push(abi.IORING_OP_READ, 3, 0, 0, 1, 0, 2)
    k.queues.push(abi.IORING_OP_WRITE, 3, 0, 0, 1, 0, 3)
    assert k.queues.take_back() == [2, 3]
    assert k.queues.unsubmitted() == 0 and k.take() == []


def test_completions_through_acquire_and_release_accesses() -> None:
    if abi.atomics() is None:
        pytest.skip("no libatomic here")
    k = FakeKernel(0xFFFFFFFE, ordered=False)
    for key in (5, 6, 7):
        k.post(key, -errno.EIO)
    assert [key for key, _res, _flags in k.queues.reap()] == [5, 6, 7]
    assert k.word(k.cq, 0) == 1  # head stored past the wrap
    k.queues.release()


def test_an_error_result_becomes_the_matching_oserror() -> None:
    assert outcome_of(4096).unwrap() == 4096
    with pytest.raises(OSError) as err:
        outcome_of(-errno.EBADF).unwrap()
    assert err.value.errno == errno.EBADF and err.value.strerror == "Bad file descriptor"
    with pytest.raises(FileNotFoundError):
        outcome_of(-errno.ENOENT).unwrap()
    with pytest.raises(PermissionError):
        outcome_of(-errno.EACCES).unwrap()
