from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator

import pytest

from appgateway.errors import UpstreamTimeout
from appgateway.logs import (
    FLUSH_LINES,
    FLUSH_SECONDS,
    AccessLog,
    Call,
    LogControl,
    ReportFormatter,
    _millis_text,
    format_ts,
    level_name,
    parse_level,
    setup_logging,
)

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def stream() -> io.StringIO:
    return io.StringIO()


@pytest.fixture
def control(stream: io.StringIO) -> Iterator[LogControl]:
    root = logging.getLogger()
    saved = root.level
    ctl = setup_logging("info", stream)
    yield ctl
    ctl.close()
    root.setLevel(saved)


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1795677039.123, "2026-11-26T07:10:39.123Z"),
        (1795677039.9999, "2026-11-26T07:10:39.999Z"),
        (951782400.5, "2000-02-29T00:00:00.500Z"),
    ],
)
def test_format_ts(seconds: float, expected: str) -> None:
    assert format_ts(seconds) == expected


@pytest.mark.parametrize(
    ("name", "normalised", "number"),
    [
        ("debug", "debug", logging.DEBUG),
        ("INFO", "info", logging.INFO),
        ("Warn", "warn", logging.WARNING),
        ("warning", "warn", logging.WARNING),
        (" error ", "error", logging.ERROR),
        ("DPanic", "dpanic", logging.CRITICAL),
        ("panic", "panic", logging.CRITICAL),
        ("FATAL", "fatal", logging.CRITICAL),
    ],
)
def test_parse_level(name: str, normalised: str, number: int) -> None:
    assert parse_level(name) == (normalised, number)


@pytest.mark.parametrize("name", ["", "trace", "critical", "infos", "5"])
def test_parse_level_rejects(name: str) -> None:
    with pytest.raises(ValueError, match="unrecognized level"):
        parse_level(name)


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (logging.DEBUG, "debug"),
        (logging.INFO, "info"),
        (logging.WARNING, "warn"),
        (logging.ERROR, "error"),
        (logging.CRITICAL, "error"),
    ],
)
def test_level_name(number: int, name: str) -> None:
    assert level_name(number) == name


def test_line_format_with_fields(control: LogControl, stream: io.StringIO) -> None:
    fields = {"listener": "proxy", "address": "127.0.0.1", "port": 8080, "ok": True, "x": None}
    logging.getLogger("appgateway").info("listening", extra={"fields": fields})
    [doc] = lines(stream)
    assert list(doc)[:4] == ["ts", "level", "logger", "msg"]
    assert TS.match(str(doc["ts"]))
    assert doc["level"] == "info"
    assert doc["logger"] == "appgateway"
    assert doc["msg"] == "listening"
    assert {k: doc[k] for k in fields} == fields


def test_args_are_formatted_and_reserved_fields_kept(
    control: LogControl, stream: io.StringIO
) -> None:
    logging.getLogger("appgateway.x").warning(
        "loaded %d apps", 3, extra={"fields": {"msg": "shadow", "level": 1}}
    )
    [doc] = lines(stream)
    assert doc["msg"] == "loaded 3 apps"
    assert doc["level"] == "warn"
    assert doc["msg_"] == "shadow"
    assert doc["level_"] == 1


def test_level_switching(control: LogControl, stream: io.StringIO) -> None:
    log = logging.getLogger("appgateway.switch")
    log.debug("hidden")
    assert control.set_level("DEBUG") == "debug"
    assert control.level == "debug"
    log.debug("shown")
    assert control.set_level("warning") == "warn"
    assert control.level == "warn"
    log.info("hidden too")
    log.warning("warned")
    assert control.set_level("Fatal") == "fatal"
    assert control.level == "fatal"
    log.error("hidden as well")
    log.critical("critical")
    with pytest.raises(ValueError):
        control.set_level("loud")
    assert control.level == "fatal"
    assert [(d["level"], d["msg"]) for d in lines(stream)] == [
        ("debug", "shown"),
        ("warn", "warned"),
        ("error", "critical"),
    ]


def test_setup_twice_replaces_handler(control: LogControl, stream: io.StringIO) -> None:
    second = io.StringIO()
    ctl = setup_logging("info", second)
    try:
        logging.getLogger("appgateway").info("once")
    finally:
        ctl.close()
    assert stream.getvalue() == ""
    assert [d["msg"] for d in lines(second)] == ["once"]


def _fail() -> None:
    raise RuntimeError("password=hunter2")


def test_exception_trace_only_at_debug(control: LogControl, stream: io.StringIO) -> None:
    log = logging.getLogger("appgateway.exc")
    for level in ("info", "debug"):
        control.set_level(level)
        try:
            _fail()
        except RuntimeError:
            log.error("failed", exc_info=True)
    quiet, verbose = lines(stream)
    assert quiet["exc_type"] == "RuntimeError"
    assert "exc" not in quiet
    assert "hunter2" not in json.dumps(quiet)
    assert "Traceback" in str(verbose["exc"])


ACCESS_FIELDS: dict[str, object] = {
    "listener": "proxy",
    "route": "path",
    "app": "demo",
    "service": "open-api",
    "entry": "open",
    "method": "GET",
    "path": '/demo/open-api/caf\u00e9"\n',
    "status": 200,
    "upstream_status": None,
    "retried": False,
    "duration_ms": 1.25,
    "bytes_in": 0,
    "bytes_out": 1024,
    "request_id": "abc",
}


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.0, "0.000"),
        (0.0015, "1.500"),
        (0.00025, "0.250"),
        (0.0009994, "0.999"),
        (0.0009996, "1.000"),
        (1.2345678, "1234.568"),
        (30.0, "30000.000"),
    ],
)
def test_millis_text_matches_three_decimals(seconds: float, text: str) -> None:
    assert _millis_text(seconds) == text == f"{seconds * 1000:.3f}"


def test_access_log_line(control: LogControl) -> None:
    out = io.StringIO()
    AccessLog(out, control).write(ACCESS_FIELDS)
    text = out.getvalue()
    assert text.endswith("\n") and text.count("\n") == 1
    assert text.isascii()
    doc = json.loads(text)
    assert list(doc)[:4] == ["ts", "level", "logger", "msg"]
    assert TS.match(doc["ts"])
    assert (doc["level"], doc["logger"], doc["msg"]) == ("info", "access", "request")
    assert {k: doc[k] for k in ACCESS_FIELDS} == ACCESS_FIELDS
    assert len(doc) == 4 + len(ACCESS_FIELDS)


def test_access_log_empty_fields(control: LogControl) -> None:
    out = io.StringIO()
    AccessLog(out, control).write({})
    assert set(json.loads(out.getvalue())) == {"ts", "level", "logger", "msg"}


@pytest.mark.parametrize(
    ("level", "written"),
    [("debug", True), ("info", True), ("warn", False), ("error", False), ("panic", False)],
)
def test_access_log_respects_level(control: LogControl, level: str, written: bool) -> None:
    out = io.StringIO()
    access = AccessLog(out, control)
    control.set_level(level)
    access.write({"status": 200})
    assert bool(out.getvalue()) is written


def test_access_log_to_fd(control: LogControl) -> None:
    read_fd, write_fd = os.pipe()
    try:
        access = AccessLog(write_fd, control)
        access.write({"status": 204, "n": 1})
        access.write({"status": 502, "n": 2})
        os.close(write_fd)
        write_fd = -1
        with os.fdopen(read_fd, "rb") as pipe:
            read_fd = -1
            docs = [json.loads(line) for line in pipe.read().splitlines()]
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    assert [(d["status"], d["n"]) for d in docs] == [(204, 1), (502, 2)]


@pytest.mark.parametrize(
    ("path", "upstream_status", "error", "request_id", "caller"),
    [
        ("/a/b", 200, None, None, None),
        ('/we"ird\\path\u00e9', None, "x<y>&z", "req-1", "system:serviceaccount:a:b"),
        ("/", 502, "failed", "", 'we"ird\u00e9'),
    ],
)
def test_access_request_matches_the_generic_writer(
    path: str,
    upstream_status: int | None,
    error: str | None,
    request_id: str | None,
    caller: str | None,
) -> None:
    out = io.StringIO()
    control = setup_logging("info", io.StringIO())
    access = AccessLog(out, control)
    fields: dict[str, object] = {
        "listener": "proxy",
        "route": "path",
        "app": "a",
        "service": "s",
        "entry": "e",
        "method": "GET",
        "path": path,
        "status": 200,
        "upstream_status": upstream_status,
        "retried": True,
        "duration_ms": 1.5,
        "upstream_ms": None if upstream_status is None else 0.25,
        "bytes_in": 3,
        "bytes_out": 4,
        "error": error,
        "error_class": None if error is None else "upstream_timeout",
        "request_id": request_id,
        "caller": caller,
    }
    access.write(fields)
    static = access.static_part("proxy", "path", "a", "s", "e")
    call = Call("proxy", 0.0, "GET", path)
    call.status = 200
    call.upstream_status = upstream_status
    call.retried = True
    call.duration_s = 0.0015
    call.upstream_s = None if upstream_status is None else 0.00025
    call.bytes_in, call.bytes_out = 3, 4
    call.error = None if error is None else UpstreamTimeout(error)
    call.request_id = request_id
    call.caller = caller
    access.request(static, call)
    generic, fast = (json.loads(line) for line in out.getvalue().splitlines())
    generic.pop("ts")
    fast.pop("ts")
    assert list(fast.items()) == list(generic.items())


async def test_access_lines_are_batched_and_flushed_within_the_interval() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    control = setup_logging("info", io.StringIO())
    try:
        access = AccessLog(write_fd, control, asyncio.get_running_loop())
        for n in range(3):
            access.write({"n": n})
        with pytest.raises(BlockingIOError):
            os.read(read_fd, 65536)  # nothing written yet: one write per batch
        await asyncio.sleep(FLUSH_SECONDS * 3)
        lines = os.read(read_fd, 65536).decode().splitlines()
        assert [json.loads(line)["n"] for line in lines] == [0, 1, 2]
        for n in range(FLUSH_LINES):
            access.write({"n": n})
        full = os.read(read_fd, 1 << 20).decode().splitlines()
        assert len(full) == FLUSH_LINES  # a full batch goes at once, without waiting
    finally:
        control.close()
        os.close(read_fd)
        os.close(write_fd)


def _record(level: int, msg: str, fields: object = None, exc: bool = False) -> logging.LogRecord:
    record = logging.LogRecord("appgateway.registry", level, __file__, 1, msg, (), None)
    if fields is not None:
        record.fields = fields
    if exc:
        try:
            raise KeyError("secret-value")
        except KeyError:
            record.exc_info = sys.exc_info()
    return record


ISSUE = "apps.yaml#1: Application/erp: spec.services: must be a list, not mapping"


@pytest.mark.parametrize(
    ("record", "line"),
    [
        # registry problems read as `check` prints them
        (_record(logging.ERROR, "registry error", {"issue": ISSUE}), f"error: {ISSUE}"),
        (
            _record(logging.WARNING, "registry warning", {"issue": "a.yaml#1: x"}),
            "warning: a.yaml#1: x",
        ),
        # anything else: the message and its fields
        (
            _record(logging.WARNING, "registry folder has no manifests", {"path": "/r"}),
            "warning: registry folder has no manifests (path=/r)",
        ),
        (
            _record(logging.ERROR, "registry watch failed", {"error": "gone", "issue": "x"}),
            "error: registry watch failed (error=gone, issue=x)",
        ),
        (_record(logging.CRITICAL, "down"), "error: down"),
        (_record(logging.INFO, "registry updated", {}), "info: registry updated"),
        (_record(logging.DEBUG, "noise", "not a mapping"), "debug: noise"),
        # an exception is named, never traced: its message may hold a secret
        (
            _record(logging.ERROR, "registry reload failed", {"error": "boom"}, exc=True),
            "error: registry reload failed (error=boom, exc_type=KeyError)",
        ),
    ],
)
def test_report_lines(record: logging.LogRecord, line: str) -> None:
    assert ReportFormatter().format(record) == line


def test_caller_names_beyond_what_the_log_remembers_are_quoted_alike() -> None:
    out = io.StringIO()
    access = AccessLog(out, setup_logging("info", io.StringIO()))
    static = access.static_part("proxy", "path", "a", "s", "e")
    names = [f'caller-{n}"\u00e9' for n in range(5000)] + ['caller-0"\u00e9', "caller-4999"]
    for name in names:
        call = Call("proxy", 0.0, "GET", "/")
        call.caller = name
        access.request(static, call)
    assert [json.loads(line)["caller"] for line in out.getvalue().splitlines()] == names
