"""distautograd: a distributed autograd service for PyTorch over gRPC, a drop-in for torch.distributed.rpc."""

__version__ = "0.1.0"
