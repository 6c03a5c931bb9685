"""Starting and stopping the control plane leaves nothing behind, even when its owner dies."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from exo.gpu.devcluster import wait_for
from exo.gpu.devcluster.cluster import STATE_FILE, _alive

pytestmark = pytest.mark.cluster

# The owner stands for `exo-gpu cluster up` stopped by Ctrl-C. A run started in the background by
# a shell (CI runners, `nohup make test &`) inherits SIGINT ignored, and Python then installs no
# KeyboardInterrupt handler: the owner puts Python's own back.
_OWNER = textwrap.dedent("""
    import json, signal, sys, time, pathlib
    from exo.gpu.devcluster import LocalCluster
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cluster = LocalCluster(workdir=pathlib.Path(sys.argv[1]))
    with cluster:
        print(json.dumps(cluster.pids()), flush=True)
        time.sleep(600)
""")


def _start_owner(workdir: Path) -> tuple[subprocess.Popen[str], dict[str, int]]:
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(workdir)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert owner.stdout is not None
    line = owner.stdout.readline()  # blocks until the cluster is up (or the owner died)
    assert line, "the owner process died before the cluster was ready"
    pids = json.loads(line)
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager",
                         "kube-scheduler", "pod-runner"}
    assert all(_alive(pid) for pid in pids.values())
    return owner, pids


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL],
                         ids=["interrupted", "killed"])
def test_no_orphans_when_the_owner_stops(tmp_path: Path, how: signal.Signals) -> None:
    owner, pids = _start_owner(tmp_path)
    stopped = False
    try:
        owner.send_signal(how)
        # The longest a stop may take: each of the five components gets its grace period to
        # end and as long again after SIGKILL (a loaded machine needs that much; an idle one
        # seconds).
        owner.wait(timeout=5 * 2 * 10.0 + 30)
        wait_for(lambda: not any(_alive(pid) for pid in pids.values()), timeout=30,
                 what=f"every component to exit after {how.name}")
        stopped = True
    finally:  # a failure leaves no cluster running for the rest of the session
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        for pid in () if stopped else pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_cli_up_and_down(tmp_path: Path) -> None:
    exo_gpu = [sys.executable, "-m", "exo.gpu.cli", "cluster"]
    workdir = tmp_path / "c"
    up = subprocess.run([*exo_gpu, "up", "--workdir", str(workdir), "--crds",
                         str(tmp_path / "none")], capture_output=True, text=True, timeout=180)
    assert up.returncode == 0, up.stderr
    state = json.loads((workdir / STATE_FILE).read_text())
    assert f"export KUBECONFIG={state['kubeconfig']}" in up.stdout
    pids = state["pids"].values()
    assert all(_alive(pid) for pid in pids)

    down = subprocess.run([*exo_gpu, "down", "--workdir", str(workdir)],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert "stopped 5 processes" in down.stdout
    assert not any(_alive(pid) for pid in pids)
    assert not (workdir / STATE_FILE).exists()
