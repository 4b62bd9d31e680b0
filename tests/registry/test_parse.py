from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from appgateway.registry.manifest_yaml import (
    _COLUMNS,
    _FLOW_OPENERS,
    _FLOW_PASSES,
)
from appgateway.registry.parse import (
    AppDoc,
    CredentialsDoc,
    EntryDoc,
    Issue,
    ParseResult,
    SecretDoc,
    ServiceDoc,
    merge,
    object_key,
    parse_file,
)

APP_HEAD = """\
apiVersion: applicationconnector.kyma-project.io/v1alpha1
kind: Application
metadata: {name: erp}
"""


def parse(name: str, text: str) -> ParseResult:
    return parse_file(name, textwrap.dedent(text).encode())


def issue_lines(name: str, text: str) -> list[str]:
    return [str(i) for i in parse(name, text).issues]


GOOD_APP = APP_HEAD + "spec: {services: []}\n"

BAD_DOCUMENTS = [
    pytest.param(
        "apps.yaml",
        GOOD_APP
        + "---\n"
        + APP_HEAD
        + """\
spec:
  services:
    - displayName: Orders
      entries:
        - {type: API, targetUrl: http://a}
        - {type: Rest, targetUrl: http://a}
""",
        ["apps.yaml#2: Application/erp: spec.services[0].entries[1].type: must be API or Events"],
        id="entry-type",
    ),
    pytest.param(
        "list.yaml",
        """\
apiVersion: v1
kind: List
items:
  - apiVersion: applicationconnector.kyma-project.io/v1alpha1
    kind: Application
    metadata: {name: erp}
    spec: {skipVerify: "yes"}
  - apiVersion: v1
    kind: SecretList
    items:
      - {apiVersion: v1, kind: Secret, metadata: {name: s}, data: {crt: "!!"}}
""",
        [
            "list.yaml#1.items[0]: Application/erp: spec.skipVerify: must be a boolean, not string",
            "list.yaml#1.items[1].items[0]: Secret/s: data.crt: invalid base64",
        ],
        id="list-items",
    ),
    pytest.param(
        "x.yaml",
        "---\n---\n- a\n",
        ["x.yaml#2: document must be a mapping, not list"],
        id="not-a-mapping-numbered-after-empty-doc",
    ),
    pytest.param("x.yaml", "a: 1\n", ["x.yaml#1: kind: is required"], id="no-kind"),
    pytest.param(
        "x.yaml", "kind: [Secret]\n", ["x.yaml#1: kind: must be a string"], id="kind-type"
    ),
    pytest.param(
        "x.yaml",
        "kind: Application\nmetadata: {name: erp}\n",
        ["x.yaml#1: Application/erp: apiVersion: is required"],
        id="no-api-version",
    ),
    pytest.param(
        "x.yaml",
        "apiVersion: applicationconnector.kyma-project.io/v1\nkind: Application\n"
        "metadata: {name: erp}\n",
        [
            "x.yaml#1: Application/erp: apiVersion: unsupported apiVersion "
            "'applicationconnector.kyma-project.io/v1', "
            "want 'applicationconnector.kyma-project.io/v1alpha1'"
        ],
        id="application-api-version",
    ),
    pytest.param(
        "x.yaml",
        "apiVersion: applicationconnector.kyma-project.io/v1alpha1\nkind: Application\n",
        ["x.yaml#1: Application: metadata.name: is required"],
        id="no-name",
    ),
    pytest.param(
        "x.yaml",
        "apiVersion: applicationconnector.kyma-project.io/v1alpha1\nkind: Application\n"
        "metadata: {name: Erp_1}\n",
        [
            "x.yaml#1: Application/Erp_1: metadata.name: must be a DNS-1123 subdomain "
            "(lower-case letters, digits, '-' and '.')"
        ],
        id="bad-name",
    ),
    pytest.param(
        "x.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: 5}\n",
        ["x.yaml#1: Secret: metadata.name: must be a string, not integer"],
        id="name-type",
    ),
    pytest.param(
        "x.yaml",
        APP_HEAD + "spec: {services: {a: 1}}\n",
        ["x.yaml#1: Application/erp: spec.services: must be a list, not mapping"],
        id="services-not-list",
    ),
    pytest.param(
        "x.yaml",
        APP_HEAD + "spec: [1]\n",
        ["x.yaml#1: Application/erp: spec: must be a mapping, not list"],
        id="spec-not-mapping",
    ),
    pytest.param(
        "x.yaml",
        APP_HEAD + "spec:\n  encodeUrl: 1\n  services:\n    - id: 7\n      entries: []\n    - x\n",
        [
            "x.yaml#1: Application/erp: spec.encodeUrl: must be a boolean, not integer",
            "x.yaml#1: Application/erp: spec.services[0].id: must be a string, not integer",
            "x.yaml#1: Application/erp: spec.services[0].displayName: is required",
            "x.yaml#1: Application/erp: spec.services[1]: must be a mapping, not string",
        ],
        id="every-problem-reported",
    ),
    pytest.param(
        "x.yaml",
        APP_HEAD
        + """\
spec:
  services:
    - displayName: S
      entries:
        - name: e
        - type: API
          targetUrl: [http://a]
          credentials: {type: Basic, secretName: s, csrfInfo: yes}
          requestParametersSecretName: {a: b}
""",
        [
            "x.yaml#1: Application/erp: spec.services[0].entries[0].type: is required",
            "x.yaml#1: Application/erp: spec.services[0].entries[1].targetUrl: "
            "must be a string, not list",
            "x.yaml#1: Application/erp: spec.services[0].entries[1].requestParametersSecretName: "
            "must be a string, not mapping",
            "x.yaml#1: Application/erp: spec.services[0].entries[1].credentials.csrfInfo: "
            "must be a mapping, not boolean",
        ],
        id="entry-fields",
    ),
    pytest.param(
        "s.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: 3}\n"
        "data: [a]\nstringData: {port: 8080, 5: x}\n",
        [
            "s.yaml#1: Secret/s: metadata.namespace: must be a string, not integer",
            "s.yaml#1: Secret/s: data: must be a mapping, not list",
            "s.yaml#1: Secret/s: stringData.port: must be a string, not integer",
            "s.yaml#1: Secret/s: stringData: keys must be strings, not integer",
        ],
        id="secret-shapes",
    ),
    pytest.param(
        "s.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {a: YWJj, b: 'YW Jj', c: YWJ}\n",
        [
            "s.yaml#1: Secret/s: data.b: invalid base64",
            "s.yaml#1: Secret/s: data.c: invalid base64",
        ],
        id="strict-base64",
    ),
    pytest.param(
        "x.yaml",
        "apiVersion: v1\nkind: List\nitems: {a: 1}\n",
        ["x.yaml#1: List: items: must be a list, not mapping"],
        id="items-not-list",
    ),
    pytest.param(
        "x.yaml",
        "a: 1\n---\nb: c: d\n",
        [
            "x.yaml: invalid YAML at line 3, column 5: "
            "mapping values are not allowed in this context"
        ],
        id="yaml-syntax",
    ),
    pytest.param(
        "x.json",
        '{"kind": "Secret",}',
        [
            "x.json: invalid JSON at line 1, column 19: "
            "Expecting property name enclosed in double quotes"
        ],
        id="json-syntax",
    ),
    pytest.param("x.yaml", "a: !!python/object:os.system x\n", None, id="unsafe-tag"),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_DOCUMENTS)
def test_bad_documents(name: str, text: str, expected: list[str] | None) -> None:
    result = parse(name, text)
    assert all(i.severity == "error" for i in result.issues)
    if expected is None:  # only the failure matters, the libyaml wording does not
        assert result.failed and len(result.issues) == 1
        return
    assert [str(i) for i in result.issues] == expected


@pytest.mark.parametrize(
    ("text", "failed", "rejected"),
    [
        ("a: [", True, []),
        (APP_HEAD + "spec: {skipVerify: 1}\n", False, [("Application", "", "erp")]),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns}\ndata: {a: '*'}\n",
            False,
            [("Secret", "ns", "s")],
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: 'Bad Name'}\ndata: [1]\n",
            False,
            [("Secret", "", "Bad Name")],
        ),
        ("apiVersion: v1\nkind: Secret\ndata: [1]\n", False, []),
    ],
)
def test_failed_and_rejected(text: str, failed: bool, rejected: list[tuple[str, str, str]]) -> None:
    result = parse("f.yaml", text)
    assert result.failed is failed
    assert list(result.rejected) == rejected
    assert result.objects == ()


def test_invalid_utf8_fails_the_file() -> None:
    result = parse_file("x.yaml", b"a: \xff\n")
    assert result.failed
    assert [str(i) for i in result.issues] == ["x.yaml: not UTF-8 text: invalid byte at offset 3"]


def test_issue_text_and_severity() -> None:
    issue = Issue("a.yaml#1", "Secret", "s", "data.x", "bad", "warning")
    assert str(issue) == "a.yaml#1: Secret/s: data.x: bad"
    assert str(Issue("a.yaml", "", "", "", "invalid YAML")) == "a.yaml: invalid YAML"


def test_application_tree() -> None:
    result = parse(
        "apps.yaml",
        """\
        ---
        # an empty document is skipped, but counted
        ---
        apiVersion: applicationconnector.kyma-project.io/v1alpha1
        kind: Application
        metadata: {name: erp, namespace: ignored, labels: {a: b}}
        spec:
          description: ignored
          skipVerify: true
          services:
            - id: "77aa01"
              name: orders-1
              displayName: Orders API (v2)
              unknownField: 1
              entries:
                - type: API
                  name: Sales Orders
                  targetUrl: https://erp.example.com/odata?x=1
                  gatewayUrl: ignored
                  credentials:
                    type: OAuth
                    secretName: sec
                    authenticationUrl: https://erp.example.com/token
                    csrfInfo: {tokenEndpointURL: https://erp.example.com/csrf}
                  requestParametersSecretName: params
                - type: Events
                  name: events
            - displayName: Bare
              entries:
                - {type: API, targetUrl: http://x, credentials: {}}
                - {type: API, targetUrl: http://x, credentials: {csrfInfo: {}}}
        """,
    )
    assert result.issues == () and not result.failed
    assert result.objects == (
        AppDoc(
            location="apps.yaml#2",
            name="erp",
            skip_verify=True,
            encode_url=True,
            services=(
                ServiceDoc(
                    field="spec.services[0]",
                    id="77aa01",
                    name="orders-1",
                    display_name="Orders API (v2)",
                    entries=(
                        EntryDoc(
                            field="spec.services[0].entries[0]",
                            type="API",
                            name="Sales Orders",
                            target_url="https://erp.example.com/odata?x=1",
                            credentials=CredentialsDoc(
                                type="OAuth",
                                secret_name="sec",
                                authentication_url="https://erp.example.com/token",
                                csrf_url="https://erp.example.com/csrf",
                            ),
                            request_parameters_secret_name="params",
                        ),
                        EntryDoc(
                            "spec.services[0].entries[1]",
                            "Events",
                            "events",
                            "",
                            CredentialsDoc(),
                            "",
                        ),
                    ),
                ),
                ServiceDoc(
                    field="spec.services[1]",
                    id="",
                    name="",
                    display_name="Bare",
                    entries=(
                        EntryDoc(
                            "spec.services[1].entries[0]",
                            "API",
                            "",
                            "http://x",
                            CredentialsDoc(),
                            "",
                        ),
                        EntryDoc(
                            "spec.services[1].entries[1]",
                            "API",
                            "",
                            "http://x",
                            CredentialsDoc(csrf_url=""),
                            "",
                        ),
                    ),
                ),
            ),
        ),
    )


@pytest.mark.parametrize(
    ("credentials", "empty"),
    [
        (CredentialsDoc(), True),
        (CredentialsDoc(type="Basic"), False),
        (CredentialsDoc(secret_name="s"), False),
        (CredentialsDoc(authentication_url="http://t"), False),
        (CredentialsDoc(csrf_url=""), False),
    ],
)
def test_empty_credentials(credentials: CredentialsDoc, empty: bool) -> None:
    assert credentials.empty is empty


def test_secrets_union_string_data_wins_and_other_kinds_ignored() -> None:
    result = parse(
        "s.yaml",
        """\
        apiVersion: v1
        kind: Secret
        metadata: {name: s1}
        data: {a: YWFh, b: YmJi, empty: ""}
        stringData: {b: from-string-data, c: ccc}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: c}
        data: {a: not-base64!}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: Not_Valid}
        ---
        apiVersion: v2
        kind: Secret
        metadata: {name: other-api-version}
        ---
        apiVersion: v1
        kind: Secret
        metadata: {name: s2, namespace: kyma-system}
        """,
    )
    assert result.issues == ()
    assert result.objects == (
        SecretDoc(
            "s.yaml#1",
            "s1",
            None,
            {"a": b"aaa", "b": b"from-string-data", "empty": b"", "c": b"ccc"},
        ),
        SecretDoc("s.yaml#5", "s2", "kyma-system", {}),
    )


def test_json_file_is_one_document() -> None:
    text = (
        '{"apiVersion": "v1", "kind": "List", "items": ['
        '{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "a"}},'
        '{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "B"}}]}'
    )
    result = parse("dir/s.json", text)
    assert [o.location for o in result.objects] == ["dir/s.json#1.items[0]"]
    assert [str(i) for i in result.issues] == [
        "dir/s.json#1.items[1]: Secret/B: metadata.name: must be a DNS-1123 subdomain "
        "(lower-case letters, digits, '-' and '.')"
    ]


def test_blank_files_have_no_documents() -> None:
    assert parse("a.yaml", "") == ParseResult((), ())
    assert parse("a.json", "  \n") == ParseResult((), ())
    assert parse("a.yaml", "---\n# only a comment\n") == ParseResult((), ())


def _secret(location: str, name: str, value: bytes = b"") -> SecretDoc:
    return SecretDoc(location, name, None, {"v": value})


def test_merge_first_duplicate_wins() -> None:
    a = ParseResult((_secret("a.yaml#1", "s", b"1"), _secret("a.yaml#2", "t")), ())
    b = ParseResult((_secret("b.yaml#1", "s", b"2"),), ())
    merged = merge([a, b], {})
    assert merged.objects == (a.objects[0], a.objects[1])
    assert [str(i) for i in merged.issues] == [
        "b.yaml#1: Secret/s: metadata.name: duplicate name, first defined in a.yaml#1"
    ]


def test_merge_same_name_in_other_namespace_is_not_a_duplicate() -> None:
    a = SecretDoc("a.yaml#1", "s", None, {})
    b = SecretDoc("a.yaml#2", "s", "other", {})
    assert merge([ParseResult((a, b), ())], {}).objects == (a, b)


def test_merge_rejected_object_keeps_previous_version() -> None:
    old = _secret("a.yaml#1", "s", b"old")
    gone = _secret("a.yaml#2", "gone")
    previous = {object_key(old): old, object_key(gone): gone}
    bad = Issue("a.yaml#1", "Secret", "s", "data.v", "invalid base64")
    result = ParseResult((), (bad,), rejected=(("Secret", "", "s"), ("Secret", "", "new")))
    merged = merge([result], previous)
    assert merged.objects == (old,)  # `gone` was deleted; `new` never had a valid version
    assert merged.issues == (bad,)


def test_merge_valid_definition_elsewhere_beats_previous() -> None:
    old = _secret("a.yaml#1", "s", b"old")
    moved = _secret("b.yaml#1", "s", b"moved")
    rejected = ParseResult((), (), rejected=(("Secret", "", "s"),))
    merged = merge([rejected, ParseResult((moved,), ())], {object_key(old): old})
    assert merged.objects == (moved,)


@pytest.mark.parametrize("depth", [3000])
def test_absurd_nesting_fails_the_file(depth: int) -> None:
    text = '{"apiVersion": "v1", "kind": "List", "items": [' * depth + "1" + "]}" * depth
    result = parse("deep.json", text)
    assert result.failed
    assert [str(i) for i in result.issues] == ["deep.json: nested too deeply"]


YAML_TREES = [
    "a: b\nc: [d, 'e', \"f\", ~, null, '', true, False, yes, NO, on]\n---\n- {x: {y: z}}\n",
    "a: 1\nb: -2.5\nc: 0x1f\nd: 2024-01-02\ne: 2024-01-02T03:04:05Z\nf: .inf\ng: 1_000\n",
    "a: !!str 123\nb: !!binary aGk=\nc: !!set {x, y}\nd: !!omap [{k: v}]\ne: !!pairs [{k: v}]\n",
    "? [complex, key]\n: v\n",
    "~: null key\n1: int key\ntrue: bool key\n",
    "a: 1\na: 2\n",
    "= : value key\n",
    "",
    "---\n---\n",
    "a: !!bool maybe\n",
    "a: !unknown x\n",
    "a: !!python/object:os.system x\n",
    "a: [1, *undefined]\n",
    "a: b: c\n",
    "unused: &anchor x\n",  # an anchor no alias names is harmless
    "<<: {a: 1}\nb: 2\n",  # a merge key without an alias
]


def test_merge_keys_without_aliases_in_manifests() -> None:
    result = parse(
        "s.yaml",
        """\
        apiVersion: v1
        kind: Secret
        metadata: {name: s}
        stringData: {<<: {username: alice}, password: pw}
        """,
    )
    assert result.issues == ()
    secret = result.objects[0]
    assert isinstance(secret, SecretDoc)
    assert dict(secret.data) == {"username": b"alice", "password": b"pw"}


@pytest.mark.parametrize(
    "text", [b"x: !!int abc", b"x: !!bool maybe", b"x: !!timestamp x", b"x: !!float nope"]
)
def test_a_value_that_does_not_fit_its_tag_is_a_file_error(text: bytes) -> None:
    result = parse_file("apps.yaml", text + b"\nsecret: hunter2\n")
    (issue,) = result.issues
    assert issue.severity == "error" and issue.location == "apps.yaml"
    assert issue.message == "invalid YAML: a value does not fit its explicit tag"
    assert result.objects == ()


@pytest.mark.parametrize(
    ("annotations", "confined", "issues"),
    [
        ("", False, []),
        ("annotations: {other: x}", False, []),
        ('annotations: {appgateway.io/confine-path: "true"}', True, []),
        ('annotations: {appgateway.io/confine-path: "false"}', False, []),
        (
            "annotations: {appgateway.io/confine-path: true}",
            False,
            [
                "a.yaml#1: Application/erp: metadata.annotations[appgateway.io/confine-path]: "
                'must be "true" or "false"'
            ],
        ),
        (
            'annotations: {appgateway.io/confine-path: "yes"}',
            False,
            [
                "a.yaml#1: Application/erp: metadata.annotations[appgateway.io/confine-path]: "
                'must be "true" or "false"'
            ],
        ),
    ],
)
def test_confine_path_annotation(annotations: str, confined: bool, issues: list[str]) -> None:
    """An unusable value rejects the Application: a security setting that silently does
    nothing would be worse than a missing API."""
    text = (
        "apiVersion: applicationconnector.kyma-project.io/v1alpha1\nkind: Application\n"
        f"metadata:\n  name: erp\n  {annotations}\nspec: {{services: []}}\n"
    )
    result = parse("a.yaml", text)
    assert [str(i) for i in result.issues] == issues
    apps = [o for o in result.objects if isinstance(o, AppDoc)]
    assert [app.confine_path for app in apps] == ([] if issues else [confined])


# -- Limits: nesting depth, aliases, documents per file (issue 13, items 3 and 4) -------------

SECRET_HEAD = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
NESTED = "nested more than 100 levels deep"
ALIASED = "anchors and aliases are not allowed (the node anchored here is used again)"


def flow(depth: int, inner: str = "x", pair: tuple[str, str] = ("[", "]")) -> str:
    return pair[0] * depth + inner + pair[1] * depth


def indented(depth: int) -> str:
    """`depth` block mappings, each one space right of its parent."""
    return "".join(" " * i + "a:\n" for i in range(depth - 1)) + " " * (depth - 1) + "a: x\n"


def alias_bomb(levels: int, width: int) -> str:
    """Nested `kind: List`s whose items are aliases of the level below: width**levels Secrets."""
    lines = [
        "apiVersion: v1",
        "kind: List",
        "items:",
        "- &l0 {apiVersion: v1, kind: Secret, metadata: {name: s}, stringData: {a: b}}",
    ]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*l{level - 1}"] * width)
        lines.append(f"- &l{level} {{apiVersion: v1, kind: List, items: [{refs}]}}")
    return "\n".join(lines) + "\n"


def refused(problem: str) -> list[str]:
    return [f"f.yaml: {problem}"]


def at(line: int, column: int, problem: str) -> list[str]:
    return refused(f"invalid YAML at line {line}, column {column}: {problem}")


TOO_MANY = "more than 100000 documents and List items (split the file)"
NOT_A_MAPPING = ["f.yaml#1: document must be a mapping, not list"]

LIMITS = [
    pytest.param(SECRET_HEAD + "x: " + flow(99), [], id="flow-100-levels"),
    pytest.param(SECRET_HEAD + "x: " + flow(100), at(4, 103, NESTED), id="flow-101-levels"),
    pytest.param(
        SECRET_HEAD + "x: " + flow(100, "a: b", ("{", "}")), at(4, 103, NESTED), id="flow-maps"
    ),
    pytest.param("- " * 100 + "x\n", NOT_A_MAPPING, id="compact-sequences-100"),
    pytest.param("- " * 101 + "x\n", at(1, 201, NESTED), id="compact-101"),
    pytest.param(indented(100), ["f.yaml#1: kind: is required"], id="indented-100"),
    pytest.param(indented(101), at(101, 101, NESTED), id="indented-101"),
    pytest.param("a:\n  b:\n  - " + flow(98), at(3, 102, NESTED), id="block-then-flow"),
    pytest.param("[" * 5000, at(1, 101, NESTED), id="unclosed-5000"),
    pytest.param("[\n" * 5000, at(101, 1, NESTED), id="one-per-line"),
    pytest.param(SECRET_HEAD + "---\n" + flow(101), at(5, 101, NESTED), id="second-document"),
    pytest.param("n: 1\nx: " + flow(100), at(2, 103, NESTED), id="constructed-document"),
    pytest.param("a: &x 1\nb: *x\n", at(1, 4, ALIASED), id="scalar-alias"),
    pytest.param("a: &x {k: v}\nb: [*x]\n", at(1, 4, ALIASED), id="map-alias"),
    pytest.param("k: &k a\n*k : b\n", at(1, 4, ALIASED), id="key-alias"),
    pytest.param("x: &r [*r]\n", at(1, 4, ALIASED), id="cycle"),
    pytest.param("base: &b {x: 1}\nother: {<<: *b, y: 2}\n", at(1, 7, ALIASED), id="merge-key"),
    pytest.param("n: 1\na: &x [s]\nb: *x\n", at(2, 4, ALIASED), id="alias-constructed"),
    pytest.param(alias_bomb(3, 3), at(4, 3, ALIASED), id="alias-bomb-27"),
    pytest.param("---\n" * 100_000, [], id="100000-documents"),
    pytest.param("---\n" * 100_001, refused(TOO_MANY), id="100001-documents"),
    pytest.param(
        "apiVersion: v1\nkind: List\nitems:\n" + "- {}\n" * 99_999,
        [f"f.yaml#1.items[{i}]: kind: is required" for i in range(99_999)],
        id="list-of-99999",
    ),
    pytest.param(
        "apiVersion: v1\nkind: List\nitems:\n" + "- {}\n" * 100_000,
        refused(TOO_MANY),
        id="list-of-100000",
    ),
]


@pytest.mark.parametrize(("text", "expected"), LIMITS)
def test_limits_refuse_the_whole_file(text: str, expected: list[str]) -> None:
    """Beyond a limit the file fails as a whole, like a syntax error: everything it defined
    before stays (registry.md §4)."""
    result = parse_file("f.yaml", text.encode())
    assert [str(i) for i in result.issues] == expected
    assert result.failed is ("f.yaml" in [i.location for i in result.issues])
    assert all(i.severity == "error" for i in result.issues)


def test_json_list_items_are_capped() -> None:
    items = ",".join(
        ['{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}}'] * 100_000
    )
    text = '{"apiVersion": "v1", "kind": "List", "items": [' + items + "]}"
    result = parse_file("f.json", text.encode())
    assert [str(i) for i in result.issues] == [
        "f.json: more than 100000 documents and List items (split the file)"
    ]


@pytest.mark.timeout(20)
def test_alias_bomb_is_refused_at_once() -> None:
    """10**9 Secrets in 1 KB: before aliases were refused, the Lists expanded without end."""
    text = alias_bomb(9, 10)
    assert len(text) < 1100
    result = parse_file("bomb.yaml", text.encode())
    assert [str(i) for i in result.issues] == [
        f"bomb.yaml: invalid YAML at line 4, column 3: {ALIASED}"
    ]
    assert result.failed


@pytest.mark.parametrize("size", [60_000, 1_000_000])
def test_nesting_that_overflowed_the_c_stack_is_refused(size: int) -> None:
    """libyaml's composer recursed once per level: this crashed the process (SIGSEGV). Run in a
    child process, so that a crash fails this test only."""
    code = (
        "import sys; from appgateway.registry.parse import parse_file; "
        "print(*parse_file('deep.yaml', b'[' * int(sys.argv[1])).issues, sep='\\n')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(size)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"deep.yaml: invalid YAML at line 1, column 101: {NESTED}\n"


BOUND = 2 * (_FLOW_OPENERS + 2 * _FLOW_PASSES) + 2 * _COLUMNS


def _true_depth(text: str) -> int:
    """The deepest nesting libyaml's parser reports before the end or the first error."""
    depth = deepest = 0
    try:
        for event in yaml.parse(text, Loader=yaml.CSafeLoader):
            if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                depth += 1
                deepest = max(deepest, depth)
            elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                depth -= 1
    except yaml.YAMLError:
        pass
    return deepest


# Deep texts that try to hide their depth from the cheap bound: closers in quotes, comments and
# tags, line breaks the bound does not see, empty pairs to be dropped, nesting by indentation or
# by compact indicators.
DISGUISED = [
    '[ "]", ' * 2000,
    "[ ']', " * 2000,
    "[ # ]\n" * 2000,
    "[ !<]> " * 2000,
    "[ !!seq " * 2000,
    "[ &a " * 2000,
    "[ a: " * 2000,
    "[ ? " * 2000,
    "{ a: " * 2000,
    "[ [], " * 2000,
    "[{}, " * 2000,
    "[\n" * 2000,
    "[\r" * 2000,
    "[\u2028" * 2000,
    "- " * 2000 + "x",
    "? " * 2000 + "x",
    "- ? " * 1000 + "x",
    "\r".join(" " * i + "a:" for i in range(2000)),
    "\u2028".join(" " * i + "a:" for i in range(2000)),
    "\u0085".join(" " * i + "a:" for i in range(2000)),
    "\n".join(" " * i + "- a:" for i in range(0, 2000, 2)),
    "\n".join(" " * (i // 2) + ("- " if i % 2 else "a:") for i in range(2000)),
    "".join(" " * i + "a:\n" for i in range(249)) + " " * 249 + "a: " + "[ [], " * 800,
]


ORDINARY = [
    GOOD_APP,
    "---\n".join([GOOD_APP.replace("erp", f"app{i}") for i in range(500)]),
    SECRET_HEAD
    + "data:\n  crt: "
    + "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0Q2sx" * 100
    + "\n",
    SECRET_HEAD + "stringData:\n  crt: |\n" + "    -----BEGIN CERTIFICATE-----\n" * 50,
    "items: [\n"
    + "  {kind: Secret, metadata: {name: s, labels: {a: b}}, data: {}},\n" * 300
    + "]\n",
    "apiVersion: v1\nkind: List\nitems:\n"
    + "- {apiVersion: v1, kind: Secret, metadata: {name: s}, stringData: {a: b}}\n" * 3000,
]
