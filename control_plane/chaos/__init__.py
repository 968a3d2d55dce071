"""meshlet's Chaos Toolkit extension: actions and probes an experiment names by module.

``control_plane.chaos.actions`` (faults that expire, killing, pausing and restarting
processes, partitions, the control plane down and up), ``control_plane.chaos.probes`` (success
rate, p99, request rate from the sidecars' own metrics, or Prometheus), and the runner behind
``meshlet chaos run`` (``runner.py``: load with locust, a metrics timeline, a report with a plot).
"""
