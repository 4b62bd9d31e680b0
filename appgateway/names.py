"""Name normalisation shared by path routing, the registry indexes and the CLI tables.

The exact step order matters for compatibility: trimming happens before truncation, so a
truncated name may end in `-` (behaviour.md §2.4).
"""

from __future__ import annotations

import re

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_MAX_LEN = 57
_LABEL_APP_LEN = 26


def normalize(s: str) -> str:
    """Map a displayName or entry name to its URL segment (behaviour.md §2.4)."""
    out = _NOT_ALNUM.sub("-", s).lower()
    out = out.removesuffix("-")
    out = out[:_MAX_LEN]
    return out.removeprefix("-")


def host_label(app: str, service_id: str) -> str:
    """The Access Service name and host-routing label of a service (behaviour.md §2.1)."""
    return app[:_LABEL_APP_LEN] + "-" + service_id
