"""The kube-scheduler extender: filter, prioritize and bind for pods that request gpu.exo.dev/gpu.

One module per extension point (``filter``, ``prioritize``, ``bind``), the wire format in
``wire``, the HTTP server in ``server``. Filter and prioritize answer from a ``ClusterView``
(memory only, no API call); bind chooses the device and commits its reservation under the view's
lock, records it on the pod, and only then creates the Binding.
"""
