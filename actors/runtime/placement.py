"""Where shards should go: the coordinator's plan, a pure function of the directory."""

from __future__ import annotations

from collections import defaultdict

# (shard, the host it leaves, the host it goes to)
Move = tuple[int, int, int]


def round_limit(shards: int, max_shards: int, max_share: float) -> int:
    """How many shards one rebalance round may move (Akka's absolute and relative
    limits): a round hands them off together, and their callers wait for it."""
    return max(1, min(max_shards, int(shards * max_share)))


def plan_moves(directory: list[int], hosts: int, limit: int) -> list[Move]:
    """Up to `limit` moves toward an even spread of shards over hosts `0..hosts-1`:
    first every shard of a host beyond them (retiring), then from the fullest host to
    the emptiest, until their counts differ by at most one."""
    owned: dict[int, list[int]] = {host: [] for host in range(hosts)}
    retiring: list[tuple[int, int]] = []
    for shard, host in enumerate(directory):
        if host < hosts:
            owned[host].append(shard)
        else:
            retiring.append((shard, host))
    moves: list[Move] = []
    while len(moves) < limit:
        emptiest = min(owned, key=lambda h: (len(owned[h]), h))
        if retiring:
            shard, source = retiring.pop()
        else:
            fullest = max(owned, key=lambda h: (len(owned[h]), -h))
            if len(owned[fullest]) - len(owned[emptiest]) <= 1:
                break
            shard, source = owned[fullest].pop(), fullest
        owned[emptiest].append(shard)
        moves.append((shard, source, emptiest))
    return moves


def by_source(moves: list[Move]) -> dict[int, dict[int, list[int]]]:
    """source host -> target host -> shards: one hand-off per source and round."""
    grouped: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for shard, source, target in moves:
        grouped[source][target].append(shard)
    return {source: dict(targets) for source, targets in grouped.items()}


def is_balanced(directory: list[int], hosts: int) -> bool:
    counts = [0] * hosts
    for host in directory:
        if host >= hosts:
            return False
        counts[host] += 1
    return max(counts) - min(counts) <= 1
