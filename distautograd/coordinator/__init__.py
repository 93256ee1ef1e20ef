"""The control plane: membership and barriers, the records of contexts and passes, and aborting passes when workers go."""
