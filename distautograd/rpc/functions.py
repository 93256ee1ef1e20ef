"""``async_execution``: functions that answer a call later, through a torch Future, without holding a thread."""

import functools

from distautograd.runtime.remote_methods import ASYNC_ATTR


def async_execution(fn):
    """Marks ``fn`` as returning a ``torch.futures.Future``: the call answers when the future completes.

    Example::

        >>> @rpc.functions.async_execution
        ... def async_add_chained(to, x, y, z):
        ...     return rpc.rpc_async(to, torch.add, args=(x, y)).then(lambda fut: fut.wait() + z)
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs)

    setattr(wrapper, ASYNC_ATTR, True)
    return wrapper
