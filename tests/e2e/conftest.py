"""The `worker` fixture: a real daemon over real mutual TLS, stopped gracefully afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.daemon import Worker, _worker


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Worker]:
    yield from _worker(tmp_path)
