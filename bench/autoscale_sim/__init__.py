"""Trace-driven simulation of GPU model serving under different autoscalers.

``traces`` builds request streams, ``model`` simulates a queue in front of
GPU replicas that take minutes to load, ``policies`` holds Turnpike's real
policy behind an adapter plus re-implementations of the Kubernetes HPA,
Knative's KPA and KEDA's Prometheus scaler, and ``run`` compares them.
"""
