"""--caller-auth tokens in-process: decisions, hot reload within 2 s, broken and missing files
keep the last valid state, ConfigMap-style symlink swaps, and nothing secret in the logs."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from appgateway.caller.tokens import TokensCallerAuth
from appgateway.config import ConfigurationError
from appgateway.errors import CallerForbidden, CallerUnauthenticated
from appgateway.metrics import Metrics
from tests.caller.conftest import Connection, lines, log_text

ALICE = "alice-s3cret-token"
BOB = "bob-s3cret-token"
CI = "ci-s3cret-token"


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def entry(name: str, token: str, apps: str) -> str:
    return f"- {{name: {name}, sha256: {sha(token)}, applications: {apps}}}\n"


def bearer(token: str) -> bytes:
    return b"Bearer " + token.encode()


def decide(
    auth: TokensCallerAuth, token: str | None, app: str, conn: Connection | None = None
) -> str:
    """One decision, which must finish without yielding (tokens mode never waits)."""
    result = auth.authorize(None if token is None else bearer(token), app, conn)
    assert isinstance(result, str)
    return result


Start = Callable[..., Awaitable[TokensCallerAuth]]


@pytest.fixture
async def started() -> AsyncIterator[Start]:
    running: list[TokensCallerAuth] = []

    async def start(path: Path, metrics: Metrics | None = None) -> TokensCallerAuth:
        auth = TokensCallerAuth(path, metrics=metrics or Metrics())
        await auth.start()
        running.append(auth)
        return auth

    yield start
    for auth in running:
        await auth.stop()


async def wait_for(check: Callable[[], bool], within: float = 5.0) -> float:
    """Seconds until `check()` held; fails after `within`."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > within:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


def allowed(auth: TokensCallerAuth, token: str, app: str, conn: Connection | None = None) -> bool:
    try:
        decide(auth, token, app, conn)
    except (CallerUnauthenticated, CallerForbidden):
        return False
    return True


async def test_decisions(started: Start, tmp_path: Path) -> None:
    path = tmp_path / "callers.yaml"
    path.write_text(entry("alice", ALICE, "[erp, crm]") + entry("ci", CI, '["*"]'))
    metrics = Metrics()
    auth = await started(path, metrics)
    assert decide(auth, ALICE, "erp") == "alice"
    assert decide(auth, ALICE, "crm") == "alice"
    assert decide(auth, CI, "anything") == "ci"
    with pytest.raises(CallerForbidden, match="caller alice may not use .* application hr"):
        decide(auth, ALICE, "hr")
    with pytest.raises(CallerUnauthenticated, match="was not accepted"):
        decide(auth, BOB, "erp")
    with pytest.raises(CallerUnauthenticated, match="is missing"):
        decide(auth, None, "erp")
    with pytest.raises(CallerUnauthenticated, match="scheme must be Bearer"):
        auth.authorize(b"Basic " + ALICE.encode(), "erp")
    with pytest.raises(CallerUnauthenticated, match="was not accepted"):
        decide(auth, sha(ALICE), "erp")  # the digest itself is no token
    counts = {
        r: metrics.caller_decisions(r).value
        for r in ("allowed", "denied", "unauthenticated", "unavailable")
    }
    assert counts == {"allowed": 3, "denied": 1, "unauthenticated": 4, "unavailable": 0}


async def test_changes_apply_within_two_seconds(started: Start, tmp_path: Path) -> None:
    path = tmp_path / "callers.yaml"
    path.write_text(entry("alice", ALICE, "[erp]"))
    auth = await started(path)
    assert not allowed(auth, BOB, "erp")
    took: list[float] = []
    path.write_text(entry("alice", ALICE, "[erp]") + entry("bob", BOB, "[erp]"))
    took.append(await wait_for(lambda: allowed(auth, BOB, "erp")))
    path.write_text(entry("bob", BOB, "[erp, crm]"))  # alice removed, bob gains crm
    took.append(await wait_for(lambda: not allowed(auth, ALICE, "erp")))
    assert allowed(auth, BOB, "crm")
    tmp = tmp_path / "callers.yaml.tmp"  # an atomic replace, as editors and config tools do
    tmp.write_text(entry("bob", BOB, "[hr]"))
    os.replace(tmp, path)
    took.append(await wait_for(lambda: not allowed(auth, BOB, "crm")))
    assert allowed(auth, BOB, "hr")
    print(f"\ntokens file change -> applied: {', '.join(f'{t * 1000:.0f} ms' for t in took)}")
    assert max(took) < 2.0


async def test_a_connection_keeps_its_decision_only_while_the_file_is_unchanged(
    started: Start, tmp_path: Path
) -> None:
    path = tmp_path / "callers.yaml"
    path.write_text(entry("alice", ALICE, "[erp]") + entry("bob", BOB, "[erp]"))
    metrics = Metrics()
    auth = await started(path, metrics)
    conn = Connection()
    assert [decide(auth, ALICE, "erp", conn) for _ in range(3)] == ["alice"] * 3
    memo = conn.caller_memo
    assert memo is not None and memo.source is auth.table
    assert not allowed(auth, ALICE, "crm", conn)  # decided as themselves: 403, 407
    assert not allowed(auth, BOB + "x", "erp", conn)
    assert conn.caller_memo is memo  # only allowed decisions are kept
    path.write_text(entry("alice", ALICE, "[erp]") + entry("bob", BOB, "[erp]"))  # the same
    await asyncio.sleep(1.2)  # one re-read at least
    assert decide(auth, ALICE, "erp", conn) == "alice" and conn.caller_memo is memo
    counts = {r: metrics.caller_decisions(r).value for r in ("allowed", "denied")}
    assert counts == {"allowed": 4, "denied": 1}  # recalled decisions are counted too
    path.write_text(entry("bob", BOB, "[erp]"))  # alice withdrawn
    took = await wait_for(lambda: not allowed(auth, ALICE, "erp", conn))
    assert took < 2.0
    assert decide(auth, BOB, "erp", conn) == "bob"


async def test_a_broken_file_keeps_the_last_valid_state(
    started: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appgateway.caller")
    path = tmp_path / "callers.yaml"
    path.write_text(entry("alice", ALICE, "[erp]"))
    auth = await started(path)
    loaded = auth.reloads
    # A pasted token instead of its digest: rejected, and the log never shows it.
    path.write_text(f"- {{name: bob, sha256: {BOB}, applications: [erp]}}\n")
    await wait_for(
        lambda: bool(lines(caplog, "caller tokens file rejected, keeping the last valid one"))
    )
    assert allowed(auth, ALICE, "erp") and not allowed(auth, BOB, "erp")
    (line,) = lines(caplog, "caller tokens file rejected, keeping the last valid one")
    assert line.levelno == logging.ERROR
    fields = line.fields  # type: ignore[attr-defined]
    assert fields["error"].startswith("entry 1 ('bob'): sha256 must be 64 lower-case hex")
    assert fields["callers"] == 1 and fields["path"] == str(path)
    path.write_text("- {name: [")  # invalid YAML: reported too, once
    await wait_for(
        lambda: len(lines(caplog, "caller tokens file rejected, keeping the last valid one")) == 2
    )
    await asyncio.sleep(1.5)  # the periodic re-reads do not repeat the line
    assert len(lines(caplog, "caller tokens file rejected, keeping the last valid one")) == 2
    assert allowed(auth, ALICE, "erp")
    path.write_text(entry("bob", BOB, "[erp]"))
    await wait_for(lambda: allowed(auth, BOB, "erp"))
    assert not allowed(auth, ALICE, "erp")
    assert auth.reloads == loaded + 1
    text = log_text(caplog)
    for secret in (ALICE, BOB, sha(ALICE), sha(BOB)):
        assert secret not in text


async def test_a_removed_file_keeps_the_last_valid_state(
    started: Start, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appgateway.caller")
    path = tmp_path / "callers.yaml"
    path.write_text(entry("alice", ALICE, "[erp]"))
    auth = await started(path)
    path.unlink()
    await wait_for(
        lambda: bool(lines(caplog, "caller tokens file rejected, keeping the last valid one"))
    )
    assert allowed(auth, ALICE, "erp")
    (line,) = lines(caplog, "caller tokens file rejected, keeping the last valid one")
    assert line.fields["error"].startswith("cannot read")  # type: ignore[attr-defined]
    path.write_text(entry("alice", ALICE, "[crm]"))
    await wait_for(lambda: allowed(auth, ALICE, "crm"))


async def test_a_configmap_symlink_swap_applies(started: Start, tmp_path: Path) -> None:
    """A ConfigMap volume: tokens.yaml -> ..data/tokens.yaml, and an update swaps `..data`."""
    mount = tmp_path / "mount"
    mount.mkdir()
    for version, text in (
        ("..v1", entry("alice", ALICE, "[erp]")),
        ("..v2", entry("bob", BOB, "[erp]")),
    ):
        (mount / version).mkdir()
        (mount / version / "tokens.yaml").write_text(text)
    (mount / "..data").symlink_to("..v1")
    (mount / "tokens.yaml").symlink_to("..data/tokens.yaml")
    auth = await started(mount / "tokens.yaml")
    assert allowed(auth, ALICE, "erp")
    (mount / "..data_tmp").symlink_to("..v2")
    os.replace(mount / "..data_tmp", mount / "..data")
    took = await wait_for(lambda: allowed(auth, BOB, "erp"))
    assert not allowed(auth, ALICE, "erp")
    assert took < 2.0


async def test_a_file_elsewhere_behind_a_symlink_is_read_again(
    started: Start, tmp_path: Path
) -> None:
    """No event reaches the watched folder when the symlink's target changes: the periodic
    re-read still applies it within 2 s."""
    (tmp_path / "secret").mkdir()
    (tmp_path / "etc").mkdir()
    target = tmp_path / "secret" / "tokens.yaml"
    target.write_text(entry("alice", ALICE, "[erp]"))
    (tmp_path / "etc" / "callers.yaml").symlink_to(target)
    auth = await started(tmp_path / "etc" / "callers.yaml")
    target.write_text(entry("bob", BOB, "[erp]"))
    assert await wait_for(lambda: allowed(auth, BOB, "erp")) < 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read"),
        ("", "the file is empty"),
        ("- {name: x}", "entry 1 ('x'): sha256 must be"),
    ],
)
async def test_an_unusable_file_at_start_is_a_configuration_error(
    tmp_path: Path, text: str | None, message: str
) -> None:
    path = tmp_path / "callers.yaml"
    if text is not None:
        path.write_text(text)
    auth = TokensCallerAuth(path, metrics=Metrics())
    with pytest.raises(ConfigurationError) as info:
        await auth.start()
    assert str(info.value).startswith(f"--caller-tokens {path}: {message}")
    await auth.stop()


async def test_stop_ends_the_watch(tmp_path: Path) -> None:
    path = tmp_path / "callers.yaml"
    path.write_text("[]")
    auth = TokensCallerAuth(path, metrics=Metrics())
    await auth.start()
    task = auth._watcher.task
    assert task is not None and not task.done()
    started = time.monotonic()
    await auth.stop()
    assert task.done() and time.monotonic() - started < 2.5
