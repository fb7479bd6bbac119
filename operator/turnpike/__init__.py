"""Turnpike: a Kubernetes operator that serves models on GPUs with Triton."""

__version__ = "0.1.0"
