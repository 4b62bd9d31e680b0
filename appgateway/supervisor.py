"""`--workers N`: N worker processes sharing the proxy ports with SO_REUSEPORT.

The supervisor reserves the proxy ports (bound, not listening, so the kernel hands every
connection to a worker), starts the workers as `appgateway worker` subprocesses configured
through APPGATEWAY_* variables, restarts any that die, and serves the admin listener: ready
means every worker is ready, a log-level change reaches every worker, and /metrics merges
the workers' counters. A worker watches its stdin and stops when the supervisor goes away.

A worker that dies is restarted after a delay that doubles with each of its recent crashes
(RESTART_BASE up to RESTART_CAP), so a worker that crashes at load does not keep the cores
busy. When one worker crashes `--worker-crash-limit` times within CRASH_WINDOW, restarting is
not helping: the supervisor reports unhealthy on /v1/health, stops the other workers and exits
1, so the platform's restart policy (Kubernetes' CrashLoopBackOff) takes over and shows it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from collections import deque

import aiohttp
import uvloop

from appgateway.admin import make_admin_app, start_admin
from appgateway.app import StartupError
from appgateway.config import Settings, settings_environment
from appgateway.logs import LogControl
from appgateway.metrics_merge import MetricsMerger

log = logging.getLogger("appgateway.supervisor")

RESTART_BASE = 1.0
"""Seconds before restarting a worker after its first crash within CRASH_WINDOW."""
RESTART_CAP = 30.0
"""The longest restart delay (reached only with a crash limit above 6, or none)."""
CRASH_WINDOW = 300.0
"""Crashes older than this are forgotten: a worker that ran this long is healthy again."""
POLL_INTERVAL = 0.5
SCRAPE_TIMEOUT = 5.0


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (without listening) so the port stays ours and workers can share it."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class CrashHistory:
    """One worker slot's crashes within the window: they set the restart delay, and enough
    of them mean the supervisor gives up."""

    def __init__(
        self,
        limit: int,
        *,
        window: float = CRASH_WINDOW,
        base: float = RESTART_BASE,
        cap: float = RESTART_CAP,
    ) -> None:
        self.limit = limit
        self.window = window
        self.base = base
        self.cap = cap
        self._times: deque[float] = deque()

    def crashed(self, now: float) -> float:
        """Record a crash at `now` (monotonic seconds); the delay before the next start."""
        while self._times and now - self._times[0] >= self.window:
            self._times.popleft()
        self._times.append(now)
        return min(self.cap, self.base * 2.0 ** min(len(self._times) - 1, 32))

    @property
    def count(self) -> int:
        """Crashes within the window, as of the last `crashed`."""
        return len(self._times)

    @property
    def exhausted(self) -> bool:
        """Whether the limit is reached (never with a limit of 0)."""
        return 0 < self.limit <= len(self._times)


class Worker:
    def __init__(self, index: int, crash_limit: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.admin_port: int | None = None
        self.ready = False
        self.crashes = CrashHistory(crash_limit)


class Supervisor:
    def __init__(self, settings: Settings, control: LogControl) -> None:
        self.settings = settings
        self.control = control
        self.workers = [Worker(i, settings.worker_crash_limit) for i in range(settings.workers)]
        self.stopping = False
        self.crash_loop = False
        """Set when a worker reached the crash limit: unhealthy, and the exit status is 1."""
        self.stop_event = asyncio.Event()
        self.env: dict[str, str] = {}
        self.session: aiohttp.ClientSession | None = None
        self.merger = MetricsMerger()

    def ready(self) -> bool:
        return not self.stopping and all(w.ready for w in self.workers)

    def unhealthy(self) -> str | None:
        return "worker crash loop" if self.crash_loop else None

    async def run(self) -> int:
        settings = self.settings
        loop = asyncio.get_running_loop()
        reserved = [
            reserve_port(settings.host, settings.proxy_port),
            reserve_port(settings.host, settings.proxy_port_compass),
        ]
        try:
            proxy_port = reserved[0].getsockname()[1]
            compass_port = reserved[1].getsockname()[1]
            self.env = settings_environment(
                settings,
                proxy_port=proxy_port,
                proxy_port_compass=compass_port,
                admin_port=0,
                workers=1,
            )
            # Idle connections to a worker's admin listener are dropped before its own
            # deadline (--request-timeout) closes them, so none is reused as it closes.
            self.session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=5),
                connector=aiohttp.TCPConnector(keepalive_timeout=settings.request_timeout / 2),
            )
            app = make_admin_app(
                ready=self.ready,
                log_control=self.control,
                metrics_text=self.metrics_text,
                set_level=self.set_level,
                unhealthy=self.unhealthy,
            )
            runner, admin_port = await start_admin(
                app,
                settings.admin_address,
                settings.admin_port,
                phase_timeout=settings.request_timeout,
            )
            keepers = [loop.create_task(self._keep(worker)) for worker in self.workers]
            poller = loop.create_task(self._poll())
            for name, port in (("proxy", proxy_port), ("compass", compass_port)):
                _listening(name, settings.host, port)
            _listening("admin", settings.admin_address, admin_port)
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self._request_stop)
            await self.stop_event.wait()
            self.stopping = True
            log.info("shutting down workers", extra={"fields": {"workers": len(self.workers)}})
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    worker.process.send_signal(signal.SIGTERM)
            poller.cancel()
            _, pending = await asyncio.wait(keepers, timeout=settings.shutdown_timeout + 5)
            for worker in self.workers:
                if worker.process is not None and worker.process.returncode is None:
                    worker.process.kill()
            for task in pending:
                task.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
            await self.session.close()
            await runner.cleanup()
        finally:
            for sock in reserved:
                sock.close()
        if self.crash_loop:
            log.error("stopped: a worker kept crashing", extra={"fields": {"exit_code": 1}})
            return 1
        log.info("stopped")
        return 0

    def _request_stop(self) -> None:
        if self.stopping:
            os._exit(1)
        self.stop_event.set()

    async def _keep(self, worker: Worker) -> None:
        """Run one worker; restart it whenever it exits before shutdown, later each time it
        keeps crashing, and give up (stopping the supervisor) at the crash limit."""
        loop = asyncio.get_running_loop()
        while not self.stopping:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "appgateway",
                "worker",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=self.env,
            )
            worker.process = process
            assert process.stdout is not None
            line = await process.stdout.readline()
            worker.admin_port = int(line) if line.strip().isdigit() else None
            code = await process.wait()
            worker.ready = False
            worker.admin_port = None
            if self.stopping:
                return
            delay = worker.crashes.crashed(loop.time())
            fields: dict[str, object] = {
                "worker": worker.index,
                "exit_code": code,
                "crashes": worker.crashes.count,
                "window_s": worker.crashes.window,
            }
            if worker.crashes.exhausted:
                self.crash_loop = True
                log.error(
                    "worker crash loop: giving up, exiting so that the platform restarts us",
                    extra={"fields": {**fields, "limit": worker.crashes.limit}},
                )
                self.stop_event.set()
                return
            log.error(
                "worker exited; restarting", extra={"fields": {**fields, "retry_in_s": delay}}
            )
            try:
                await asyncio.wait_for(self.stop_event.wait(), delay)
            except TimeoutError:
                pass

    async def _poll(self) -> None:
        while True:
            for worker in self.workers:
                worker.ready = await self._worker_ready(worker)
            await asyncio.sleep(POLL_INTERVAL)

    async def _worker_ready(self, worker: Worker) -> bool:
        if worker.admin_port is None or self.session is None:
            return False
        try:
            async with self.session.get(self._url(worker, "/v1/ready")) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    def _url(self, worker: Worker, path: str) -> str:
        return f"http://127.0.0.1:{worker.admin_port}{path}"

    async def set_level(self, name: str) -> str:
        level = self.control.set_level(name)
        assert self.session is not None
        for worker in self.workers:
            if worker.admin_port is None:
                continue
            try:
                async with self.session.put(
                    self._url(worker, "/v1/loglevel"), json={"level": level}
                ) as response:
                    await response.read()
            except (aiohttp.ClientError, TimeoutError):
                log.warning(
                    "could not set the level of a worker",
                    extra={"fields": {"worker": worker.index}},
                )
        return level

    async def metrics_text(self) -> bytes:
        """The workers' metrics, asked in parallel and merged so that no counter goes down
        when a worker is restarted or does not answer (metrics_merge.MetricsMerger)."""
        answers = await asyncio.gather(*(self._scrape(worker) for worker in self.workers))
        return self.merger.merge(answers)

    async def _scrape(self, worker: Worker) -> tuple[int, int, bytes | None]:
        process, port = worker.process, worker.admin_port
        pid = process.pid if process is not None else -1
        if port is None or self.session is None:
            return worker.index, pid, None
        try:
            async with self.session.get(
                f"http://127.0.0.1:{port}/metrics",
                timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT),
            ) as response:
                if response.status != 200:
                    return worker.index, pid, None
                return worker.index, pid, await response.read()
        except (aiohttp.ClientError, TimeoutError):
            return worker.index, pid, None


def _listening(listener: str, host: str, port: int) -> None:
    log.info("listening", extra={"fields": {"listener": listener, "address": host, "port": port}})


def run_supervisor(settings: Settings, control: LogControl) -> int:
    try:
        return uvloop.run(Supervisor(settings, control).run())
    except StartupError as exc:
        print(f"appgateway: {exc}", file=sys.stderr)
        return 1


def run_worker(settings: Settings, control: LogControl) -> int:
    """One worker: proxy sockets with SO_REUSEPORT, admin on loopback, port on stdout."""
    from appgateway.app import Gateway, Listeners, bind_socket

    async def main() -> int:
        loop = asyncio.get_running_loop()
        listeners = Listeners(
            proxy=bind_socket(settings.host, settings.proxy_port, reuse_port=True),
            compass=bind_socket(settings.host, settings.proxy_port_compass, reuse_port=True),
        )

        def listening(name: str, port: int) -> None:
            if name == "admin":
                sys.stdout.write(f"{port}\n")
                sys.stdout.flush()

        gateway = Gateway(
            settings,
            control,
            listeners=listeners,
            admin_host="127.0.0.1",
            on_listening=listening,
        )

        def parent_gone() -> None:
            loop.remove_reader(0)
            gateway.request_stop()

        loop.add_reader(0, _drain_stdin, parent_gone)
        return await gateway.run()

    try:
        return uvloop.run(main())
    except StartupError as exc:
        print(f"appgateway: {exc}", file=sys.stderr)
        return 1


def _drain_stdin(on_eof: object) -> None:
    try:
        data = os.read(0, 4096)
    except OSError:
        data = b""
    if not data:
        on_eof()  # type: ignore[operator]
