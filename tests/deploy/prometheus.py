"""A real Prometheus server (and promtool) on loopback for the monitoring tests.

The binaries come from Debian's `prometheus` package, unpacked by scripts/fetch-prometheus.sh
into ~/.cache/appgateway (the first run on a machine downloads it, about 20 MB).
"""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.kustomize import REPO, find, render

_bin_dir: Path | None = None


def prometheus_bin_dir() -> Path:
    global _bin_dir
    if _bin_dir is None:
        result = subprocess.run(
            ["bash", str(REPO / "scripts" / "fetch-prometheus.sh")],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"scripts/fetch-prometheus.sh failed:\n{result.stderr[-5000:]}")
        _bin_dir = Path(result.stdout.strip().splitlines()[-1])
    return _bin_dir


def rule_groups() -> list[dict[str, Any]]:
    """The groups of the PrometheusRule in deploy/monitoring, as a rules file holds them."""
    groups: list[dict[str, Any]] = find(render("monitoring"), "PrometheusRule", "appgateway")[
        "spec"
    ]["groups"]
    return groups


def write_rules(path: Path) -> Path:
    path.write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    return path


def _die_with_parent() -> None:
    """SIGTERM the server if pytest dies without cleaning up (a kill -9)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Prometheus:
    """`prometheus` on 127.0.0.1:`port` with `config`, its data and log in `folder`."""

    def __init__(self, folder: Path, config: dict[str, Any], port: int) -> None:
        self.folder = folder
        self.port = port
        self.config_path = folder / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:
        with (self.folder / "prometheus.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(prometheus_bin_dir() / "prometheus"),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.folder / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.folder,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def log_tail(self) -> str:
        path = self.folder / "prometheus.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as response:
            body = json.loads(response.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now (a scalar becomes one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets_up(self) -> dict[str, str]:
        """Scrape URL -> health of every active target."""
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets")["activeTargets"]}

    def alert_states(self) -> dict[str, str]:
        """Alert name -> state (inactive, pending, firing) of every rule Prometheus runs."""
        states: dict[str, str] = {}
        for group in self.api("rules")["groups"]:
            for rule in group["rules"]:
                assert rule["health"] == "ok", rule
                states[rule["name"]] = rule["state"]
        return states
