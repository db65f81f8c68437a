"""Counts the reliability catalogue (tests marked ``catalogue``) and prints it after the run.

A test joins the catalogue with ``@pytest.mark.catalogue("area")``; parametrised cases count one each, so
the summary says how many bad inputs and faults were actually tried, by area.
"""

from __future__ import annotations

from collections import Counter

import pytest

_tried: Counter[str] = Counter()
_failed: Counter[str] = Counter()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "catalogue(area): a case of the reliability catalogue (bad input or fault)")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when != "call" and not (report.when == "setup" and report.outcome != "passed"):
        return
    area = next((m[1] for m in report.user_properties if m[0] == "catalogue"), None)
    if area is None:
        return
    _tried[area] += 1
    if report.outcome == "failed":
        _failed[area] += 1


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("catalogue")
    if marker is not None:
        item.user_properties.append(("catalogue", marker.args[0] if marker.args else "other"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _tried:
        return
    areas = ", ".join(f"{area} {n}" + (f" ({_failed[area]} failed)" if _failed[area] else "")
                      for area, n in sorted(_tried.items()))
    terminalreporter.write_line(f"reliability catalogue: {sum(_tried.values())} cases tried ({areas})")
