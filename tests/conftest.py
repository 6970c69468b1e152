import os
import socket

import pytest
import torch
from classify_runs import write_tiny_task
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _outside_the_checkout(tmp_path, monkeypatch):
    """Every test runs in its own empty folder: relative defaults such as ``--output-dir
    runs/demo`` then never meet (or write into) the checkout's own runs."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection (nothing may download at run time)."""

    def refuse(*args, **kwargs):
        raise AssertionError("tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory):
    """A 4-class shapes task of 32 px (4 train + 3 val per class) for the classification recipes."""
    return write_tiny_task(tmp_path_factory.mktemp("shapes") / "task")
