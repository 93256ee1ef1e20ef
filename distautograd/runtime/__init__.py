"""The worker process: its agent, its view of the world, calls, rrefs, and the codec between them."""
