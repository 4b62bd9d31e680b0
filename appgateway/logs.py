"""JSON-lines logging on stderr, and a cheap writer for the per-request access line.

Operators grep and ship these lines, so every line is one self-contained JSON object with a
fixed prefix (`ts`, `level`, `logger`, `msg`). The access log bypasses `logging` because at
tens of thousands of lines per second its record objects, handler locks and formatter calls
would cost more than the proxying itself.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Final, TextIO

from appgateway.errors import GatewayError

_LEVELS: dict[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "dpanic": logging.CRITICAL,
    "panic": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}

_quote: Final = json.encoder.encode_basestring_ascii

_RESERVED = frozenset(("ts", "level", "logger", "msg"))
FLUSH_SECONDS: Final = 0.02
FLUSH_LINES: Final = 512

_MILLIS: Final = tuple(f".{n:03d}" for n in range(1000))
_ACCESS_HEAD: Final = 'Z","level":"info","logger":"access","msg":"request"'


def parse_level(name: str) -> tuple[str, int]:
    """Normalise a level name as accepted by `--log-level` and `PUT /v1/loglevel`."""
    key = name.strip().lower()
    number = _LEVELS.get(key)
    if number is None:
        raise ValueError(f"unrecognized level: {name!r}")
    return ("warn" if key == "warning" else key), number


def level_name(number: int) -> str:
    """The name written in the `level` field: the four levels of the spec only."""
    if number >= logging.ERROR:
        return "error"
    if number >= logging.WARNING:
        return "warn"
    if number >= logging.INFO:
        return "info"
    return "debug"


def format_ts(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds: `2026-11-26T07:10:39.123Z`."""
    whole, millis = divmod(int(seconds * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + _MILLIS[millis] + "Z"


def _millis_text(seconds: float) -> str:
    """Seconds as milliseconds with three decimals ("1.500"), in integer arithmetic."""
    micros = int(seconds * 1_000_000 + 0.5)
    return str(micros // 1000) + _MILLIS[micros % 1000]


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


class LogControl:
    """The current level, shared by the `logging` tree and the access log.

    The level is kept as an int attribute so the access log's check is a single compare.
    """

    def __init__(self, logger: logging.Logger, handler: logging.Handler, level: str) -> None:
        self._logger = logger
        self._handler = handler
        self._name = "info"
        self.levelno = logging.INFO
        self.set_level(level)

    @property
    def level(self) -> str:
        return self._name

    def set_level(self, name: str) -> str:
        normalised, number = parse_level(name)
        self._name = normalised
        self.levelno = number
        self._logger.setLevel(number)
        return normalised

    def close(self) -> None:
        """Detach the handler (tests and re-configuration)."""
        self._logger.removeHandler(self._handler)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line; structured fields come from `extra={"fields": …}`.

    Tracebacks may carry secret values in exception messages, so the full `exc_info` is only
    written when the logger runs at debug; otherwise just the exception class is named.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": format_ts(record.created),
            "level": level_name(record.levelno),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, Mapping):
            for key, value in fields.items():
                name = str(key)
                doc[name + "_" if name in _RESERVED else name] = value
        # `exc_info=False` (or a level test's result) reaches the record as a bool.
        info: object = getattr(record, "exc_info", None)
        if isinstance(info, tuple) and info[0] is not None:
            doc["exc_type"] = info[0].__name__
            if self._logger.getEffectiveLevel() <= logging.DEBUG:
                doc["exc"] = self.formatException(info)
        return _dumps(doc)


class ReportFormatter(logging.Formatter):
    """Plain lines for the stderr of the report commands (`routes`, `access-services`).

    A person reads them, so a registry problem prints as `check` prints it (`error: apps.yaml#1:
    Application/erp: …`), and any other line as `warning: message (key=value, …)`. As in
    JsonFormatter, an exception is named, never traced.
    """

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno >= logging.ERROR:
            word = "error"
        elif record.levelno >= logging.WARNING:
            word = "warning"
        else:
            word = level_name(record.levelno)
        fields = getattr(record, "fields", None)
        details: list[str] = []
        if isinstance(fields, Mapping):
            issue = fields.get("issue")
            if isinstance(issue, str) and len(fields) == 1:
                return f"{word}: {issue}"
            details = [f"{key}={value}" for key, value in fields.items()]
        info: object = getattr(record, "exc_info", None)
        if isinstance(info, tuple) and info[0] is not None:
            details.append(f"exc_type={info[0].__name__}")
        text = f"{word}: {record.getMessage()}"
        return f"{text} ({', '.join(details)})" if details else text


# Names our handler, so a second `setup_logging` replaces rather than duplicates it. (A name,
# not a subclass: instances of a Python subclass defined in a mypyc-compiled module are not
# safe to reference weakly, and `logging` keeps weak references to its handlers.)
_HANDLER_NAME = "appgateway.json"


def setup_logging(level: str, stream: TextIO | None = None) -> LogControl:
    """Route the whole `logging` tree (ours and the libraries') through the JSON formatter."""
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.name == _HANDLER_NAME:
            root.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.name = _HANDLER_NAME
    handler.setFormatter(JsonFormatter(root))
    root.addHandler(handler)
    return LogControl(root, handler, level)


class Call:
    """What one request gathers for its access line and metrics, filled in as it goes."""

    __slots__ = (
        "listener",
        "start",
        "method",
        "path",
        "status",
        "upstream_status",
        "upstream_s",
        "retried",
        "error",
        "request_id",
        "caller",
        "duration_s",
        "bytes_in",
        "bytes_out",
    )

    def __init__(self, listener: str, start: float, method: str, path: str) -> None:
        self.listener = listener
        self.start = start
        self.method = method
        self.path = path  # never the query, not even in logs
        self.status = 0
        self.upstream_status: int | None = None
        self.upstream_s: float | None = None
        self.retried = False
        self.error: GatewayError | None = None
        self.request_id: str | None = None
        self.caller: str | None = None  # the identity `--caller-auth` established
        self.duration_s = 0.0
        self.bytes_in = 0
        self.bytes_out = 0


class AccessLog:
    """Writes the access line straight to a file descriptor or text stream.

    The `ts` prefix up to the second is cached and the fields go through one C-level JSON
    encode (a hand-written encoder measured only ~8% faster), so a line costs a few
    microseconds. Output is ASCII (here and in `JsonFormatter`), so any stream encoding can
    carry it.
    """

    __slots__ = (
        "_control",
        "_fd",
        "_stream",
        "_second",
        "_prefix",
        "_encode",
        "_loop",
        "_pending",
        "_static",
        "_callers",
    )

    def __init__(
        self,
        stream: int | TextIO,
        control: LogControl,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        """With a `loop`, lines are batched for up to FLUSH_SECONDS (or FLUSH_LINES lines)
        and go out in one write: one system call per batch instead of one per loop
        iteration, which under load cost both CPU and the latency of the events queued
        behind it. Stopping flushes what is pending."""
        self._control = control
        self._loop = loop
        self._pending: list[str] = []
        self._static: dict[tuple[str, str, str, str, str], str] = {}
        self._callers: dict[str, str] = {}
        self._fd = stream if isinstance(stream, int) else -1
        self._stream = None if isinstance(stream, int) else stream
        self._second = -1
        self._prefix = ""
        self._encode = json.JSONEncoder(separators=(",", ":"), default=str).encode

    def write(self, fields: dict[str, object]) -> None:
        if self._control.levelno > logging.INFO:
            return
        body = self._encode(fields)
        sep = "," if len(body) > 2 else ""
        line = f"{self._stamp()}{_ACCESS_HEAD}{sep}{body[1:]}\n"
        if self._loop is not None:
            self._batch(line)
            return
        self._emit(line)

    def static_part(self, listener: str, route: str, app: str, service: str, entry: str) -> str:
        """The route-dependent fields as JSON text, cached: they repeat on every request."""
        key = (listener, route, app, service, entry)
        part = self._static.get(key)
        if part is None:
            part = self._encode(
                {
                    "listener": listener,
                    "route": route,
                    "app": app,
                    "service": service,
                    "entry": entry,
                }
            )[1:-1]
            if len(self._static) < 65536:
                self._static[key] = part
        return part

    def request(self, static: str, call: Call) -> None:
        """The access line, formatted by hand: the fields of `write`, several times cheaper.

        `call.method` is one of llhttp's known method tokens, so it needs no escaping; times
        are kept in seconds and written in milliseconds with three decimals.
        """
        if self._control.levelno > logging.INFO:
            return
        q = _quote
        # Every placeholder is a str or an int and none has a format spec: mypyc then builds
        # the line in one C call, where any spec would send every placeholder through
        # str.format.
        duration = _millis_text(call.duration_s)
        upstream_s = call.upstream_s
        upstream = "null" if upstream_s is None else _millis_text(upstream_s)
        upstream_status = call.upstream_status
        error = call.error
        request_id = call.request_id
        caller = call.caller
        line = (
            f'{self._stamp()}{_ACCESS_HEAD},{static},"method":"{call.method}",'
            f'"path":{q(call.path)},"status":{call.status},"upstream_status":'
            f'{"null" if upstream_status is None else str(upstream_status)},"retried":'
            f'{"true" if call.retried else "false"},"duration_ms":{duration},'
            f'"upstream_ms":{upstream},'
            f'"bytes_in":{call.bytes_in},"bytes_out":{call.bytes_out},'
            f'"error":{"null" if error is None else q(error.message)},'
            f'"error_class":{"null" if error is None else q(error.classify())},'
            f'"request_id":{"null" if request_id is None else q(request_id)},'
            f'"caller":{"null" if caller is None else self._caller_json(caller)}}}\n'
        )
        if self._loop is not None:
            self._batch(line)
            return
        self._emit(line)

    def _caller_json(self, name: str) -> str:
        """A caller's name, quoted once: the same few identities call again and again, and
        escaping one (about 50 characters) cost as much as the rest of the line's strings."""
        quoted = self._callers.get(name)
        if quoted is None:
            quoted = _quote(name)
            if len(self._callers) < 4096:
                self._callers[name] = quoted
        return quoted

    def _stamp(self) -> str:
        """`{"ts":"…` up to the milliseconds; the part up to the second is reused."""
        now = int(time.time() * 1000)
        # `//` and `%` stay native integer operations; divmod would be a generic call, and
        # mypyc multiplies numbers this large through a slow path.
        second = now // 1000
        if second != self._second:
            self._second = second
            self._prefix = '{"ts":"' + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLIS[now % 1000]

    def _batch(self, line: str) -> None:
        pending = self._pending
        if not pending:
            assert self._loop is not None
            self._loop.call_later(FLUSH_SECONDS, self.flush)
        pending.append(line)
        if len(pending) >= FLUSH_LINES:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            lines = "".join(self._pending)
            self._pending.clear()
            self._emit(lines)

    def _emit(self, line: str) -> None:
        if self._stream is not None:
            self._stream.write(line)
            self._stream.flush()
            return
        data = line.encode()
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            return  # a full or closed stderr must never fail a request
