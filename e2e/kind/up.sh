#!/usr/bin/env bash
# For users with Docker and kind: create a kind cluster, install the CRDs, print the kubeconfig.
# The project's own tests and demo do not need this (they run the control plane from binaries).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
command -v kind >/dev/null || { echo "kind is not installed" >&2; exit 1; }
kind create cluster --config "$here/cluster.yaml"
kubectl --context kind-exo-gpu apply -f "$here/../../crds/"
echo "kubectl context: kind-exo-gpu"
