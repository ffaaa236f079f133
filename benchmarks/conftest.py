"""Benchmark collection and shared fixtures: the scale, an event loop, and the cached logs.

pytest only collects `test_*.py` by default; the hook below also collects this folder's
`bench_*.py` (their functions are `test_*`), without a pytest.ini that would move the rootdir.
Logs are generated once per run (session fixtures) under pytest's temporary directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal

from benchmarks._data import EventMix, Scale, build_log, current_scale, take


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    # a file named on the command line is already collected by pytest's own python plugin
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
        return module
    return None


def pytest_report_header() -> str:
    scale = current_scale()
    return (
        f"benchmark scale: {scale.name} (BENCH_SCALE=smoke|default|full): "
        f"{scale.log_events:,}-event log, histories {scale.histories}"
    )


@pytest.fixture(scope="session")
def scale() -> Scale:
    return current_scale()


@pytest.fixture(scope="session")
def portal() -> Iterator[BlockingPortal]:
    """An asyncio loop in its own thread: async code runs in it through portal.call()."""
    with start_blocking_portal(backend="asyncio") as running:
        yield running


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-data")


@pytest.fixture(scope="session")
def log_db(data_dir: Path, scale: Scale, portal: BlockingPortal) -> Path:
    """The scale's log (100k events by default, 1M at full), built once per run."""
    path = data_dir / f"log-{scale.name}-{scale.log_events}.db"
    events = take(EventMix(seed=20240101), scale.log_events)
    portal.call(build_log, path, events)
    return path


@pytest.fixture(scope="session")
def history_db(data_dir: Path, portal: BlockingPortal) -> Callable[[int], Path]:
    """A factory: the log of `closed` positions opened, marked, partly exited and closed."""
    built: dict[int, Path] = {}

    def get(closed: int) -> Path:
        if closed not in built:
            path = data_dir / f"history-{closed}.db"
            events = EventMix(seed=closed, mean_events=6, positions=closed)
            portal.call(build_log, path, events)
            built[closed] = path
        return built[closed]

    return get
