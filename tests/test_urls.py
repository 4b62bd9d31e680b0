from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appgateway.errors import BadRequest
from appgateway.model import ParamMap, Target
from appgateway.urls import (
    TargetURLError,
    canon,
    decode,
    escapes_base,
    form_encode,
    is_valid,
    join,
    merge_query,
    parse_target,
    pre_normalize,
    redact,
    split_host_port,
    wire_path,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/a/s/x", "/a/s/x"),
        ("/a/s/x|y", "/a/s/x%7Cy"),
        ("/a/s/hello('%7Cworld%7C')", "/a/s/hello('%7Cworld%7C')"),
        ("/a/s/caf%c3%a9", "/a/s/caf%c3%a9"),
        ("/a b", "/a%20b"),
        ('/"<>\\^`{}', "/%22%3C%3E%5C%5E%60%7B%7D"),
        ("/caf\xc3\xa9", "/caf%C3%A9"),  # raw UTF-8 bytes, one char per byte
        ("/\xff\x00\x7f", "/%FF%00%7F"),
        ("/-._~!$&'()*+,;=:@/[]", "/-._~!$&'()*+,;=:@/[]"),
        ("/%41%7e%2F", "/%41%7e%2F"),
        ("", ""),
        ("/", "/"),
    ],
)
def test_pre_normalize(raw: str, expected: str) -> None:
    assert pre_normalize(raw) == expected


@pytest.mark.parametrize("raw", ["/a%", "/a%4", "/a%zz", "/%g1/x", "/a%%41", "%", "/x%2"])
def test_pre_normalize_rejects_bad_escape(raw: str) -> None:
    with pytest.raises(BadRequest) as info:
        pre_normalize(raw)
    assert info.value.status == 400
    assert info.value.message == "invalid URL escape in request path"


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (b"/api", None, b"/api"),
        (b"/api", b"", b"/api/"),
        (b"/api/", b"", b"/api/"),
        (b"", b"", b"/"),
        (b"/api/", b"/x", b"/api/x"),
        (b"/api", b"x", b"/api/x"),
        (b"/api", b"/x", b"/api/x"),
        (b"/api/", b"x", b"/api/x"),
        (b"", b"x", b"/x"),
        (b"", b"/x", b"/x"),
        (b"/api/", b"//x", b"/api//x"),
    ],
)
def test_join(a: bytes, b: bytes | None, expected: bytes) -> None:
    assert join(a, b) == expected


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        ("a%2Fb", b"a/b"),
        ("a+b", b"a+b"),
        ("caf%c3%a9", b"caf\xc3\xa9"),
        ("%FF", b"\xff"),
        ("%zz", b"%zz"),
    ],
)
def test_decode(p: str, expected: bytes) -> None:
    assert decode(p) == expected


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (b"/a/b", "/a/b"),
        (b"hello('|world|')", "hello%28%27%7Cworld%7C%27%29"),
        (b"caf\xc3\xa9", "caf%C3%A9"),
        (b"\xff", "%FF"),
        (b"-._~$&+,/:;=@", "-._~$&+,/:;=@"),
        (b"!*[] %?#", "%21%2A%5B%5D%20%25%3F%23"),
    ],
)
def test_canon(p: bytes, expected: str) -> None:
    assert canon(p) == expected


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (b"/a('b')/%7C", True),
        (b"", True),
        (b"/a|b", False),
        (b"/a%", False),
        (b"/a%4g", False),
        (b"/caf\xc3\xa9", False),
        (b"/a b", False),
    ],
)
def test_is_valid(p: bytes, expected: bool) -> None:
    assert is_valid(p) is expected


def _rest(caller_path: str) -> str | None:
    """The rest path routing extracts from `/{app}/{service}[/{rest}]` (behaviour.md §2.2)."""
    parts = pre_normalize(caller_path).lstrip("/").split("/", 2)
    return parts[2] if len(parts) > 2 else None


# behaviour.md §3.4: (target path, caller path, wire path with encodeUrl false, with true).
SPEC_PATHS = [
    (
        "",
        "/a/s/orders/hello('%7Cworld%7C')",
        "/orders/hello('%7Cworld%7C')",
        "/orders/hello%28%27%7Cworld%7C%27%29",
    ),
    ("", "/a/s/x%2Fy", "/x%2Fy", "/x/y"),
    ("", "/a/s/caf%c3%a9", "/caf%c3%a9", "/caf%C3%A9"),
    ("/somepath", "/a/s/Xyz('123')", "/somepath/Xyz('123')", "/somepath/Xyz%28%27123%27%29"),
    ("/somepath/Xyz('123')", "/a/s", "/somepath/Xyz('123')", "/somepath/Xyz('123')"),
    ("/Xyz('1')", "/a/s/x", "/Xyz%28%271%27%29/x", "/Xyz%28%271%27%29/x"),
    ("", "/a/s", "/", "/"),
    ("/api", "/a/s", "/api", "/api"),
    ("/api", "/a/s/", "/api/", "/api/"),
    ("/api", "/a/s/x/", "/api/x/", "/api/x/"),
    ("/api/", "/a/s", "/api/", "/api/"),
    ("/api", "/a/s//x", "/api/x", "/api/x"),
    ("/api", "/a/s/x//y", "/api/x//y", "/api/x//y"),
    ("/api", "/a/s///h/x", "/api//h/x", "/api//h/x"),
    ("/api", "/a/s/a:b/c", "/api/a:b/c", "/api/a:b/c"),
    ("/api", "/a/s/../x", "/api/../x", "/api/../x"),
    ("/api", "/a/s/x|y", "/api/x%7Cy", "/api/x%7Cy"),
]


@pytest.mark.parametrize(("target", "caller", "wire_false", "wire_true"), SPEC_PATHS)
def test_wire_path_spec_examples(target: str, caller: str, wire_false: str, wire_true: str) -> None:
    rest = _rest(caller)
    assert wire_path(target, rest, False) == wire_false
    assert wire_path(target, rest, True) == wire_true


@pytest.mark.parametrize(
    ("target", "rest", "encode_url", "expected"),
    [
        # Host routing: the rest is the whole path (behaviour.md §3.4, last line).
        ("/api", "/orders/7", True, "/api/orders/7"),
        ("/api", "/orders/7", False, "/api/orders/7"),
        ("/api", "/", True, "/api/"),
        ("/api", "/", False, "/api/"),
        ("", "/", True, "/"),
        ("", "/customers/42", True, "/customers/42"),
        ("/api/", "/orders", True, "/api/orders"),
        # The target's escapes are decoded; a canonical rest re-encodes the whole path.
        ("/a%20b", "x", True, "/a%20b/x"),
        ("/a%2Fb", None, True, "/a/b"),
        ("/a%2Fb", None, False, "/a/b"),
        ("/a%7Cb", None, True, "/a%7Cb"),
        ("/a%2Fb", "x", True, "/a/b/x"),
        ("/caf\u00e9", None, True, "/caf%C3%A9"),
        ("/p%2541", "x%7C", False, "/p%2541/x%7C"),
        # Non-UTF-8 escapes survive both ways.
        ("/api", "%FF%fe", True, "/api/%FF%FE"),
        ("/api", "%FF%fe", False, "/api/%FF%fe"),
        # encodeUrl false keeps non-canonical escaping of the sub-path only.
        ("/api", "a%41", False, "/api/a%41"),
        ("/api", "a%41", True, "/api/aA"),
        ("/api", "a%7c", False, "/api/a%7c"),
        ("/api", "a%7c", True, "/api/a%7C"),
        ("/api", "", False, "/api/"),
    ],
)
def test_wire_path(target: str, rest: str | None, encode_url: bool, expected: str) -> None:
    assert wire_path(target, rest, encode_url) == expected


CALLER_QUERY = "$top=2&$filter=Name%20eq%20'x'"


@pytest.mark.parametrize(
    ("target", "caller", "params", "expected"),
    [
        ("", "", (), ""),
        ("sap-client=100", "", (), "sap-client=100"),
        ("", CALLER_QUERY, (), CALLER_QUERY),
        ("sap-client=100", CALLER_QUERY, (), "sap-client=100&" + CALLER_QUERY),
        (
            "sap-client=100",
            CALLER_QUERY,
            (("tag", ("x", "y")), ("sap-language", ("EN",)), ("$top", ("9",))),
            "sap-client=100&" + CALLER_QUERY + "&sap-language=EN&tag=x&tag=y",
        ),
        (
            "",
            "",
            (("param2", ("v2.1", "v2.2")), ("param1", ("v1",))),
            "param1=v1&param2=v2.1&param2=v2.2",
        ),
        # Presence: the name is form-decoded and compared case-sensitively.
        ("", "a+b=1", (("a b", ("2",)),), "a+b=1"),
        ("", "a%20b=1", (("a b", ("2",)),), "a%20b=1"),
        ("", "Tag=1", (("tag", ("2",)),), "Tag=1&tag=2"),
        ("", "tag", (("tag", ("2",)),), "tag"),
        ("", "tag=", (("tag", ("2",)),), "tag="),
        ("", "x=tag", (("tag", ("2",)),), "x=tag&tag=2"),
        # Form encoding of appended keys and values.
        ("", "", (("k y", ("a b&c=d/é~",)),), "k+y=a+b%26c%3Dd%2F%C3%A9~"),
        ("", "", (("$top", ("9",)),), "%24top=9"),
        # A key with no values adds nothing.
        ("q=1", "", (("empty", ()),), "q=1"),
    ],
)
def test_merge_query(target: str, caller: str, params: ParamMap, expected: str) -> None:
    assert merge_query(target, caller, params) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("abc", "abc"),
        ("a b", "a+b"),
        ("-._~", "-._~"),
        ("!*'()", "%21%2A%27%28%29"),
        ("a+b", "a%2Bb"),
        ("/?&=#%", "%2F%3F%26%3D%23%25"),
        ("é", "%C3%A9"),
        ("", ""),
    ],
)
def test_form_encode(raw: str, expected: str) -> None:
    assert form_encode(raw) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://user:secret@h:8443/api/v1?token=x#frag", "https://h:8443/api/v1"),
        ("http://h/path", "http://h/path"),
        ("http://h", "http://h"),
        ("http://h?x=1", "http://h"),
        ("http://h#f", "http://h"),
        ("https://u@h/", "https://h/"),
        ("https://[::1]:8443/a?b", "https://[::1]:8443/a"),
        ("https://user:pa#ss@h/x?q", "https://h/x"),
        ("https://user:pa?ss@h/x", "https://h/x"),
        ("https://h/users/@me?x", "https://h/users/@me"),
        ("/relative?q=1", "/relative"),
        ("", ""),
    ],
)
def test_redact(url: str, expected: str) -> None:
    assert redact(url) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "https://erp.example.com/odata/orders?sap-client=100",
            Target(
                "https",
                "erp.example.com",
                443,
                "erp.example.com",
                "/odata/orders",
                "sap-client=100",
            ),
        ),
        (
            "https://crm.example.com:8443/api/",
            Target("https", "crm.example.com", 8443, "crm.example.com:8443", "/api/", ""),
        ),
        ("http://h", Target("http", "h", 80, "h", "", "")),
        ("http://h:80/", Target("http", "h", 80, "h:80", "/", "")),
        ("http://h:/x", Target("http", "h", 80, "h", "/x", "")),
        ("HTTPS://Host.Example/A", Target("https", "Host.Example", 443, "Host.Example", "/A", "")),
        ("http://u:p@h/x?y#z", Target("http", "h", 80, "h", "/x", "y")),
        ("http://h/x?", Target("http", "h", 80, "h", "/x", "")),
        ("http://h?q=1", Target("http", "h", 80, "h", "", "q=1")),
        ("http://[::1]:8080/a", Target("http", "::1", 8080, "[::1]:8080", "/a", "")),
        ("https://[2001:db8::1]/", Target("https", "2001:db8::1", 443, "[2001:db8::1]", "/", "")),
        (
            "http://127.0.0.1:9/a%2Fb('x')",
            Target("http", "127.0.0.1", 9, "127.0.0.1:9", "/a%2Fb('x')", ""),
        ),
    ],
)
def test_parse_target(url: str, expected: Target) -> None:
    assert parse_target(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "empty url"),
        ("/relative/path", "missing scheme or host"),
        ("erp.example.com/x", "missing scheme or host"),
        ("//h/x", "missing scheme or host"),
        ("http:/x", "missing scheme or host"),
        ("http://", "missing scheme or host"),
        ("http:///x", "missing scheme or host"),
        ("http://u@/x", "missing scheme or host"),
        ("ftp://h/x", 'unsupported scheme "ftp"'),
        ("FTP://h/x", 'unsupported scheme "ftp"'),
        ("http://h:abc/", 'invalid port ":abc"'),
        ("http://h:0/", 'invalid port ":0"'),
        ("http://h:65536/", 'invalid port ":65536"'),
        ("http://a b/", 'invalid host "a b"'),
        ("http://[::1/", "invalid host: missing ']' in host"),
        ("http://[zz]/", 'invalid IPv6 host "[zz]"'),
        ("http://h/\x00", "invalid control character in url"),
    ],
)
def test_parse_target_errors(url: str, reason: str) -> None:
    with pytest.raises(TargetURLError) as info:
        parse_target(url)
    assert info.value.reason == reason
    assert str(info.value) == reason
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("h", ("h", None)),
        ("h:8080", ("h", "8080")),
        ("h:", ("h", "")),
        ("[::1]", ("::1", None)),
        ("[::1]:443", ("::1", "443")),
    ],
)
def test_split_host_port(authority: str, expected: tuple[str, str | None]) -> None:
    assert split_host_port(authority) == expected


@pytest.mark.parametrize("authority", ["[::1", "[::1]x"])
def test_split_host_port_errors(authority: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(authority)


_PATH_BYTES = st.binary(max_size=24).map(lambda b: b.decode("latin-1"))
_PATH_TEXT = st.text(alphabet="/%aA1(|')é.~+ fF2", max_size=16)


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(_PATH_BYTES, _PATH_TEXT))
def test_pre_normalize_output_is_valid_and_means_the_same(raw: str) -> None:
    try:
        out = pre_normalize(raw)
    except BadRequest:
        return
    assert is_valid(out.encode("ascii"))
    assert decode(out) == decode(raw.encode("latin-1", "replace"))


@settings(max_examples=300, deadline=None)
@given(
    target=st.sampled_from(["", "/", "/api", "/api/", "/Xyz('1')", "/a%2Fb", "/p%25"]),
    raw=st.one_of(st.none(), _PATH_BYTES, _PATH_TEXT),
    encode_url=st.booleans(),
)
def test_wire_path_always_sends_the_decoded_path(
    target: str, raw: str | None, encode_url: bool
) -> None:
    try:
        rest = None if raw is None else pre_normalize(raw)
    except BadRequest:
        return
    wire = wire_path(target, rest, encode_url)
    assert wire.startswith("/")
    assert is_valid(wire.encode("ascii"))
    expected = join(decode(target), None if rest is None else decode(rest)) or b"/"
    assert decode(wire) == expected
    if encode_url and rest not in (None, ""):
        assert wire == canon(expected)


@pytest.mark.parametrize(
    ("rest", "escapes"),
    [
        (None, False),
        ("", False),
        ("/orders/1", False),
        ("/a/../b", False),
        ("/a/./../b", False),
        ("/a/b/../..", False),
        ("/..", True),
        ("/../admin", True),
        ("/a/../../admin", True),
        ("/%2e%2e/admin", True),
        ("/%2E./admin", True),
        ("/a%2f..%2f..%2fadmin", True),  # %2F decodes to a separator at some targets
        ("/a/..\\..\\admin", True),  # and so does a backslash
        ("/a//../..", True),
        ("/...", False),
        ("/..a/b", False),
        ("/a/.", False),
    ],
)
def test_escapes_base(rest: str | None, escapes: bool) -> None:
    assert escapes_base(rest) is escapes
