"""The --caller-tokens file format, as tables."""

from __future__ import annotations

import hashlib

import pytest

from appgateway.caller.tokenfile import TokenEntry, TokenFileError, TokenTable, parse_tokens


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


A, B = sha("token-a"), sha("token-b")


def test_a_valid_file() -> None:
    table = parse_tokens(
        f"""
- name: alice-laptop
  sha256: {A}
  applications: [erp, crm]
- {{name: ci, sha256: "{B}", applications: ["*"]}}
""".encode()
    )
    assert len(table) == 2
    alice = table.find(hashlib.sha256(b"token-a").digest())
    ci = table.find(hashlib.sha256(b"token-b").digest())
    assert alice is not None and ci is not None
    assert alice.name == "alice-laptop" and ci.name == "ci"
    assert alice.allows("erp") and alice.allows("crm") and not alice.allows("hr")
    assert ci.allows("erp") and ci.allows("anything")
    assert table.find(hashlib.sha256(b"token-c").digest()) is None
    assert table.find(b"") is None
    assert A not in repr(alice) and "sha256=" not in repr(alice)


@pytest.mark.parametrize(
    ("text", "count"),
    [("[]", 0), ("# nobody yet\n[]\n", 0), (f"- {{name: x, sha256: {A}, applications: [a]}}", 1)],
)
def test_counts(text: str, count: int) -> None:
    assert len(parse_tokens(text.encode())) == count


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty (write [] for no callers)"),
        ("# only a comment\n", "the file is empty"),
        ("name: x", "must be a YAML list of {name, sha256, applications}"),
        ("- [1]", "entry 1: must be a mapping"),
        ("- a\n- b: [", "invalid YAML at line 2"),
        ("\t- x", "invalid YAML at line 1: found character '\\t' that cannot start any token"),
        (f"- {{sha256: {A}, applications: [a]}}", "entry 1: name must be a non-empty string"),
        (f"- {{name: '  ', sha256: {A}, applications: [a]}}", "entry 1 ('  '): name must be"),
        (f"- {{name: 7, sha256: {A}, applications: [a]}}", "entry 1: name must be a non-empty"),
        (
            f'- {{name: "a\\nb", sha256: {A}, applications: [a]}}',
            "name must be at most 253 printable",
        ),
        (f"- {{name: {'n' * 254}, sha256: {A}, applications: [a]}}", "at most 253 printable"),
        ("- {name: x, applications: [a]}", "entry 1 ('x'): sha256 must be 64 lower-case hex"),
        (f"- {{name: x, sha256: {A.upper()}, applications: [a]}}", "sha256 must be 64 lower-case"),
        (f"- {{name: x, sha256: {A[:-1]}, applications: [a]}}", "sha256 must be 64 lower-case"),
        (f"- {{name: x, sha256: {A}0, applications: [a]}}", "sha256 must be 64 lower-case"),
        (f"- {{name: x, sha256: {'1' * 64}, applications: [a]}}", "sha256 must be quoted"),
        (f"- {{name: x, sha256: {A}}}", "entry 1 ('x'): applications must be a non-empty list"),
        (f"- {{name: x, sha256: {A}, applications: []}}", "applications must be a non-empty"),
        (f"- {{name: x, sha256: {A}, applications: erp}}", "applications must be a non-empty"),
        (f"- {{name: x, sha256: {A}, applications: [erp, '']}}", "applications must be"),
        (f"- {{name: x, sha256: {A}, applications: [erp, 3]}}", "applications must be"),
        (f"- {{name: x, sha256: {A}, applications: ['*', erp]}}", '"*" stands for every'),
        (
            f"- {{name: x, sha256: {A}, applications: [a], apps: [b]}}",
            "entry 1 ('x'): unknown field(s) apps",
        ),
        (
            f"- {{name: x, sha256: {A}, applications: [a]}}\n"
            f"- {{name: y, sha256: {A}, applications: [b]}}",
            "'x' and 'y' have the same sha256",
        ),
        (
            f"- {{name: x, sha256: {A}, applications: [a]}}\n"
            "- {name: y, sha256: nope, applications: [b]}",
            "entry 2 ('y'): sha256",
        ),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(TokenFileError) as info:
        parse_tokens(text.encode())
    assert str(info.value).startswith(message) or message in str(info.value)


@pytest.mark.parametrize(
    "secret",
    ["my-plain-token-1234", "ey" + "J" * 300, "a" * 63, "A" * 64],
)
def test_a_token_pasted_into_sha256_is_never_quoted(secret: str) -> None:
    text = f"- {{name: x, sha256: {secret}, applications: [a]}}"
    with pytest.raises(TokenFileError) as info:
        parse_tokens(text.encode())
    assert secret not in str(info.value)


def test_find_compares_the_whole_digest() -> None:
    digest = hashlib.sha256(b"t").digest()
    entry = TokenEntry("x", digest, None)
    table = TokenTable([entry])
    assert table.find(digest) is entry
    assert table.find(digest[:-1] + bytes([digest[-1] ^ 1])) is None
    assert table.find(digest[:16]) is None
    assert TokenTable().find(digest) is None
