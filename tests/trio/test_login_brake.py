"""The brute-force brake: per address, answers held and spaced, a bounded table."""

from __future__ import annotations

from blockbridge_target.server import LoginBrake, address_key


def test_failures_past_the_free_ones_are_held_and_spaced() -> None:
    brake = LoginBrake(max_delay=10)
    holds = [brake.hold("10.0.0.1", 0.0, failed=True) for _ in range(6)]
    # 1, 2, 4, 8 s, and one after the other: each answer waits for the one before
    assert holds == [0, 0, 1, 3, 7, 15]
    assert brake.hold("10.0.0.2", 0.0, failed=True) == 0  # other addresses unaffected
    assert brake.hold("10.0.0.1", 61.0, failed=True) == 0  # the minute has passed


def test_a_success_waits_as_long_as_a_failure_would() -> None:
    right, wrong = LoginBrake(max_delay=10), LoginBrake(max_delay=10)
    for brake in (right, wrong):
        for _ in range(3):
            brake.hold("a", 5.0, failed=True)
    assert right.hold("a", 5.0, failed=False) == wrong.hold("a", 5.0, failed=True) > 0
    # a success does not wipe the record: it is no way to reset the brake
    assert right.failures("a", 5.0) == 3


def test_unpenalised_successes_are_not_held() -> None:
    brake = LoginBrake()
    assert brake.hold("a", 0.0, failed=True) == 0
    assert brake.hold("a", 0.0, failed=False) == 0
    assert len(brake) == 1


def test_the_cap_applies_and_zero_turns_the_brake_off() -> None:
    brake = LoginBrake(max_delay=0.5)
    holds = [brake.hold("a", 0.0, failed=True) for _ in range(6)]
    assert holds == [0, 0, 0.5, 1.0, 1.5, 2.0]
    off = LoginBrake(max_delay=0)
    assert all(off.hold("a", 0.0, failed=True) == 0 for _ in range(10))


def test_the_table_is_pruned_and_bounded() -> None:
    brake = LoginBrake(max_addresses=100)
    for i in range(1000):
        brake.hold(f"10.0.{i // 256}.{i % 256}", 0.0, failed=True)
    assert len(brake) == 100
    brake.hold("10.9.9.9", 61.0, failed=True)  # every other entry's minute has passed
    assert len(brake) == 1


def test_ipv6_addresses_count_per_64() -> None:
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("192.0.2.1") == "192.0.2.1"
