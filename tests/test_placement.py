"""The coordinator's plan: a few shards a round, toward counts that differ by at most one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from actors.runtime.placement import by_source, is_balanced, plan_moves, round_limit


def settle(directory: list[int], hosts: int, limit: int) -> tuple[list[int], int]:
    """Apply plans round after round until there is nothing to move: (directory, rounds)."""
    directory = list(directory)
    rounds = 0
    while moves := plan_moves(directory, hosts, limit):
        assert len(moves) <= limit
        for shard, source, target in moves:
            assert directory[shard] == source and target < hosts
            directory[shard] = target
        rounds += 1
        assert rounds <= len(directory), "the plan does not converge"
    return directory, rounds


def test_adding_hosts_moves_shards_to_them_a_few_at_a_time():
    directory = [s % 2 for s in range(256)]
    first = plan_moves(directory, 4, 20)
    assert len(first) == 20
    assert {target for _, _, target in first} == {2, 3}
    settled, rounds = settle(directory, 4, 20)
    assert sorted(settled.count(h) for h in range(4)) == [64, 64, 64, 64]
    assert rounds == 7  # 128 shards, 20 a round
    # Only what had to move moved: the old hosts kept half of theirs each.
    moved = sum(1 for before, after in zip(directory, settled, strict=True) if before != after)
    assert moved == 128


def test_retiring_hosts_gives_their_shards_to_the_rest():
    directory = [s % 4 for s in range(256)]
    settled, _ = settle(directory, 2, 20)
    assert set(settled) == {0, 1}
    assert settled.count(0) == settled.count(1) == 128
    assert all(after == before for before, after in zip(directory, settled, strict=True)
               if before < 2)


def test_a_balanced_directory_needs_no_move():
    assert plan_moves([s % 3 for s in range(256)], 3, 20) == []
    assert is_balanced([s % 3 for s in range(256)], 3)
    assert not is_balanced([s % 3 for s in range(256)], 2)


def test_round_limits_are_absolute_and_relative():
    assert round_limit(256, 20, 0.1) == 20
    assert round_limit(64, 20, 0.1) == 6
    assert round_limit(4, 20, 0.1) == 1


def test_moves_are_grouped_by_the_host_that_lets_go():
    assert by_source([(1, 0, 2), (5, 0, 3), (7, 1, 2), (9, 0, 2)]) == {
        0: {2: [1, 9], 3: [5]}, 1: {2: [7]}}


@given(st.lists(st.integers(0, 7), min_size=1, max_size=300), st.integers(1, 8),
       st.integers(1, 30))
def test_any_directory_settles_balanced(directory, hosts, limit):
    settled, _ = settle(directory, hosts, limit)
    assert is_balanced(settled, hosts)
    assert max(settled) < hosts
