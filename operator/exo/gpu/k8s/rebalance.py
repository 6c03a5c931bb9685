"""How workloads and pods opt in to rebalancing (``exo.gpu.rebalance``), on the API.

- ``GPUWorkload.spec.rebalance`` (:class:`RebalanceSpec`): ``enabled`` (default false),
  ``minRuntimeSeconds`` and ``cooldownSeconds`` (default: the cluster's, the controller's
  ``--rebalance-min-runtime`` and ``--rebalance-cooldown``). Out-of-range figures are refused by
  the model and by the API server (the CRD's bounds are ``exo.gpu.rebalance.BOUNDS``), with the
  field named.
- A pod that belongs to no GPUWorkload opts in with the annotation
  ``gpu.exo.dev/rebalance: "true"`` (:data:`ANNOTATION_REBALANCE`) and takes the cluster's
  figures. A pod of a workload follows its workload's ``spec.rebalance``, whatever its own
  annotations say: the workload's owner decides for all its pods.

Nothing acts on these yet: the rebalancing loop that will read them is described in
``docs/rebalancing.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated

from pydantic import Field

from exo.gpu.errors import InvalidRequestError
from exo.gpu.rebalance import BOUNDS, DEFAULT_CONFIG, RebalanceConfig, RebalanceSettings

from .models import KubeModel

__all__ = ["ANNOTATION_REBALANCE", "RebalanceSpec", "pod_settings", "workload_settings"]

#: A pod's opt-in (``"true"`` or ``"false"``); pods of a GPUWorkload follow the workload instead.
ANNOTATION_REBALANCE = "gpu.exo.dev/rebalance"

_RUNTIME = BOUNDS["min_runtime_seconds"]
_COOLDOWN = BOUNDS["cooldown_seconds"]


class RebalanceSpec(KubeModel):
    """Whether the controller may move this workload's tasks off devices under pressure."""

    enabled: bool = Field(
        default=False,
        description=(
            "Let the controller move this workload's tasks off a device that stays overloaded "
            "(hot, its memory taken by others, or busier than its tasks explain) to a device "
            "that scores clearly better, reserving the target first and evicting through the "
            "Eviction API so PodDisruptionBudgets hold."
        ),
    )
    min_runtime_seconds: Annotated[int, Field(ge=_RUNTIME[0], le=_RUNTIME[1])] | None = Field(
        default=None,
        description=(
            f"A task is not moved before it has run this many seconds ({_RUNTIME[0]}.."
            f"{_RUNTIME[1]}; default: the cluster's, {DEFAULT_CONFIG.min_runtime_seconds} "
            "unless the controller is told otherwise)."
        ),
    )
    cooldown_seconds: Annotated[int, Field(ge=_COOLDOWN[0], le=_COOLDOWN[1])] | None = Field(
        default=None,
        description=(
            "At most one move of this workload per this many seconds, and never back to a "
            f"device it left within them ({_COOLDOWN[0]}..{_COOLDOWN[1]}; default: the "
            f"cluster's, {DEFAULT_CONFIG.cooldown_seconds} unless the controller is told "
            "otherwise)."
        ),
    )


def workload_settings(spec: RebalanceSpec | None,
                      config: RebalanceConfig) -> RebalanceSettings:
    """The settings of a workload's pods (not opted in without ``spec.rebalance``)."""
    if spec is None:
        return config.settings(False)
    return config.settings(spec.enabled, spec.min_runtime_seconds, spec.cooldown_seconds)


def pod_settings(annotations: Mapping[str, str] | None,
                 config: RebalanceConfig) -> RebalanceSettings:
    """The settings of a pod that belongs to no workload, from its annotation. A value other
    than ``"true"`` or ``"false"`` raises ``InvalidRequestError`` naming the annotation (the
    loop reports it on the pod and leaves the pod where it is)."""
    value = (annotations or {}).get(ANNOTATION_REBALANCE)
    if value is None or value == "false":
        return config.settings(False)
    if value == "true":
        return config.settings(True)
    raise InvalidRequestError(ANNOTATION_REBALANCE, f'must be "true" or "false", got {value!r}')
