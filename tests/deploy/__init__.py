"""Tests of what operators run: the compose file in network namespaces, the image and Kubernetes files."""
