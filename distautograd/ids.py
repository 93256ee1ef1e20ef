"""64-bit ids minted without coordination: the minting worker's rank in the high 16 bits, a counter below.

A worker that leaves and comes back under its name gets its old rank, while its peers still remember
ids its first life minted (freed RRefs, contexts). So the counter starts at the wall clock in
microseconds: a later life starts past every id an earlier one could have minted (Python mints far
fewer than one id per microsecond), and the 48 bits wrap only after 8.9 years.
"""

import itertools
import threading
import time

RANK_SHIFT = 48
_COUNTER_MASK = LOCAL_MASK = (1 << RANK_SHIFT) - 1
MAX_RANK = (1 << 16) - 1


class IdMint:
    def __init__(self, rank: int = 0):
        self.rank = rank
        self._counter = itertools.count(max(1, (time.time_ns() // 1000) & _COUNTER_MASK))
        self._lock = threading.Lock()

    def __call__(self) -> int:
        with self._lock:
            return (self.rank << RANK_SHIFT) | (next(self._counter) & _COUNTER_MASK)

    def max_id(self) -> int:
        return (self.rank << RANK_SHIFT) | _COUNTER_MASK


def rank_of(id_: int) -> int:
    """The rank of the worker that minted ``id_``."""
    return id_ >> RANK_SHIFT
