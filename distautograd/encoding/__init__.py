"""What crosses the wire: tensors as raw bytes, everything else as a restricted pickle."""
