"""The control plane: membership, barriers, the registry of contexts, and the driver of every backward pass."""
