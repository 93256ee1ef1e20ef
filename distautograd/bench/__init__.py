"""Side-by-side benchmarks of distautograd and torch.distributed.rpc: ``python -m distautograd.bench``."""
