"""The exo-gpu controller: places ``GPUWorkload`` tasks on the cluster's GPUs (kopf operator).

- :mod:`.reconcile`: the reconcile step as a pure decision (pods, status, Events, plan holds);
- :mod:`.planning`: pure placement decisions, asking the core's fit rules with each workload's
  request;
- :mod:`.pods`, :mod:`.health`: the pods of a placement; device heartbeats and summaries;
- :mod:`.reasons`: every phase, condition type, reason and event type, as enums;
- :mod:`.controller`: the thin layer that gathers inputs, decides and performs, and the loops;
- :mod:`.api`: the one layer that talks to the API server (status, pods, events, Lease);
- :mod:`.handlers`: the kopf wiring, on an explicit registry;
- :mod:`.runner`: ``run_operator(view, ...)`` with production kopf settings and leader election;
- :mod:`.metrics`: cluster gauges on the controller's ``/metrics``;
- :mod:`.cli`: ``exo-gpu controller``, ``exo-gpu plan``, ``exo-gpu top``.

It never imports the extender or the exporter: they meet only in the shared ``ClusterView``.
"""
