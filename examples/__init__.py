"""Runnable examples: a parameter server, a pipeline over two workers, a model-parallel RNN."""
