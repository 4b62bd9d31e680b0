"""Memory held per stalled download: callers that ask for a large body and never read it.

Run by hand: `.venv/bin/python bench/stalled.py [--callers 200] [--size-mb 20]`. A raw-socket
target answers every request with a large body; N callers each send one GET through the
gateway and then read nothing. Once the buffers along the way are full, the gateway's resident
memory (VmRSS) is compared with its value before the callers came, and divided by N. Run it on
two commits to compare (hardening issue: ~980 KB per stalled download at b0cd6fb).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import APPGATEWAY, Proc, clean_env, free_port, start, stop, wait_http_ok  # noqa: E402

REGISTRY = """\
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata: {{name: big}}
spec:
  services:
    - id: big1
      displayName: big
      entries:
        - type: API
          name: big
          targetUrl: http://127.0.0.1:{port}
"""


def serve_large(listener: socket.socket, size: int, stop_flag: threading.Event) -> None:
    """One thread per connection; each answers every request with `size` bytes."""

    def handle(conn: socket.socket) -> None:
        piece = b"x" * 65536
        with conn, contextlib.suppress(OSError):
            while not stop_flag.is_set():
                head = b""
                while b"\r\n\r\n" not in head:
                    data = conn.recv(65536)
                    if not data:
                        return
                    head += data
                if b" /ok" in head.split(b"\r\n", 1)[0]:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    continue
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
                left = size
                while left > 0 and not stop_flag.is_set():
                    conn.sendall(piece[: min(left, len(piece))])
                    left -= len(piece)

    listener.settimeout(0.2)
    while not stop_flag.is_set():
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextlib.contextmanager
def target(size: int) -> Iterator[int]:
    listener = socket.create_server(("127.0.0.1", 0))
    flag = threading.Event()
    thread = threading.Thread(target=serve_large, args=(listener, size, flag), daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        flag.set()
        thread.join(2)
        listener.close()


def settle(pid: int, seconds: float) -> int:
    """RSS once it stops growing (buffers full), or after `seconds`."""
    deadline = time.monotonic() + seconds
    last = rss_kb(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = rss_kb(pid)
        if abs(now - last) < 256:
            return now
        last = now
    return last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--callers", type=int, default=200)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--gateway", default=str(APPGATEWAY), help="appgateway executable")
    args = parser.parse_args()
    with target(args.size_mb * 1024 * 1024) as port, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "registry").mkdir()
        (work / "registry" / "big.yaml").write_text(REGISTRY.format(port=port))
        proxy_port = free_port()
        argv = [
            args.gateway,
            "serve",
            "--registry",
            str(work / "registry"),
            "--proxy-port",
            str(proxy_port),
            "--proxy-port-compass",
            "0",
            "--admin-port",
            "0",
            "--idle-timeout",
            "120",
        ]
        proc: Proc = start("gateway", argv, work, clean_env())
        try:
            wait_http_ok(proc, proxy_port, "/big/big/ok")
            before = settle(proc.pid, 3)
            callers: list[socket.socket] = []
            for index in range(args.callers):
                sock = socket.create_connection(("127.0.0.1", proxy_port))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(b"GET /big/big/file%d HTTP/1.1\r\nHost: h\r\n\r\n" % index)
                callers.append(sock)
            after = settle(proc.pid, 30)
            per_caller = (after - before) / args.callers
            print(
                f"callers={args.callers} rss_before={before / 1024:.1f}MB "
                f"rss_after={after / 1024:.1f}MB per_stalled_download={per_caller:.0f}kB"
            )
            for sock in callers:
                sock.close()
        finally:
            stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
