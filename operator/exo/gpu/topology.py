"""Links between the devices of a node, and how good a set of them is: one score, one choice.

A node's exporter reports, per device, its NUMA node, its PCIe root and one :class:`PeerLink`
per other device of the node: the PCIe path between the two (the closest common ancestor, as
``nvmlDeviceGetTopologyCommonAncestor`` reports it) and, where there is one, the GPU fabric
(NVLink, NVLink through NVSwitch, AMD XGMI, Intel Xe Link) with its number of links.

Everything that compares links asks this module:

- :func:`link_score`: the score of one pair (the table is in its docstring);
- :func:`set_score`: the score of a set of devices, and its pairwise scores, for people;
- :func:`best_set`: which ``n`` of a node's fitting devices a request for ``n`` gets;
- :func:`isolation_cost`: what taking one device away costs the sets still possible, so that a
  one-device request takes the device whose removal breaks the fewest good sets.

And the network's topology, between nodes: :class:`DomainLevel` (node, rack, block, zone) and
:class:`DomainKeys`, which node label names each level's domain (``topology.kubernetes.io/zone``
and configurable rack and block labels). ``exo.gpu.placement`` packs workloads into them.

:class:`NodeTopology` holds one node's pairwise scores (symmetric: when the two ends of a pair
report different links, the better report counts, since a link one end sees exists).
``exo.gpu.fit.choose`` calls :func:`best_set` and :func:`isolation_cost` with it, so the
extender's filter, prioritize and bind and the controller's planner choose the same devices.

Pure: no I/O; the numbers below carry over from HAMi's NVIDIA device plugin, which adds a PCIe
level score (10..60) and 100 per NVLink for a pair of GPUs.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from exo.gpu.errors import InvalidRequestError

__all__ = [
    "DEFAULT_DOMAIN_KEYS",
    "EMPTY_TOPOLOGY",
    "FABRIC_SCORE_PER_LINK",
    "MAX_EXACT_SETS",
    "PCIE_LEVEL_SCORES",
    "DeviceLinks",
    "DomainKeys",
    "DomainLevel",
    "LinkType",
    "NodeTopology",
    "PCIeLevel",
    "PairScore",
    "PeerLink",
    "SetScore",
    "best_set",
    "isolation_cost",
    "link_score",
    "pcie_level_by_numa",
    "set_score",
    "set_totals",
    "weakest_pair",
]

T = TypeVar("T")


class LinkType(StrEnum):
    """The fastest path between two devices of a node."""

    #: Only PCIe (and whatever the CPUs' interconnect adds to it).
    PCIE = "PCIe"
    #: NVLink, GPU to GPU.
    NVLINK = "NVLink"
    #: NVLink through NVSwitch: every GPU of the switch fabric reaches every other.
    NVSWITCH = "NVSwitch"
    #: AMD Infinity Fabric (XGMI).
    XGMI = "XGMI"
    #: Intel Xe Link.
    XELINK = "XeLink"

    @property
    def fabric(self) -> bool:
        """A GPU-to-GPU fabric (anything but plain PCIe)."""
        return self is not LinkType.PCIE


class PCIeLevel(StrEnum):
    """The closest common ancestor of two devices on PCIe (NVML's ``nvmlGpuTopologyLevel_t``),
    best first."""

    #: Two GPUs of one board (NVML ``TOPOLOGY_INTERNAL``; Intel's multi-die fabric).
    SAME_BOARD = "SameBoard"
    #: Under one PCIe switch (``TOPOLOGY_SINGLE``, ``PIX``).
    SINGLE_SWITCH = "SingleSwitch"
    #: Under several PCIe switches, not through a host bridge (``TOPOLOGY_MULTIPLE``, ``PXB``).
    MULTI_SWITCH = "MultiSwitch"
    #: Under one host bridge (``TOPOLOGY_HOSTBRIDGE``, ``PHB``).
    HOST_BRIDGE = "HostBridge"
    #: In one NUMA node, through several host bridges (``TOPOLOGY_NODE``, ``NODE``).
    NUMA_NODE = "NUMANode"
    #: Across NUMA nodes, through the CPUs' interconnect (``TOPOLOGY_SYSTEM``, ``SYS``).
    SYSTEM = "System"


#: The PCIe part of a pair's score, by level (HAMi's figures).
PCIE_LEVEL_SCORES: Mapping[PCIeLevel, int] = {
    PCIeLevel.SAME_BOARD: 60,
    PCIeLevel.SINGLE_SWITCH: 50,
    PCIeLevel.MULTI_SWITCH: 40,
    PCIeLevel.HOST_BRIDGE: 30,
    PCIeLevel.NUMA_NODE: 20,
    PCIeLevel.SYSTEM: 10,
}
#: The fabric part of a pair's score, per link (an NVLink, an XGMI or Xe Link link).
FABRIC_SCORE_PER_LINK = 100
#: Most fabric links a pair may report (NVIDIA's largest GPUs have 18 NVLinks).
MAX_LINKS = 64
#: Above this many candidate sets, :func:`best_set` builds its set greedily (see there).
MAX_EXACT_SETS = 5_000


@dataclass(frozen=True, slots=True)
class PeerLink:
    """How one device reaches another device (``peer``) of its node.

    - ``type``: the fastest path (PCIe when there is no fabric link).
    - ``level``: the PCIe path (closest common ancestor); None when the backend does not say.
    - ``links``: fabric links between the two (NVLinks; for NVSwitch, the fewer of the two
      devices' links to the switches; 0 for PCIe).
    - ``hops``: how many fabric hops the path takes (AMD reports it; 1 is direct).
    - ``weight``: AMD's link weight (lower is closer), kept for people; no rule reads it.
    """

    peer: str
    type: LinkType = LinkType.PCIE
    level: PCIeLevel | None = None
    links: int = 0
    hops: int = 1
    weight: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.peer, str) or not self.peer:
            raise InvalidRequestError("peer", f"must be a device name, got {self.peer!r}")
        object.__setattr__(self, "type", _enum(LinkType, self.type, "type"))
        if self.level is not None:
            object.__setattr__(self, "level", _enum(PCIeLevel, self.level, "level"))
        links = self.links
        if isinstance(links, bool) or not isinstance(links, int) or not 0 <= links <= MAX_LINKS:
            raise InvalidRequestError("links", f"must be an integer within 0..{MAX_LINKS}, "
                                               f"got {links!r}")
        if self.type.fabric and links < 1:
            raise InvalidRequestError("links", f"a {self.type} link has at least one link")
        if not self.type.fabric and links:
            raise InvalidRequestError("links", f"a PCIe path has no fabric links, got {links}")
        hops = self.hops
        if isinstance(hops, bool) or not isinstance(hops, int) or hops < 1:
            raise InvalidRequestError("hops", f"must be an integer >= 1, got {hops!r}")
        weight = self.weight
        if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int)
                                   or weight < 0):
            raise InvalidRequestError("weight", f"must be an integer >= 0, got {weight!r}")

    def describe(self) -> str:
        """``NVLink x4 (SingleSwitch)``, ``PCIe SingleSwitch``, ``XGMI x1, 2 hops``."""
        parts = [str(self.type)]
        if self.type.fabric:
            parts[0] += f" x{self.links}"
            if self.hops > 1:
                parts[0] += f", {self.hops} hops"
            if self.level is not None:
                parts.append(f"({self.level})")
        elif self.level is not None:
            parts.append(str(self.level))
        return " ".join(parts)


def _enum(kind: type[T], value: object, field: str) -> T:
    try:
        return kind(value)  # type: ignore[call-arg]
    except ValueError:
        known = ", ".join(str(v) for v in kind)  # type: ignore[attr-defined]
        raise InvalidRequestError(field, f"unknown value {value!r} (known: {known})") from None


@dataclass(frozen=True, slots=True)
class DeviceLinks:
    """Where one device sits in its node: NUMA node, PCIe root, and its links to the others."""

    numa_node: int | None = None
    #: The PCIe root complex the device hangs off (``pci0000:00``), as sysfs names it.
    pcie_root: str | None = None
    peers: tuple[PeerLink, ...] = ()

    def peer(self, name: str) -> PeerLink | None:
        return next((p for p in self.peers if p.peer == name), None)


def link_score(link: PeerLink | None) -> int:
    """The score of one pair of devices; higher is a faster path. The only definition::

        score = pcie + fabric
        pcie   = SameBoard 60 | SingleSwitch 50 | MultiSwitch 40 | HostBridge 30
                 | NUMANode 20 | System 10 | 0 when the PCIe path is not reported
        fabric = 100 * links // hops   for NVLink, NVSwitch, XGMI and Xe Link
               = 0                     for PCIe alone

    So any fabric link beats any PCIe path, more links beat fewer (NV2 is 200, NV4 400 on top
    of the PCIe part), and a PCIe switch shared by two GPUs beats a path through the CPUs. An
    unknown pair (nothing reported) scores 0.
    """
    if link is None:
        return 0
    score = PCIE_LEVEL_SCORES[link.level] if link.level is not None else 0
    if link.links:
        score += FABRIC_SCORE_PER_LINK * link.links // link.hops
    return score


def pcie_level_by_numa(numa_a: int | None, numa_b: int | None, root_a: str | None = None,
                       root_b: str | None = None) -> PCIeLevel | None:
    """The PCIe level two devices are known to share when a backend reports only NUMA nodes and
    PCIe roots: one root -> HostBridge, one NUMA node -> NUMANode, two -> System, else None."""
    if root_a is not None and root_a == root_b:
        return PCIeLevel.HOST_BRIDGE
    if numa_a is None or numa_b is None:
        return None
    return PCIeLevel.NUMA_NODE if numa_a == numa_b else PCIeLevel.SYSTEM


class NodeTopology:
    """The pairwise link scores of one node's devices (from their :class:`DeviceLinks`).

    Symmetric: ``score(a, b) == score(b, a)``; when the two ends report different links, the
    better one counts. Links to devices the node does not report are kept (a peer may appear
    later) but cost nothing: only pairs of devices being judged are ever looked up.
    """

    __slots__ = ("_links", "_scores", "linked")

    def __init__(self, reports: Mapping[str, DeviceLinks | None] | None = None) -> None:
        links: dict[str, dict[str, PeerLink]] = {}
        scores: dict[str, dict[str, int]] = {}
        for device, report in (reports or {}).items():
            if report is None:
                continue
            for peer in report.peers:
                if peer.peer == device:
                    continue
                score = link_score(peer)
                if score <= scores.get(device, {}).get(peer.peer, -1):
                    continue
                mirrored = PeerLink(device, peer.type, peer.level, peer.links, peer.hops,
                                    peer.weight)
                for a, b, link in ((device, peer.peer, peer), (peer.peer, device, mirrored)):
                    links.setdefault(a, {})[b] = link
                    scores.setdefault(a, {})[b] = score
        self._links = links
        self._scores = scores
        #: Some pair has a link reported: sets are worth comparing.
        self.linked = any(s for row in scores.values() for s in row.values())

    def score(self, a: str, b: str) -> int:
        """:func:`link_score` of the pair (0 when nothing is reported)."""
        row = self._scores.get(a)
        return 0 if row is None else row.get(b, 0)

    def link(self, a: str, b: str) -> PeerLink | None:
        """The link that counts for the pair, as seen from ``a`` (``peer`` is ``b``)."""
        row = self._links.get(a)
        return None if row is None else row.get(b)

    def row(self, a: str) -> Mapping[str, int]:
        """Every reported score of ``a``, by peer."""
        return self._scores.get(a, {})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeTopology) and self._links == other._links

    __hash__ = None  # type: ignore[assignment]


#: The topology of a node that reports no links.
EMPTY_TOPOLOGY = NodeTopology()


@dataclass(frozen=True, slots=True)
class PairScore:
    """One pair of a set, its link and :func:`link_score`."""

    a: str
    b: str
    link: PeerLink | None
    score: int

    def describe(self) -> str:
        link = self.link.describe() if self.link is not None else "no link reported"
        return f"{self.a}-{self.b}: {link} = {self.score}"


@dataclass(frozen=True, slots=True)
class SetScore:
    """A set of devices and how well it is linked (see :func:`set_score`)."""

    devices: tuple[str, ...]
    total: int
    weakest: int
    pairs: tuple[PairScore, ...]

    @property
    def quality(self) -> float:
        """The weakest pair against one fabric link, within 0..1: 1.0 when every pair has a
        fabric link, 0.6 at best on PCIe alone, 0 when a pair reports nothing. A set is as fast
        as its slowest pair for collective operations, so the extender ranks nodes by this."""
        return min(1.0, self.weakest / FABRIC_SCORE_PER_LINK)

    def describe(self) -> str:
        """``score 400 (weakest 200): a-b: NVLink x2 (SingleSwitch) = 250; ...``"""
        pairs = "; ".join(p.describe() for p in self.pairs)
        return f"score {self.total} (weakest {self.weakest}): {pairs}"


def set_score(devices: Sequence[str], topology: NodeTopology) -> SetScore:
    """How well ``devices`` (of one node) are linked. The only definition::

        total   = sum of link_score(a, b) over every pair {a, b} of the set
        weakest = the smallest link_score of a pair (0 for a single device)

    A request for ``n`` devices gets, among the sets of ``n`` devices that fit, the one that
    sorts first by (higher total, higher weakest, better-scored devices): see
    :func:`best_set`. ``pairs`` explains the total pair by pair (placements show it).
    """
    pairs = tuple(PairScore(a, b, topology.link(a, b), topology.score(a, b))
                  for a, b in itertools.combinations(devices, 2))
    return SetScore(tuple(devices), sum(p.score for p in pairs),
                    min((p.score for p in pairs), default=0), pairs)


def set_totals(devices: Sequence[str], topology: NodeTopology) -> tuple[int, int]:
    """``(total, weakest)`` of ``set_score(devices, topology)`` without the explanation (what
    ranking needs)."""
    total = 0
    weakest: int | None = None
    for x, a in enumerate(devices):
        row = topology.row(a)
        for b in devices[x + 1:]:
            score = row.get(b, 0)
            total += score
            if weakest is None or score < weakest:
                weakest = score
    return total, weakest or 0


def weakest_pair(devices: Sequence[str], topology: NodeTopology) -> int:
    """``set_score(devices, topology).weakest``, for ranking."""
    return set_totals(devices, topology)[1]


def isolation_cost(device: str, open_devices: Iterable[str], topology: NodeTopology) -> int:
    """What giving ``device`` to a one-device request costs the sets still possible::

        cost = sum of link_score(device, other) over the other open devices

    (an open device is free as a whole: available, nothing held on it). A device that is not
    open itself costs 0: it is already out of every whole set. A one-device request takes the
    fitting device of lowest cost, so an NVLink pair stays whole while a device with no fast
    partner left is free (HAMi gives one-GPU pods the worst-connected card likewise).
    """
    row = topology.row(device)
    return sum(row.get(other, 0) for other in open_devices if other != device)


def best_set(candidates: Sequence[T], n: int, topology: NodeTopology,
             name: Callable[[T], str], weights: Sequence[int] | None = None) -> list[T]:
    """The ``n`` of ``candidates`` (a node's fitting devices, best device score first) that a
    request for ``n`` devices gets: the set that sorts first by

        (higher preference weight, higher set_score total, higher weakest pair,
         candidates earlier in the order)

    ``weights`` (one per candidate) are the request's preferred-affinity weights, when it has
    any. Every set is compared while there are at most :data:`MAX_EXACT_SETS` of them (every
    set of 2, 4 or 8 of 16 devices); beyond that the set is grown greedily from the best
    pair, adding each time the device that adds the most (same order of keys).
    """
    count = len(candidates)
    if n >= count:
        return list(candidates[:n])
    if n == 1:
        if weights is None:
            return [candidates[0]]
        return [candidates[min(range(count), key=lambda i: (-weights[i], i))]]
    names = [name(c) for c in candidates]
    if not topology.linked:
        if weights is None:
            return list(candidates[:n])
        order = sorted(range(count), key=lambda i: (-weights[i], i))[:n]
        return [candidates[i] for i in sorted(order)]
    matrix = [[topology.score(a, b) for b in names] for a in names]
    if math.comb(count, n) <= MAX_EXACT_SETS:
        chosen = _exact(matrix, count, n, weights)
    else:
        chosen = _greedy(matrix, count, n, weights)
    return [candidates[i] for i in chosen]


def _key(matrix: list[list[int]], members: Sequence[int],
         weights: Sequence[int] | None) -> tuple[int, int, int]:
    total = 0
    weakest: int | None = None
    for x, i in enumerate(members):
        row = matrix[i]
        for j in members[x + 1:]:
            score = row[j]
            total += score
            if weakest is None or score < weakest:
                weakest = score
    preferred = sum(weights[i] for i in members) if weights is not None else 0
    return -preferred, -total, -(weakest or 0)


def _exact(matrix: list[list[int]], count: int, n: int,
           weights: Sequence[int] | None) -> tuple[int, ...]:
    """Every set of ``n``, compared by ``_key`` (written out: this is the hot loop)."""
    within = list(itertools.combinations(range(n), 2))
    best: tuple[int, int, int, tuple[int, ...]] | None = None
    for members in itertools.combinations(range(count), n):
        scores = [matrix[members[a]][members[b]] for a, b in within]
        preferred = sum(weights[i] for i in members) if weights is not None else 0
        key = (-preferred, -sum(scores), -min(scores), members)
        if best is None or key < best:
            best = key
    assert best is not None
    return best[3]


def _greedy(matrix: list[list[int]], count: int, n: int,
            weights: Sequence[int] | None) -> tuple[int, ...]:
    def pair_key(pair: tuple[int, int]) -> tuple[tuple[int, int, int], tuple[int, int]]:
        return _key(matrix, pair, weights), pair

    first: tuple[int, int] = min(itertools.combinations(range(count), 2), key=pair_key)
    chosen = list(first)
    while len(chosen) < n:
        rest = [i for i in range(count) if i not in chosen]
        chosen.append(min(rest, key=lambda i: (_key(matrix, [*chosen, i], weights), i)))
    return tuple(sorted(chosen))


# --------------------------------------------------------------------------------------------
# Network topology: domains of nodes
# --------------------------------------------------------------------------------------------


class DomainLevel(StrEnum):
    """A level of the network topology, smallest first: a node sits in a rack, a rack in a
    block, a block in a zone."""

    NODE = "node"
    RACK = "rack"
    BLOCK = "block"
    ZONE = "zone"

    @property
    def rank(self) -> int:
        """0 for node up to 3 for zone: a domain of a higher rank holds domains of lower ones."""
        return _LEVEL_RANK[self]


_LEVEL_RANK = {level: i for i, level in enumerate(DomainLevel)}

#: The well-known zone label of Kubernetes.
ZONE_LABEL = "topology.kubernetes.io/zone"
#: Default rack and block labels (configurable: ``exo-gpu controller --rack-label``).
RACK_LABEL = "topology.exo.dev/rack"
BLOCK_LABEL = "topology.exo.dev/block"


@dataclass(frozen=True, slots=True)
class DomainKeys:
    """Which node label names each level's domain (a node's own name is its node domain)."""

    zone: str = ZONE_LABEL
    block: str = BLOCK_LABEL
    rack: str = RACK_LABEL

    def __post_init__(self) -> None:
        for level in ("zone", "block", "rack"):
            value = getattr(self, level)
            if not isinstance(value, str) or not value or len(value) > 317 or " " in value:
                raise InvalidRequestError(f"{level} label", f"must be a label key, got {value!r}")

    def label(self, level: DomainLevel) -> str | None:
        """The node label of ``level`` (None for ``node``: the node name)."""
        if level is DomainLevel.NODE:
            return None
        return str(getattr(self, level.value))

    def domain_of(self, node: str, labels: Mapping[str, str] | None,
                  level: DomainLevel) -> str | None:
        """The domain ``node`` belongs to at ``level`` (None: the node does not say)."""
        key = self.label(level)
        if key is None:
            return node
        value = (labels or {}).get(key)
        return value or None


DEFAULT_DOMAIN_KEYS = DomainKeys()
