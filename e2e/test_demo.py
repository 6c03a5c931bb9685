"""`make demo` end to end: every component as a process, the placement table at the end."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exo.gpu.devcluster.demo import Demo

pytestmark = pytest.mark.cluster


def test_demo_places_everything_and_explains_what_it_cannot(tmp_path: Path) -> None:
    lines: list[str] = []
    assert Demo(workdir=tmp_path, say=lines.append, timeout=240).run() == 0
    report = "\n".join(lines)

    devices = re.findall(r"^(\S+-(?:nvidia|amd|intel|apple|qualcomm)-\d+)\s", report, re.M)
    assert {d.rsplit("-", 2)[1] for d in devices} == {"nvidia", "amd", "intel", "apple",
                                                       "qualcomm"}
    placements = re.findall(r"^(llm-shards|batch-inference|render-pipeline)\s+\S+\s+(\S+)\s+"
                            r"(\S+)\s+(\d+)", report, re.M)
    by_workload: dict[str, int] = {}
    for workload, phase, _device, tasks in placements:
        assert phase in ("Placed", "Running"), (workload, phase)
        by_workload[workload] = by_workload.get(workload, 0) + int(tasks)
    assert by_workload == {"llm-shards": 12, "batch-inference": 40, "render-pipeline": 4}
    # The capacity workload is held to NVIDIA and AMD devices by its selector.
    assert all(re.search(r"-(nvidia|amd)-\d+$", d) for w, _, d, _ in placements
               if w == "batch-inference")

    notebook = re.search(r"^notebook\s+Running\s+(\S+)\s+(\S+)", report, re.M)
    assert notebook and "-nvidia-" in notebook.group(2)
    assert re.search(r"^finetune\s+Running", report, re.M)
    assert re.search(r"^too-big is Pending: .*TooSmall", report, re.M)
    assert len(re.findall(r"^render-pipeline-\S+\s+Running", report, re.M)) == 4
    # Device sets and domains: each 2-GPU shard on an NVLink pair of gpu-node-d, in rack-2.
    shards = re.findall(r"^tp-pairs\s+\S+\s+(?:Placed|Running)\s+(\S+)\s+1\s+\S+\s+\S+\s+"
                        r"(\S+)\s+(\S+)", report, re.M)
    assert sorted((d, partner, domain) for d, partner, domain in shards) == [
        ("gpu-node-d-nvidia-0", "1", "rack=rack-2"), ("gpu-node-d-nvidia-2", "3", "rack=rack-2")]
    assert len(re.findall(r"^  tp-pairs task \d: set score 450: .* NVLink = 450$", report,
                          re.M)) == 2
    pair = re.search(r"^pair-notebook\s+Running\s+(\S+)\s+(\S+)", report, re.M)
    assert pair and pair.group(2).count(",") == 1
    assert re.search(r"^pair-notebook links: score \d+", report, re.M)
