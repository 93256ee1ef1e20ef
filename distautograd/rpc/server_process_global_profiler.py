"""torch.distributed.rpc._server_process_global_profile: profile every call a worker serves while it is on."""

from __future__ import annotations

import itertools

import torch
from torch.autograd.profiler_legacy import profile

from distautograd.encoding.allowlist import trusted_global
from distautograd.runtime import profiling


@trusted_global
class _server_process_global_profile(profile):
    """As torch's: the legacy profiler's API, but it profiles every call this process serves while
    it is on (on whichever thread runs them), not the code of the block. Made on a worker through
    ``rpc.remote`` and driven with ``rref.rpc_sync().__enter__()`` / ``__exit__(None, None, None)``;
    afterwards ``function_events`` holds all the calls' events and ``process_global_function_events``
    those of each call.

    Example::

        On worker 0:
            >>> prof = rpc.remote("worker1", rpc._server_process_global_profile)
            >>> prof.rpc_sync().__enter__()
            >>> rpc.rpc_sync("worker1", torch.add, (x, y))
            >>> prof.rpc_sync().__exit__(None, None, None)
            >>> print(prof.rpc_sync().key_averages())
    """

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_serving", None)  # what it collects stays here; its events travel once parsed
        return state

    def __enter__(self):
        if not self.enabled:
            return None
        if self.entered:
            raise RuntimeError("autograd profiler traces are not reentrant")
        self.entered = True
        self._serving = profiling.ServerProfile(self.record_shapes, self.profile_memory)
        profiling.serve_profiled(self._serving)
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        if not self.enabled:
            return False
        profiling.stop_serving_profiled(self._serving)
        per_call = []
        for records in self._serving.records:
            events = torch.autograd.profiler_legacy._parse_legacy_records(records)
            events.sort(key=lambda event: [event.time_range.start, -event.time_range.end])
            per_call.append(events)
        self.function_events = torch.autograd.profiler_util.EventList(
            list(itertools.chain.from_iterable(per_call)), use_device=None, profile_memory=self.profile_memory)
        self.function_events._build_tree()
        self.process_global_function_events = per_call
        return False
