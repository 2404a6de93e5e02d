"""Shared fixtures.

``analyzed_results``: a real results folder, written by ``normprobe analyze`` (the CLI's code path,
in process) on a tiny randomly initialised encoder (ResNet-18 width 8 + SimCLR projector) and small
real subsets: the first 600 CIFAR-10 train images, the first 200 of CIFAR-10 test, CIFAR-100 test
and MNIST test. Images come from ``$NORMPROBE_DATA`` (default: /work/shared/data).

Without that data mirror (a fresh clone elsewhere), every test that reaches for it is reported as
skipped with one reason instead of failing; CI has the mirror and runs them all.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA_ROOT = Path(os.environ.get("NORMPROBE_DATA", "/work/shared/data"))
# Commands the tests start as subprocesses run without the allocator re-exec (one process each, as
# a killed or timed test expects); the test of the re-exec itself removes this.
os.environ.setdefault("NORMPROBE_NO_REEXEC", "1")
MIRROR_PROBE = "cifar10_test_jpeg.npz"
NO_MIRROR = f"needs the real data mirror: {DATA_ROOT / MIRROR_PROBE} is absent (set NORMPROBE_DATA)"


def _missing_mirror(excinfo: pytest.ExceptionInfo[BaseException]) -> bool:
    """The failure is the data mirror's absence: a file under DATA_ROOT not found, or normprobe
    saying a dataset is not in the data root."""
    from normprobe.errors import NormprobeError

    err = excinfo.value
    if isinstance(err, FileNotFoundError):
        return str(DATA_ROOT) in str(err.filename or err)
    return isinstance(err, NormprobeError | AssertionError) and (
        str(DATA_ROOT) in str(err)
        or "not found in data root" in str(err)
        or "normprobe analyze exited" in str(err)
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``data_mirror`` check what the mirror holds, so they cannot run without it."""
    if item.get_closest_marker("data_mirror") and not (DATA_ROOT / MIRROR_PROBE).is_file():
        pytest.skip(NO_MIRROR)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201 - pytest hook
    outcome = yield
    report = outcome.get_result()
    if (
        report.failed
        and call.excinfo is not None
        and not (DATA_ROOT / MIRROR_PROBE).is_file()
        and _missing_mirror(call.excinfo)
    ):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {NO_MIRROR}")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    """Every test starts from the same random state (torch, numpy, random): a test that draws
    numbers without its own generator still draws the same ones on every run."""
    import random

    import numpy as np
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def analyzed_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from analyze_helpers import SUBSET_SIZES, analyze_args, tiny_checkpoint

    from normprobe.cli import main

    work = tmp_path_factory.mktemp("analyzed")
    out = work / "results"
    argv = analyze_args(
        tiny_checkpoint(work / "tiny.pt"),
        out,
        work / "cache",
        "--id",
        "cifar10",
        "--quiet",
        sizes=SUBSET_SIZES,
    )
    status = main(argv)
    assert status == 0, f"normprobe analyze exited with {status}"
    return out
