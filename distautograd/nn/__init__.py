"""torch.distributed.nn's public surface: RemoteModule."""

from distautograd.runtime.remote_modules import RemoteModule

__all__ = ["RemoteModule"]
