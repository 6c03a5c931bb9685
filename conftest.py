"""Root conftest: the local control-plane fixtures are shared by tests/ and e2e/."""

pytest_plugins = ["exo.gpu.devcluster.pytest_plugin"]
