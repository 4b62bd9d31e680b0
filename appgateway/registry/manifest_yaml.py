"""Manifest bytes -> plain documents, with what parsing may cost bounded. [pure]

A manifest is untrusted input to a long-running process (README "Run it on a folder of YAML"):
YAML nests at most MAX_DEPTH collections deep, uses no aliases, and a file holds at most
MAX_DOCUMENTS documents and List items; anything beyond is `Refused`, like a syntax error.
Documents come out as plain dicts, lists and scalars for parse.py to validate.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import cast

import yaml

# The libyaml loader is about ten times faster; both are safe loaders.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_STR = "tag:yaml.org,2002:str"
_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_BOOL_VALUES: Mapping[str, bool] = yaml.SafeLoader.bool_values

MAX_DEPTH = 100
"""Deepest nesting of collections in a YAML manifest. Applications and Secrets need fewer than
ten levels. libyaml's composer recurses on the C stack once per level, and a few tens of
thousands of levels (60 KB of `[`) overflow it: the process dies with SIGSEGV."""
MAX_DOCUMENTS = 100_000
"""Documents plus `…List` items per file. Each becomes an object or an issue that is logged on
every change, so a file of tiny documents must not flood the log. A file of the default size
limit (1 MiB) holds some 15,000 of the smallest Secrets."""

# `_shallow` proves that a text nests fewer than about 920 levels, far below where the composer
# would overflow even a 2 MiB thread stack, so it can be composed and its depth counted on the
# nodes. A text it cannot prove so is first scanned event by event (`_check_nesting`): exact,
# but that costs as much as loading it, while `_shallow` passes ordinary manifests in a few
# microseconds: it looks only for ASCII characters, in the UTF-8 bytes, with C-speed methods.
_FLOW_OPENERS = 200
_FLOW_PASSES = 4
_COLUMNS = 250
_NOT_FLOW = bytes(sorted(set(range(256)) - set(b"[]{}'\"#!")))
_FAR_INDICATOR_FIRST = re.compile(rb"[^\n]{%d,}[-?:]" % _COLUMNS)
_FAR_INDICATOR = re.compile(rb"\n[^\n]{%d,}[-?:]" % _COLUMNS)
_OPEN_EVENTS = (yaml.SequenceStartEvent, yaml.MappingStartEvent)
_CLOSE_EVENTS = (yaml.SequenceEndEvent, yaml.MappingEndEvent)


class Refused(Exception):
    """The file is well-formed but exceeds a limit of this module; the message says which."""


def too_many() -> str:
    return f"more than {MAX_DOCUMENTS} documents and List items (split the file)"


def _refused_at(mark: yaml.Mark | None, problem: str) -> Refused:
    if mark is None:
        return Refused(f"invalid YAML: {problem}")
    return Refused(f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}")


def _too_deep(mark: yaml.Mark | None) -> Refused:
    return _refused_at(mark, f"nested more than {MAX_DEPTH} levels deep")


def _aliased(node: yaml.Node) -> Refused:
    return _refused_at(
        node.start_mark,
        "anchors and aliases are not allowed (the node anchored here is used again)",
    )


def documents(name: str, text: str, raw: bytes) -> Iterator[tuple[int, object]]:
    if name.lower().endswith(".json"):
        if text.strip():
            yield 1, json.loads(text)
        return
    yield from enumerate(load_all(text, raw), 1)


def load_all(text: str, raw: bytes | None = None) -> Iterator[object]:
    """`yaml.load_all(text, Loader=_Loader)`, with plain trees built without PyYAML's constructor.

    The constructor's per-node bookkeeping (aliases, recursion, deferred filling) costs more than
    the C parser itself. Documents of just strings, nulls, booleans, mappings with string keys and
    lists, each node used once, are built directly; any other document is constructed by PyYAML,
    so its values and errors are exactly PyYAML's.

    Before that, a document nested more than MAX_DEPTH levels or using an alias raises Refused:
    the depth is checked before composing (`_check_nesting`) and on the nodes, aliases on the
    nodes (an alias is the node it names, met a second time). Without aliases no document can
    expand beyond the size of its text; with them, 859 bytes of `kind: List`s expand without end.
    `raw` is `text` in UTF-8, if the caller has it.
    """
    _check_nesting(text, text.encode() if raw is None else raw)
    aliases = "*" in text  # else no node can be met twice, and nobody needs to look
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = cast(yaml.Node, loader.get_node())  # not None after check_node()
            try:
                yield _plain(node, set() if aliases else None, 1)
            except _NotPlain:
                _guard(node, set(), 1)
                yield loader.construct_document(node)
    finally:
        loader.dispose()


def _shallow(raw: bytes) -> bool:
    """True if the UTF-8 text `raw` certainly nests fewer than
    2 * (_FLOW_OPENERS + 2 * _FLOW_PASSES) + 2 * _COLUMNS levels.

    Every collection starts with an indicator. Flow collections (`[`, `{`) nest by brackets only,
    each `[` with at most one implicit single-pair mapping inside, so their depth is at most
    twice the longest chain of open brackets. A `[…]` or `{…}` with no quote, comment, tag or
    unpaired bracket inside is a real pair if its `[` or `{` is real: nothing can hide a
    bracket from the parser there. Dropping such pairs (innermost first, one level per
    `replace`, 2 * _FLOW_PASSES levels at most) leaves of any chain all but the levels dropped.
    Block collections nest by indentation only: a child starts right of its parent's column,
    or at it for a sequence that is a mapping's value, and has its `-`, `?` or first key's `:`
    at or right of that column on its first line. So with no such character at column _COLUMNS
    or beyond, block nesting stays below 2 * _COLUMNS levels. (Columns count bytes here, and a
    `\r` or Unicode line break is not seen as one: both only make the bound looser.)
    """
    openers = raw.count(b"[") + raw.count(b"{")
    if openers > _FLOW_OPENERS:
        skeleton = raw.translate(None, _NOT_FLOW)  # just brackets, quotes, `#` and `!`
        for _ in range(_FLOW_PASSES):
            rest = skeleton.replace(b"[]", b"").replace(b"{}", b"")
            if len(rest) == len(skeleton):
                break
            skeleton = rest
        if skeleton.count(b"[") + skeleton.count(b"{") > _FLOW_OPENERS:
            return False
    return _FAR_INDICATOR_FIRST.match(raw) is None and _FAR_INDICATOR.search(raw) is None


def _check_nesting(text: str, raw: bytes) -> None:
    """Raise Refused if `text` (`raw` in UTF-8) nests more than MAX_DEPTH levels, before
    anything composes it.

    A syntax error ends the scan quietly: loading reports it, and every event before it was
    shallow enough to compose.
    """
    if _shallow(raw):
        return
    parser = _Loader(text)
    depth = 0
    try:
        while parser.check_event():
            event = parser.get_event()
            if isinstance(event, _OPEN_EVENTS):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _too_deep(event.start_mark)
            elif isinstance(event, _CLOSE_EVENTS):
                depth -= 1
    except yaml.YAMLError:
        return
    finally:
        parser.dispose()


class _NotPlain(Exception):
    pass


def _guard(node: yaml.Node, seen: set[int], depth: int) -> None:
    """What `_plain` checks, for a document PyYAML's constructor is to build."""
    if id(node) in seen:
        raise _aliased(node)
    seen.add(id(node))
    if type(node) is yaml.ScalarNode:
        return
    if depth > MAX_DEPTH:
        raise _too_deep(node.start_mark)
    if type(node) is yaml.MappingNode:
        for key, value in node.value:
            _guard(key, seen, depth + 1)
            _guard(value, seen, depth + 1)
    else:
        for item in node.value:
            _guard(item, seen, depth + 1)


def _plain(node: yaml.Node, seen: set[int] | None, depth: int) -> object:
    """The value of a plain tree; raises _NotPlain for anything else, Refused for an alias
    (`seen` is None when the text has none) or a collection at level `depth` > MAX_DEPTH."""
    kind = type(node)
    if seen is not None:
        if id(node) in seen:
            raise _aliased(node)
        seen.add(id(node))
    tag = node.tag
    if kind is yaml.ScalarNode:
        if tag == _STR:
            return node.value
        if tag == _NULL:
            return None
        if tag == _BOOL:
            value = _BOOL_VALUES.get(node.value.lower())
            if value is not None:
                return value
        raise _NotPlain
    if depth > MAX_DEPTH:
        raise _too_deep(node.start_mark)
    if kind is yaml.MappingNode and tag == _MAP:
        out: dict[object, object] = {}
        for key, value in node.value:
            if type(key) is not yaml.ScalarNode or key.tag != _STR:  # also merge keys `<<`
                raise _NotPlain
            if seen is not None:
                if id(key) in seen:
                    raise _aliased(key)
                seen.add(id(key))
            out[key.value] = _plain(value, seen, depth + 1)
        return out
    if kind is yaml.SequenceNode and tag == _SEQ:
        return [_plain(item, seen, depth + 1) for item in node.value]
    raise _NotPlain


def yaml_reason(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or exc.context or "syntax error"
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {exc}"
