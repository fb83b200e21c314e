import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The machine's 2 cores are shared: one torch thread keeps small convolutions predictable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU; skipped when torch sees none (tests/test_device.py)")
