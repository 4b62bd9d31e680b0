"""`--caller-auth tokens`: a YAML file of token digests, for laptops and folder registries.

The file is the truth, so nothing is cached: a request hashes its token and looks the digest
up in the table of the last valid file (unless its connection's last request sent the same
token for the same Application while the same table was in force). The file is watched like
the registry folder (inotify on its folder, debounced, a re-read every second in case events
were lost or the file is a symlink into another folder), so a change applies within about
2 s. A file that turns unreadable or invalid keeps the last valid table serving, and the log
says why once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from pathlib import Path
from typing import Final

from appgateway import filewatch
from appgateway.caller import bearer
from appgateway.caller.outcome import Outcomes, forbidden
from appgateway.caller.tokenfile import TokenFileError, TokenTable, parse_tokens
from appgateway.config import ConfigurationError
from appgateway.errors import CallerUnauthenticated, GatewayError
from appgateway.flow import Pending
from appgateway.metrics import Metrics

log = logging.getLogger("appgateway.caller")

RESCAN_MS: Final = 1000
"""Re-read at least this often: a tiny file, and changes behind a symlink send no event."""


class TokensCallerAuth:
    """Callers and their Applications from `--caller-tokens`."""

    def __init__(self, path: Path, *, metrics: Metrics) -> None:
        self.path = path.absolute()  # watch events name absolute paths
        self.table = TokenTable()
        self.reloads = 0
        """Valid files applied since start; tests wait on it."""
        self._data: bytes | None = None
        self._problem: str | None = None
        self._outcomes = Outcomes(metrics)
        self._watcher = filewatch.Watcher("caller tokens")

    async def start(self) -> None:
        """Load the file (ConfigurationError, exit 2, if unusable), then watch it."""
        data, result = await asyncio.to_thread(self._read)
        if isinstance(result, str):
            raise ConfigurationError(f"--caller-tokens {self.path}: {result}")
        self._install(data, result)
        await self._watcher.start(
            self.path.parent,
            self._changed,
            recursive=False,
            rescan_ms=RESCAN_MS,
            poll_ms=RESCAN_MS,
        )
        await self.reload()  # what changed before the watch existed

    async def stop(self) -> None:
        await self._watcher.stop()

    def authorize(
        self,
        proxy_authorization: bytes | None,
        application: str,
        memo: bearer.Remembers | None = None,
    ) -> str | Pending[str]:
        """Never pending: the table is in memory. A connection's last allowed decision holds
        while the table it was read from is the current one."""
        table = self.table
        # A decision lasts as long as its table (`until` is infinite), so no clock is read.
        recalled = bearer.recall(memo, proxy_authorization, application, table, 0.0)
        if recalled is not None:
            self._outcomes.allowed.inc()
            return recalled.name
        try:
            token = bearer.presented_token(proxy_authorization)
            bearer.check_token(token)
            entry = table.find(hashlib.sha256(token).digest())
            if entry is None:
                raise CallerUnauthenticated(bearer.NOT_ACCEPTED)
            if not entry.allows(application):
                raise forbidden(entry.name, application)
        except GatewayError as error:
            self._outcomes.failed(error)
            raise
        self._outcomes.allowed.inc()
        bearer.remember(memo, proxy_authorization, application, entry.name, table, math.inf)
        return entry.name

    def _read(self) -> tuple[bytes, TokenTable | str]:
        """The file's bytes and its table, or why it cannot be used (in a thread)."""
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            return b"", f"cannot read: {exc.strerror or exc}"
        if data == self._data:
            return data, self.table
        try:
            return data, parse_tokens(data)
        except TokenFileError as exc:
            return data, str(exc)

    def _install(self, data: bytes, table: TokenTable) -> None:
        changed = data != self._data
        self._data = data
        self.table = table
        if changed:
            self.reloads += 1
            fields = {"path": str(self.path), "callers": len(table)}
            log.info("caller tokens loaded", extra={"fields": fields})
        elif self._problem is not None:
            log.info("caller tokens file valid again", extra={"fields": {"path": str(self.path)}})
        self._problem = None

    async def reload(self) -> None:
        """Read the file again; never raises (a broken file keeps the last valid table)."""
        try:
            data, result = await asyncio.to_thread(self._read)
        except Exception as exc:  # the watcher must go on
            result, data = f"cannot read: {exc!r}", b""
        if isinstance(result, TokenTable):
            self._install(data, result)
        elif result != self._problem:
            self._problem = result
            fields = {"path": str(self.path), "error": result, "callers": len(self.table)}
            log.error(
                "caller tokens file rejected, keeping the last valid one", extra={"fields": fields}
            )

    async def _changed(self, changes: set[Path]) -> None:
        """Events on the file, on dot-named entries (a ConfigMap mount swaps its `..data`
        symlink), or none at all (the periodic re-read) mean: read it again."""
        if not changes or any(p == self.path or p.name.startswith(".") for p in changes):
            await self.reload()
