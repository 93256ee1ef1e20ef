"""What torch's rpc tells about itself: debug counters of the agent, the RRefs and the contexts, and GIL profiling."""

from __future__ import annotations

from typing import Dict

from distautograd.runtime import current


def _rref_context_get_debug_info() -> Dict[str, str]:
    """num_owner_rrefs, num_forks, num_pending_futures, num_pending_users (as torch's, strings)."""
    return current.get().rrefs.debug_info()


def _get_debug_info() -> Dict[str, object]:
    """The agent's, the RRefs' and the distributed autograd contexts' counters in one dict."""
    agent = current.get()
    return {**agent.rrefs.debug_info(), **agent.get_debug_info(), **agent.autograd_debug_info()}


def enable_gil_profiling(flag: bool) -> None:
    """Turns on (or off) measuring how long threads wait for the GIL: the agent's debug info then
    holds ``agent.gil_average_wait_time_us``."""
    current.get().gil.enable(bool(flag))
