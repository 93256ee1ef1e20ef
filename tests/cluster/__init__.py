"""Tests against real clusters on this machine: coordinator and workers as processes, real sockets."""
