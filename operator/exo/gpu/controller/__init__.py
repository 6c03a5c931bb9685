"""The exo-gpu controller: places ``GPUWorkload`` tasks on the cluster's GPUs (kopf operator).

- :mod:`.planning`: pure placement decisions over the shared ``ClusterView``;
- :mod:`.api`: the one thin layer that talks to the API server (status, pods, events, Lease);
- :mod:`.handlers`: kopf handlers on an explicit registry, the resync loop and device health;
- :mod:`.runner`: ``run_operator(view, ...)`` with production kopf settings and leader election;
- :mod:`.metrics`: cluster gauges on the controller's ``/metrics``;
- :mod:`.cli`: ``exo-gpu controller``, ``exo-gpu plan``, ``exo-gpu top``.

It never imports the extender or the exporter: they meet only in the shared ``ClusterView``.
"""
