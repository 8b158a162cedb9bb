"""gateway.workers.anvil: connection counts that two workers share through one mapped file."""

from __future__ import annotations

from pathlib import Path

from gateway.workers.anvil import SharedConnectionLimiter, create_table


def _pair(tmp_path: Path, total: int = 10, per_client: int = 3) -> tuple[SharedConnectionLimiter, ...]:
    path = tmp_path / "anvil"
    create_table(path, workers=2, entries=64)
    return tuple(SharedConnectionLimiter(path, slot, 2, total, per_client) for slot in (0, 1))


def test_the_per_client_limit_counts_both_workers(tmp_path: Path) -> None:
    first, second = _pair(tmp_path)
    assert first.try_acquire("127.0.0.3") and second.try_acquire("127.0.0.3") and first.try_acquire("127.0.0.3")
    assert not second.try_acquire("127.0.0.3")  # the fourth, wherever it lands
    assert not first.try_acquire("127.0.0.3")
    assert second.try_acquire("127.0.0.4")  # another client is not affected
    first.release("127.0.0.3")
    assert second.try_acquire("127.0.0.3")  # a slot came free on the other worker


def test_the_total_limit_counts_both_workers(tmp_path: Path) -> None:
    first, second = _pair(tmp_path, total=3, per_client=10)
    assert first.try_acquire("a") and second.try_acquire("b") and second.try_acquire("c")
    assert not first.try_acquire("d")
    second.release("b")
    assert first.try_acquire("d")


def test_a_restarted_slot_forgets_what_its_dead_process_held(tmp_path: Path) -> None:
    first, second = _pair(tmp_path, per_client=2)
    assert first.try_acquire("x") and first.try_acquire("x")
    assert not second.try_acquire("x")
    path = tmp_path / "anvil"
    restarted = SharedConnectionLimiter(path, 0, 2, 10, 2)  # slot 0 died holding two connections
    restarted.forget_slot()
    assert second.try_acquire("x") and restarted.try_acquire("x")
    assert not second.try_acquire("x")


def test_many_clients_coming_and_going_never_fill_the_table(tmp_path: Path) -> None:
    first, second = _pair(tmp_path, total=1000, per_client=1)
    for round_ in range(20):  # 20 x 40 distinct clients through a 64-entry table
        clients = [f"10.0.{round_}.{n}" for n in range(40)]
        for client in clients:
            assert (first if hash(client) % 2 else second).try_acquire(client), client
        for client in clients:
            (first if hash(client) % 2 else second).release(client)
    assert first.try_acquire("last") and not second.try_acquire("last")
