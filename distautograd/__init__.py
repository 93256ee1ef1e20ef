"""distautograd: a distributed autograd service for PyTorch over gRPC, a drop-in for torch.distributed.rpc."""

__version__ = "0.2.0"
