"""The node exporter: one per GPU node, reporting every GPU as a GPUDevice and as metrics.

Layout: ``backends/`` (NVML, AMD SMI, Intel xpu-smi, simulated fleet) behind one interface and a
deadline guard; ``fleet`` (the simulated fleet file); ``agent`` (reconciliation and the pure
write-rate decisions); ``kubeapi`` (the thin API layer); ``metrics`` (Prometheus collectors);
``server`` (HTTP endpoints); ``cli`` (``exo-gpu exporter``).
"""
