"""The `--caller-tokens` file: who holds which token, and which Applications each may use. [pure]

```yaml
- name: laptop-alice            # the caller's identity in logs
  sha256: 9f86d0...             # sha256sum of the token (64 lower-case hex digits)
  applications: [erp, crm]      # or ["*"]: every Application
```

Only digests are stored, so the file itself grants nothing to whoever reads it. No message
quotes a `sha256` value: someone may have pasted the token itself there by mistake.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import yaml

ALL: Final = "*"
_HEX64: Final = re.compile(r"[0-9a-f]{64}")
_FIELDS: Final = frozenset(("name", "sha256", "applications"))
MAX_NAME: Final = 253


class TokenFileError(ValueError):
    """The file cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class TokenEntry:
    name: str
    sha256: bytes = field(repr=False)
    """The raw 32-byte digest."""
    applications: frozenset[str] | None
    """None: every Application (`["*"]`)."""

    def allows(self, application: str) -> bool:
        return self.applications is None or application in self.applications


class TokenTable:
    """The entries of one valid file, found by the digest of a presented token.

    The lookup is a dict keyed by the SHA-256 digest, then a constant-time comparison of the
    whole digest: a timing difference could only tell a caller something about the digest
    of the token it sent itself, which leaks nothing about anyone's token.
    """

    def __init__(self, entries: Iterable[TokenEntry] = ()) -> None:
        self.entries = tuple(entries)
        self._by_digest = {entry.sha256: entry for entry in self.entries}

    def find(self, digest: bytes) -> TokenEntry | None:
        entry = self._by_digest.get(digest)
        if entry is None or not hmac.compare_digest(entry.sha256, digest):
            return None
        return entry

    def __len__(self) -> int:
        return len(self.entries)


def _entry(index: int, item: object) -> TokenEntry:
    where = f"entry {index}"
    if not isinstance(item, dict):
        raise TokenFileError(f"{where}: must be a mapping with name, sha256 and applications")
    name = item.get("name")
    if isinstance(name, str) and name:
        where = f"entry {index} ({name!r})"
    unknown = sorted(str(k) for k in item if k not in _FIELDS)
    if unknown:
        raise TokenFileError(f"{where}: unknown field(s) {', '.join(unknown)}")
    if not isinstance(name, str) or not name.strip():
        raise TokenFileError(f"{where}: name must be a non-empty string")
    if len(name) > MAX_NAME or not name.isprintable():
        raise TokenFileError(f"{where}: name must be at most {MAX_NAME} printable characters")
    digest = item.get("sha256")
    if isinstance(digest, int):
        raise TokenFileError(f"{where}: sha256 must be quoted (YAML read it as a number)")
    if not isinstance(digest, str) or _HEX64.fullmatch(digest) is None:
        raise TokenFileError(
            f"{where}: sha256 must be 64 lower-case hex digits (the SHA-256 of the token, "
            "e.g. from sha256sum), never the token itself"
        )
    apps = item.get("applications")
    if not isinstance(apps, list) or not apps or not all(isinstance(a, str) and a for a in apps):
        raise TokenFileError(
            f'{where}: applications must be a non-empty list of Application names, or ["*"]'
        )
    if ALL in apps:
        if len(apps) != 1:
            raise TokenFileError(f'{where}: "*" stands for every Application and stands alone')
        return TokenEntry(name, bytes.fromhex(digest), None)
    return TokenEntry(name, bytes.fromhex(digest), frozenset(apps))


def parse_tokens(data: bytes) -> TokenTable:
    """The table of a file's bytes. Raises TokenFileError.

    An empty file is an error, not "no callers": an editor or a copy that truncates the file
    before writing it must not lock everyone out (write `[]` for that).
    """
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        # The problem names a construct, never a value; the context snippet is left out.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        raise TokenFileError(f"invalid YAML{where}" + (f": {problem}" if problem else "")) from None
    except RecursionError:
        raise TokenFileError("invalid YAML: nested too deeply") from None
    if doc is None:
        raise TokenFileError("the file is empty (write [] for no callers)")
    if not isinstance(doc, list):
        raise TokenFileError("must be a YAML list of {name, sha256, applications}")
    entries = [_entry(index, item) for index, item in enumerate(doc, 1)]
    seen: dict[bytes, str] = {}
    for entry in entries:
        other = seen.get(entry.sha256)
        if other is not None:
            raise TokenFileError(f"{other!r} and {entry.name!r} have the same sha256")
        seen[entry.sha256] = entry.name
    return TokenTable(entries)
