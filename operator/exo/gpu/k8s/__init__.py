"""The Kubernetes face of exo-gpu: API models of group ``gpu.exo.dev`` and CRD generation.

The pydantic models in :mod:`exo.gpu.k8s.models` are the single source of the API shape: the CRD
YAML in ``crds/`` is generated from them (:mod:`exo.gpu.k8s.crdgen`), and every component reads
and writes objects through them, so the schema the API server enforces and the code that talks to
it cannot drift apart.
"""

from __future__ import annotations

from .models import (
    API_VERSION,
    GROUP,
    LABEL_MODEL,
    LABEL_NODE,
    LABEL_VENDOR,
    VERSION,
    Condition,
    DeviceAllocation,
    DeviceDisplay,
    DeviceMetrics,
    DeviceTopology,
    GPUDevice,
    GPUDeviceSpec,
    GPUDeviceStatus,
    ObjectMeta,
    device_name,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "LABEL_MODEL",
    "LABEL_NODE",
    "LABEL_VENDOR",
    "VERSION",
    "Condition",
    "DeviceAllocation",
    "DeviceDisplay",
    "DeviceMetrics",
    "DeviceTopology",
    "GPUDevice",
    "GPUDeviceSpec",
    "GPUDeviceStatus",
    "ObjectMeta",
    "device_name",
]
