"""Device links and sets (exo.gpu.topology) and the fit's choice of sets, as tables."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exo.gpu.errors import InvalidRequestError
from exo.gpu.fit import FitRequest, choice_priority, choice_rank, choose, fit
from exo.gpu.topology import (
    MAX_EXACT_SETS,
    DeviceLinks,
    DomainKeys,
    DomainLevel,
    LinkType,
    NodeTopology,
    PCIeLevel,
    PeerLink,
    best_set,
    isolation_cost,
    link_score,
    pcie_level_by_numa,
    set_score,
)
from test_fit import NOW, device

NV, SW, PCIE = LinkType.NVLINK, LinkType.NVSWITCH, LinkType.PCIE
L = PCIeLevel


class TestLinkScore:
    @pytest.mark.parametrize(("link", "score"), [
        (None, 0),                                                 # nothing reported
        (PeerLink("b"), 0),                                        # PCIe, level unknown
        (PeerLink("b", PCIE, L.SYSTEM), 10),
        (PeerLink("b", PCIE, L.NUMA_NODE), 20),
        (PeerLink("b", PCIE, L.HOST_BRIDGE), 30),
        (PeerLink("b", PCIE, L.MULTI_SWITCH), 40),
        (PeerLink("b", PCIE, L.SINGLE_SWITCH), 50),
        (PeerLink("b", PCIE, L.SAME_BOARD), 60),
        (PeerLink("b", NV, None, 1), 100),                         # one NVLink, PCIe unknown
        (PeerLink("b", NV, L.SINGLE_SWITCH, 2), 50 + 200),         # NV2 behind one switch
        (PeerLink("b", NV, L.SYSTEM, 12), 10 + 1200),
        (PeerLink("b", SW, L.NUMA_NODE, 18), 20 + 1800),           # NVSwitch, 18 links
        (PeerLink("b", LinkType.XGMI, L.SYSTEM, 1), 10 + 100),
        (PeerLink("b", LinkType.XGMI, L.SYSTEM, 1, hops=2), 10 + 100 // 2),
        (PeerLink("b", LinkType.XELINK, None, 4), 400),
    ])
    def test_table(self, link: PeerLink | None, score: int) -> None:
        assert link_score(link) == score

    def test_any_fabric_link_beats_any_pcie_path(self) -> None:
        worst_fabric = link_score(PeerLink("b", NV, L.SYSTEM, 1))
        best_pcie = link_score(PeerLink("b", PCIE, L.SAME_BOARD))
        assert worst_fabric > best_pcie

    @pytest.mark.parametrize(("kwargs", "field"), [
        ({"peer": ""}, "peer"),
        ({"peer": "b", "type": "Infiniband"}, "type"),
        ({"peer": "b", "level": "Rack"}, "level"),
        ({"peer": "b", "type": "NVLink", "links": 0}, "links"),    # a fabric has links
        ({"peer": "b", "type": "PCIe", "links": 2}, "links"),      # PCIe has none
        ({"peer": "b", "type": "NVLink", "links": 65}, "links"),
        ({"peer": "b", "type": "XGMI", "links": 1, "hops": 0}, "hops"),
        ({"peer": "b", "weight": -1}, "weight"),
    ])
    def test_impossible_links_are_refused_naming_the_field(self, kwargs: dict[str, Any],
                                                           field: str) -> None:
        with pytest.raises(InvalidRequestError) as error:
            PeerLink(**kwargs)
        assert error.value.field == field

    @pytest.mark.parametrize(("numa", "roots", "level"), [
        ((0, 0), ("pci0000:17", "pci0000:17"), L.HOST_BRIDGE),
        ((0, 0), ("pci0000:17", "pci0000:38"), L.NUMA_NODE),
        ((0, 1), (None, None), L.SYSTEM),
        ((None, 1), (None, None), None),
        ((None, None), ("pci0000:17", "pci0000:17"), L.HOST_BRIDGE),
    ])
    def test_level_implied_by_numa_and_roots(self, numa: tuple[Any, Any],
                                             roots: tuple[Any, Any], level: Any) -> None:
        assert pcie_level_by_numa(numa[0], numa[1], roots[0], roots[1]) == level


def pairs_node(n: int = 8, count: int = 2) -> NodeTopology:
    """``n`` devices d0..: NVLink pairs (d0,d1), (d2,d3)...; PCIe NUMANode within a half of the
    node, System across."""
    reports = {}
    for i in range(n):
        peers = []
        for j in range(n):
            if i == j:
                continue
            if i // 2 == j // 2:
                peers.append(PeerLink(f"d{j}", NV, L.SINGLE_SWITCH, count))
            else:
                same = (i < n // 2) == (j < n // 2)
                peers.append(PeerLink(f"d{j}", PCIE, L.NUMA_NODE if same else L.SYSTEM))
        reports[f"d{i}"] = DeviceLinks(0 if i < n // 2 else 1, None, tuple(peers))
    return NodeTopology(reports)


class TestNodeTopology:
    def test_scores_are_symmetric_and_the_better_report_counts(self) -> None:
        topology = NodeTopology({
            "a": DeviceLinks(peers=(PeerLink("b", NV, L.SINGLE_SWITCH, 2),)),
            "b": DeviceLinks(peers=(PeerLink("a", PCIE, L.SYSTEM),)),  # b sees less
        })
        assert topology.score("a", "b") == topology.score("b", "a") == 250
        assert topology.link("b", "a") == PeerLink("a", NV, L.SINGLE_SWITCH, 2)
        assert topology.linked

    def test_a_node_reporting_nothing_is_not_linked(self) -> None:
        topology = NodeTopology({"a": DeviceLinks(), "b": None})
        assert not topology.linked and topology.score("a", "b") == 0


class TestSetScore:
    def test_the_arithmetic(self) -> None:
        topology = pairs_node()
        # d0-d1: NV2 behind a switch = 250; d0-d2, d1-d2: PCIe NUMANode = 20 each.
        score = set_score(["d0", "d1", "d2"], topology)
        assert [(p.a, p.b, p.score) for p in score.pairs] == [
            ("d0", "d1", 250), ("d0", "d2", 20), ("d1", "d2", 20)]
        assert (score.total, score.weakest) == (290, 20)
        assert score.quality == pytest.approx(0.2)        # weakest 20 of one fabric link's 100
        assert "d0-d1: NVLink x2 (SingleSwitch) = 250" in score.describe()

    @pytest.mark.parametrize(("devices", "total", "weakest"), [
        (["d0"], 0, 0),                                   # one device: no pair
        (["d0", "d1"], 250, 250),                         # an NVLink pair
        (["d0", "d2"], 20, 20),                           # same NUMA node, no fabric
        (["d0", "d4"], 10, 10),                           # across the CPUs
        (["d0", "d1", "d2", "d3"], 250 * 2 + 20 * 4, 20),
        (["d0", "d1", "d4", "d5"], 250 * 2 + 10 * 4, 10),
    ])
    def test_table(self, devices: list[str], total: int, weakest: int) -> None:
        score = set_score(devices, pairs_node())
        assert (score.total, score.weakest) == (total, weakest)


def name(x: str) -> str:
    return x


class TestBestSet:
    def test_the_nvlink_pair_beats_better_scored_devices(self) -> None:
        # Best device score first: d0, d2, d4, d6 come before their partners.
        order = ["d0", "d2", "d4", "d6", "d1", "d3", "d5", "d7"]
        assert best_set(order, 2, pairs_node(), name) == ["d0", "d1"]

    def test_four_of_eight_take_two_whole_pairs_on_one_numa_node(self) -> None:
        order = ["d0", "d2", "d4", "d6", "d1", "d3", "d5", "d7"]
        assert sorted(best_set(order, 4, pairs_node(), name)) == ["d0", "d1", "d2", "d3"]

    def test_without_links_the_first_devices(self) -> None:
        assert best_set(["d5", "d1", "d0"], 2, NodeTopology(), name) == ["d5", "d1"]

    def test_preferred_devices_come_before_links(self) -> None:
        order = ["d0", "d1", "d2", "d3"]
        # d2 and d3 are preferred (weight 50): they form a pair too.
        assert best_set(order, 2, pairs_node(), name, [0, 0, 50, 50]) == ["d2", "d3"]
        # Only d2 preferred: the set with d2 and the best links to it.
        assert best_set(order, 2, pairs_node(), name, [0, 0, 50, 0]) == ["d2", "d3"]
        # Preference with no links: preferred first, in the candidates' order.
        assert best_set(order, 2, NodeTopology(), name, [0, 10, 0, 10]) == ["d1", "d3"]

    def test_ties_go_to_the_earlier_candidates(self) -> None:
        order = ["d6", "d7", "d0", "d1"]                  # two equal NVLink pairs
        assert best_set(order, 2, pairs_node(), name) == ["d6", "d7"]

    def test_exact_matches_brute_force(self) -> None:
        topology = pairs_node()
        names = [f"d{i}" for i in range(8)]
        for n in (2, 3, 4, 5):
            chosen = best_set(names, n, topology, name)
            best = max(itertools.combinations(names, n), key=lambda s: (
                set_score(s, topology).total, set_score(s, topology).weakest))
            got = set_score(chosen, topology)
            assert (got.total, got.weakest) == (set_score(best, topology).total,
                                                set_score(best, topology).weakest)

    def test_beyond_the_exact_limit_the_set_is_grown_greedily(self) -> None:
        topology = pairs_node(24)
        names = [f"d{i}" for i in range(24)]
        assert len(list(itertools.combinations(range(24), 8))) > MAX_EXACT_SETS
        chosen = best_set(names, 8, topology, name)
        assert len(chosen) == 8 == len(set(chosen))
        # Greedy from the best pair keeps whole NVLink pairs within one NUMA half.
        score = set_score(chosen, topology)
        assert score.total == 4 * 250 + 24 * 20


class TestIsolationCost:
    @pytest.mark.parametrize(("device", "open_devices", "cost"), [
        ("d0", ["d1", "d2", "d4"], 250 + 20 + 10),        # its partner still free
        ("d0", ["d2", "d4"], 20 + 10),                    # its partner taken: cheap now
        ("d0", [], 0),
        ("d0", ["d0", "d1"], 250),                        # itself does not count
    ])
    def test_table(self, device: str, open_devices: list[str], cost: int) -> None:
        assert isolation_cost(device, open_devices, pairs_node()) == cost


def states(n: int = 8, **kwargs: Any) -> list[Any]:
    out = [device(f"d{i}", **kwargs) for i in range(n)]
    return out


class TestChooseWithLinks:
    def test_two_devices_get_the_nvlink_pair(self) -> None:
        devices = states()
        # d1..d7 busier than d0, d2, d4, d6 would be chosen by score alone.
        order = [devices[i] for i in (0, 2, 4, 6, 1, 3, 5, 7)]
        choice = choose(order, FitRequest(devices=2), NOW, topology=pairs_node())
        assert [d.device_id for d in choice.devices] == ["d0", "d1"]
        assert choice.links is not None and choice.links.total == 250

    def test_without_the_links_the_first_two_by_score(self) -> None:
        devices = states()
        order = [devices[i] for i in (0, 2, 4, 6, 1, 3, 5, 7)]
        choice = choose(order, FitRequest(devices=2), NOW)
        assert [d.device_id for d in choice.devices] == ["d0", "d2"]

    def test_four_single_devices_in_turn_leave_two_whole_pairs(self) -> None:
        devices = states()
        order = [devices[i] for i in (0, 2, 4, 6, 1, 3, 5, 7)]  # partners score lower
        taken = []
        for _ in range(4):
            choice = choose(order, FitRequest(whole_device=True), NOW, topology=pairs_node())
            (chosen,) = choice.devices
            taken.append(chosen.device_id)
            chosen.reserved = chosen.total  # held whole from now on
            chosen.refresh(chosen_policy())
        assert sorted(taken) == ["d0", "d1", "d2", "d3"]
        # Without links the same requests break every pair.
        for d in devices:
            d.reserved = 0
            d.refresh(chosen_policy())
        taken = []
        for _ in range(4):
            (chosen,) = choose(order, FitRequest(whole_device=True), NOW).devices
            taken.append(chosen.device_id)
            chosen.reserved = chosen.total
            chosen.refresh(chosen_policy())
        assert sorted(taken) == ["d0", "d2", "d4", "d6"]

    def test_a_shared_device_takes_more_before_a_whole_one_is_broken(self) -> None:
        devices = states()
        devices[3].reserved = 8 * 1024**3   # d3 already shares its memory
        devices[3].refresh(chosen_policy())
        order = sorted(devices, key=lambda d: (-d.score, d.device_id))
        choice = choose(order, FitRequest(min_memory_bytes=8 * 1024**3), NOW,
                        topology=pairs_node())
        assert [d.device_id for d in choice.devices] == ["d3"]

    def test_a_set_is_of_one_vendor(self) -> None:
        mixed = [device("d0"), device("a1", vendor="amd"), device("d2"), device("a3",
                                                                               vendor="amd")]
        choice = choose(mixed, FitRequest(devices=2), NOW)
        assert [d.device_id for d in choice.devices] == ["d0", "d2"]
        lone = choose(mixed[:3], FitRequest(devices=3), NOW)
        assert [d.device_id for d in lone.devices] == ["d0", "d2"]
        assert [(r.device, str(r.reason), r.message) for r in lone.rejections] == [
            ("a1", "VendorMismatch", "vendor amd cannot join a set of nvidia devices")]

    def test_not_enough_devices_says_why_for_each(self) -> None:
        devices = states(2)
        devices[1].cordoned = True
        devices[1].refresh(chosen_policy())
        choice = choose(devices, FitRequest(devices=2), NOW, topology=pairs_node(2))
        assert [d.device_id for d in choice.devices] == ["d0"]
        assert [(r.device, str(r.reason)) for r in choice.rejections] == [("d1", "Cordoned")]


def chosen_policy() -> Any:
    from exo.gpu.policy import DEFAULT_POLICY

    return DEFAULT_POLICY


class Prefer:
    """Preferred affinity: 30 for label tier=gold, 10 for model=x."""

    total = 40

    def weight(self, labels: dict[str, str]) -> int:
        return 30 * (labels.get("tier") == "gold") + 10 * (labels.get("model") == "x")

    def describe(self) -> str:
        return "tier=gold: 30, model=x: 10"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 80), st.booleans(), st.booleans(),
                          st.one_of(st.none(), st.integers(0, 120))), min_size=1, max_size=8),
       st.integers(1, 4), st.booleans())
def test_the_whole_device_fast_path_is_fit(specs: list[tuple[int, bool, bool, int | None]],
                                           wanted: int, linked: bool) -> None:
    devices = [device(f"d{i}", reserved=reserved * 1024**3, cordoned=cordoned, ready=ready,
                      age=age) for i, (reserved, cordoned, ready, age) in enumerate(specs)]
    request = FitRequest(whole_device=True, devices=wanted)
    assert request.whole and not request.simple
    topology = pairs_node(len(devices)) if linked else None
    fast = choose(devices, request, NOW, topology=topology)
    slow = choose(devices, request, NOW, reserved={}, topology=topology)  # no fast path
    assert [d.device_id for d in fast.devices] == [d.device_id for d in slow.devices]
    assert fast.rejections == slow.rejections
    fitting = [d.device_id for d in devices if fit(d, request, NOW).fits]
    assert {d.device_id for d in fast.devices} <= set(fitting)
    assert len(fast.devices) == min(wanted, len(fitting))


class TestChoiceRank:
    def test_a_single_device_is_worth_its_score(self) -> None:
        d = device("a", used=40 * 1024**3)
        choice = choose([d], FitRequest(), NOW)
        assert choice_rank(choice, FitRequest()) == d.score
        assert choice_priority(choice, FitRequest()) == d.priority

    def test_a_set_averages_its_weakest_device_and_its_weakest_link(self) -> None:
        devices = states(2)
        choice = choose(devices, FitRequest(devices=2), NOW, topology=pairs_node(2))
        weakest = min(d.score for d in devices)
        assert choice_rank(choice, FitRequest(devices=2)) == pytest.approx((weakest + 1.0) / 2)
        unlinked = choose(devices, FitRequest(devices=2), NOW)
        assert choice_rank(unlinked, FitRequest(devices=2)) == pytest.approx(weakest / 2)

    def test_preference_and_domain_are_terms_of_their_own(self) -> None:
        gold = device("g", labels={"tier": "gold"})
        request = FitRequest(prefer=Prefer())
        choice = choose([gold], request, NOW)
        assert choice_rank(choice, request) == pytest.approx((gold.score + 30 / 40) / 2)
        assert choice_rank(choice, request, in_domain=True) == pytest.approx(
            (gold.score + 30 / 40 + 1) / 3)
        assert choice_rank(choice, request, in_domain=False) == pytest.approx(
            (gold.score + 30 / 40 + 0) / 3)

    def test_a_node_that_cannot_take_the_request_is_worth_nothing(self) -> None:
        choice = choose([device("a")], FitRequest(devices=2), NOW)
        assert choice_rank(choice, FitRequest(devices=2)) == 0.0


class TestPreferenceInChoose:
    def test_preferred_device_first_whatever_its_score(self) -> None:
        plain = device("a")
        gold = device("b", used=60 * 1024**3, labels={"tier": "gold"})
        choice = choose([plain, gold], FitRequest(prefer=Prefer()), NOW)
        assert [d.device_id for d in choice.devices] == ["b"]


class TestDomainKeys:
    def test_levels_and_labels(self) -> None:
        keys = DomainKeys(rack="example.com/rack")
        labels = {"topology.kubernetes.io/zone": "z1", "example.com/rack": "r7"}
        assert keys.domain_of("n1", labels, DomainLevel.NODE) == "n1"
        assert keys.domain_of("n1", labels, DomainLevel.RACK) == "r7"
        assert keys.domain_of("n1", labels, DomainLevel.ZONE) == "z1"
        assert keys.domain_of("n1", labels, DomainLevel.BLOCK) is None
        assert [lv.rank for lv in DomainLevel] == [0, 1, 2, 3]

    def test_a_bad_label_key_is_refused(self) -> None:
        with pytest.raises(InvalidRequestError) as error:
            DomainKeys(rack="not a key")
        assert error.value.field == "rack label"
