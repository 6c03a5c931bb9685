"""The extender's own metrics, on a registry of its own.

kube-scheduler ignores prioritize errors (it only logs them at high verbosity), so a broken scorer
would silently degrade to default scheduling: the error counter here is how an operator sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Filter/prioritize answer from memory in well under a millisecond; bind makes two API calls.
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
            2.5, 5)


@dataclass
class ExtenderMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.latency = Histogram(
            "exo_gpu_extender_request_duration_seconds",
            "Time spent inside the extender per request, by verb.", ["verb"],
            buckets=_BUCKETS, registry=self.registry)
        self.errors = Counter(
            "exo_gpu_extender_errors_total",
            "Requests answered with an error, by verb and reason "
            "(bad_request, not_synced, internal, bind).",
            ["verb", "reason"], registry=self.registry)
        self.nodes = Counter(
            "exo_gpu_extender_filtered_nodes_total",
            "Nodes judged by filter, by result (passed, failed, unresolvable).", ["result"],
            registry=self.registry)
        self.binds = Counter(
            "exo_gpu_extender_binds_total", "Bind requests by result.", ["result"],
            registry=self.registry)
        self.reservations = Gauge(
            "exo_gpu_extender_reservations", "Pods currently holding GPU reservations.",
            registry=self.registry)
