"""exo-gpu: GPU clustering and scheduling for Kubernetes.

The top-level modules of this package are the pure core library (no Kubernetes, HTTP, NVML or
Prometheus imports, enforced by an import-linter contract). The subpackages hold the parts that
talk to the outside world: ``k8s`` (API models, CRD generation), ``exporter``, ``controller``,
``extender`` and ``devcluster`` (the local control plane used by tests and the demo).
"""

__version__ = "0.1.0"
