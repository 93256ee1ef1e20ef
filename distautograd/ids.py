"""64-bit ids minted without coordination: the minting worker's rank in the high 16 bits, a counter below."""

import itertools
import threading

RANK_SHIFT = 48
_COUNTER_MASK = (1 << RANK_SHIFT) - 1
MAX_RANK = (1 << 16) - 1


class IdMint:
    def __init__(self, rank: int = 0):
        self.rank = rank
        self._counter = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return (self.rank << RANK_SHIFT) | (next(self._counter) & _COUNTER_MASK)


def rank_of(id_: int) -> int:
    """The rank of the worker that minted ``id_``."""
    return id_ >> RANK_SHIFT
