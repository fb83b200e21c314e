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


# `make test` leaves nothing in the repository's runs/ folder: tests write their runs under tmp_path. A run folder
# that appears there during the session fails it, with the folders named.
RUNS = __import__("pathlib").Path(__file__).resolve().parent.parent / "runs"


def _run_folders() -> set:
    return set(RUNS.iterdir()) if RUNS.is_dir() else set()


def pytest_sessionstart(session):
    session.config._runs_before = _run_folders()


def pytest_sessionfinish(session, exitstatus):
    left = sorted(str(p) for p in _run_folders() - getattr(session.config, "_runs_before", set()))
    if left:
        print(f"\ntests left folders in {RUNS} (write runs under tmp_path): {', '.join(left)}")
        session.exitstatus = 1
