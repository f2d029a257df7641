"""Shared test set-up.

Root-only tests carry the `root` marker. Under CI=true a skipped test is a
failure: the suite must prove isolation, not merely not disprove it. The only
allowed skips carry a reason starting with "allowed skip:" (e.g. pwsh absent).
"""

from __future__ import annotations

import os

import pytest

ALLOWED_SKIP = "allowed skip:"
IN_CI = os.environ.get("CI") == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: real uids, namespaces and cgroups")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not IN_CI:
        return
    bad = [
        rep
        for rep in terminalreporter.stats.get("skipped", [])
        if ALLOWED_SKIP not in str(rep.longrepr)
    ]
    if bad:
        terminalreporter.write_line(
            f"CI=true: {len(bad)} test(s) skipped; a skipped isolation test is a failure", red=True
        )
        for rep in bad:
            terminalreporter.write_line(f"  skipped: {rep.nodeid}: {rep.longrepr}")
        terminalreporter._session.exitstatus = pytest.ExitCode.TESTS_FAILED  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not IN_CI:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if any(ALLOWED_SKIP not in str(rep.longrepr) for rep in skipped):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
