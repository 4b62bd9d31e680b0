"""Helpers for the caller authorization tests: the log lines as JSON text, a stand-in
connection. (The API server, its fault-injecting proxy and per-test objects are
tests/conftest.py's.)"""

from __future__ import annotations

import logging

import pytest

from appgateway.caller.bearer import Remembered
from appgateway.logs import JsonFormatter


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record as the JSON line the gateway would write, fields included."""
    formatter = JsonFormatter(logging.getLogger("appgateway"))
    return "\n".join(formatter.format(record) for record in caplog.records)


def lines(caplog: pytest.LogCaptureFixture, msg: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == msg]


class Connection:
    """Stands in for a caller's connection: where it keeps its last allowed decision."""

    def __init__(self) -> None:
        self.caller_memo: Remembered | None = None
