"""The demo: a registry template for the bundled demo API and the curl commands that use it.

The template doubles as `serve`'s embedded default registry, so a bare `appgateway serve`
next to `appgateway demo`'s API (port 8090) works without any files. The credentials below
are public demo values shared by the template and the demo API; they protect nothing.
"""

from __future__ import annotations

from collections.abc import Collection
from importlib import resources
from string import Template

APP = "demo"
USERNAME = "demo"
PASSWORD = "demo-password"
CLIENT_ID = "demo-client"
CLIENT_SECRET = "demo-client-secret"
PARAM_HEADER = "X-Demo-Param"
PARAM_QUERY = "demo-param"
PARAM_VALUE = "from-gateway"
DEFAULT_API_PORT = 8090

# (auth type, service path segment = normalised displayName, sub-path, extra curl arguments)
_COMMANDS: tuple[tuple[str, str, str, str], ...] = (
    ("none", "open-api", "hello", ""),
    ("basic", "basic-api", "hello", ""),
    ("oauth", "oauth-api", "hello", ""),
    ("csrf", "csrf-api", "orders", "-H 'Content-Type: application/json' -d '{\"item\":\"tea\"}' "),
    ("params", "params-api", "hello?mine=1", ""),
)
HOST_SERVICE_ID = "echo"


def demo_registry(api_port: int, namespace: str = "kyma-system") -> str:
    """The demo Application and its Secrets as multi-document YAML text."""
    template = resources.files(__name__).joinpath("registry.yaml").read_text(encoding="utf-8")
    return Template(template).substitute(
        api_port=api_port,
        namespace=namespace,
        username=USERNAME,
        password=PASSWORD,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        param_header=PARAM_HEADER,
        param_query=PARAM_QUERY,
        param_value=PARAM_VALUE,
    )


def default_registry_text() -> str:
    """`serve`'s registry when no `--registry` is given."""
    return demo_registry(DEFAULT_API_PORT)


def demo_commands(
    proxy_port: int, admin_port: int, api_port: int, supported: Collection[str]
) -> list[str]:
    """Curl commands for the auth types the gateway `supported`, then host routing, metrics.

    `api_port` is not used: every command goes through the gateway, and each one is expected
    to answer 200.
    """
    base = f"http://127.0.0.1:{proxy_port}"
    out: list[str] = []
    for kind, service, rest, extra in _COMMANDS:
        if kind in supported:
            out.append(f"curl {extra}'{base}/{APP}/{service}/{rest}'")
    if "host" in supported:
        out.append(f"curl -H 'Host: {APP}-{HOST_SERVICE_ID}' '{base}/hello?x=1'")
    out.append(f"curl 'http://127.0.0.1:{admin_port}/metrics'")
    return out
