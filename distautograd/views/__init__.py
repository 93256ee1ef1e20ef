"""Seeing into the gradient: torch's formula for each node, a context's graph as data and pictures, a trace of a step."""
