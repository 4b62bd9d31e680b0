"""Manifest bytes to plain documents: the same trees PyYAML makes, and the cheap nesting bound
that clears ordinary files before libyaml composes them (the limits themselves are tested
through parse_file in test_parse.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from appgateway.registry.manifest_yaml import _shallow, load_all
from appgateway.registry.parse import parse_file
from tests.registry.test_parse import (
    BOUND,
    DISGUISED,
    ORDINARY,
    SECRET_HEAD,
    YAML_TREES,
    _true_depth,
)


@pytest.mark.parametrize("text", YAML_TREES)
def test_yaml_documents_are_what_pyyaml_makes_of_them(text: str) -> None:
    """The direct construction of plain trees must not be observable."""

    def load(documents: Iterator[object]) -> list[object] | str:
        try:
            return list(documents)
        except yaml.YAMLError as exc:
            return f"{type(exc).__name__}: {exc}"
        except KeyError as exc:
            return f"KeyError: {exc}"

    ours = load(load_all(text))
    theirs = load(yaml.load_all(text, Loader=yaml.CSafeLoader))
    assert ours == theirs
    assert repr(ours) == repr(theirs)  # types too: 1 == True, 0 == False


@pytest.mark.parametrize("text", DISGUISED, ids=range(len(DISGUISED)))
def test_cheap_bound_never_passes_deep_text(text: str) -> None:
    assert _true_depth(text) >= BOUND  # deep indeed, for libyaml
    assert not _shallow(text.encode())


@pytest.mark.parametrize("text", ORDINARY, ids=range(len(ORDINARY)))
def test_cheap_bound_passes_ordinary_manifests(text: str) -> None:
    """Else they would pay for an exact scan as long as their load."""
    assert _shallow(text.encode())


@pytest.mark.parametrize(
    "text",
    [
        SECRET_HEAD + "x: [" + ", ".join(['{"a": "b"}'] * 300) + "]\n",
        SECRET_HEAD + "x: '" + "-" * 300 + "'\n",
        "apiVersion: v1\nkind: List\nitems:\n"
        + '- metadata: {name: s, annotations: {a: \'{"b":{"c":{}}}\'}}\n'
        "  kind: Secret\n  apiVersion: v1\n" * 100,
    ],
    ids=["quoted-flow", "far-indicator", "quoted-json"],
)
def test_exact_scan_accepts_what_the_cheap_bound_cannot_prove(text: str) -> None:
    assert not _shallow(text.encode())
    result = parse_file("f.yaml", text.encode())
    assert result.issues == () and len(result.objects) >= 1
