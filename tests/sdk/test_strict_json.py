"""Strict JSON: one meaning per document, or a StrictJSONError naming the rule broken."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeseal.sdk.strict_json import StrictJSONError, loads


def _refusal(data: bytes | str, **kwargs: Any) -> StrictJSONError:
    with pytest.raises(StrictJSONError) as info:
        loads(data, **kwargs)
    return info.value


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"a": 1, "b": [true, false, null, "s"]}', {"a": 1, "b": [True, False, None, "s"]}),
        (b"[]", []),
        (b'"text"', "text"),
        (b"-0", 0),
        (b" 7 ", 7),
        ('{"é": "ü"}'.encode(), {"é": "ü"}),
        ('{"é": 1}', {"é": 1}),
        (bytearray(b"[1]"), [1]),
        (memoryview(b"[1]"), [1]),
        (b'{"n": ' + b"9" * 40 + b"}", {"n": int("9" * 40)}),
        (b'{"a": {"b": 1}, "c": {"b": 2}}', {"a": {"b": 1}, "c": {"b": 2}}),
    ],
)
def test_strict_json_is_still_json(raw: bytes | bytearray | memoryview | str, value: Any) -> None:
    assert loads(raw) == value


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (b'{"a": 1, "a": 2}', "a"),
        (b'{"a": 1, "a": 1}', "a"),
        (b'{"x": [{"k": 1, "k": 2}]}', "k"),
        (b'{"\\u0061": 1, "a": 2}', "a"),  # the same key, spelled two ways
    ],
)
def test_duplicate_keys_are_refused_at_any_depth(raw: bytes, key: str) -> None:
    error = _refusal(raw)
    assert (error.rule, error.token, str(error)) == ("duplicate-key", key, "duplicate key")


@pytest.mark.parametrize("literal", ["1.5", "1e5", "-1E-3", "0.0", "1.0"])
def test_floats_are_refused_unless_allowed(literal: str) -> None:
    error = _refusal(f'{{"a": {literal}}}')
    assert (error.rule, error.token) == ("float", literal)
    assert str(error) == "floating-point numbers are not allowed"
    assert loads(f'{{"a": {literal}}}', allow_floats=True) == {"a": float(literal)}


@pytest.mark.parametrize("name", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("allow_floats", [False, True])
def test_nan_and_infinity_are_refused_even_with_floats(name: str, allow_floats: bool) -> None:
    error = _refusal(f"[{name}]", allow_floats=allow_floats)
    assert (error.rule, error.token, str(error)) == ("constant", name, f"{name} is not allowed")


@pytest.mark.parametrize(
    "raw",
    [b"\xff", b"\xff\xfe{}", b'{"a": "\xc3"}', b'"\xed\xa0\x80"'],
    ids=["invalid-start", "utf16-bom", "truncated", "encoded-surrogate"],
)
def test_bytes_must_be_utf8(raw: bytes) -> None:
    error = _refusal(raw)
    assert error.rule == "encoding" and error.token is None
    assert "utf-8" in str(error)


def test_a_utf8_byte_order_mark_is_refused() -> None:
    assert _refusal(b"\xef\xbb\xbf{}").rule == "syntax"


@pytest.mark.parametrize(
    "raw", [b"", b"{not json", b'{"a": 1} x', b'{"a": 01}', b'{"a": .5}', b"[1,]"]
)
def test_malformed_json_is_a_syntax_refusal(raw: bytes) -> None:
    error = _refusal(raw)
    assert error.rule == "syntax" and error.token is None


def test_an_integer_past_the_digit_limit_is_refused() -> None:
    assert _refusal(b"[" + b"9" * 5000 + b"]").rule == "syntax"


@pytest.mark.parametrize("opening", [b"[", b'{"a":'])
def test_deep_nesting_is_an_error_not_a_crash(opening: bytes) -> None:
    error = _refusal(opening * 100_000)
    assert error.rule == "nesting" and isinstance(error, ValueError)
    assert loads(b"[" * 200 + b"]" * 200) is not None


def test_the_first_rule_broken_in_reading_order_is_the_one_reported() -> None:
    assert _refusal(b'{"a": 1.5, "a": 2}').rule == "float"  # the float is read first
    assert _refusal(b'{"a": 1, "a": 2} trailing').rule == "duplicate-key"


def test_messages_never_quote_the_input() -> None:
    secret = "s3cr3t-key-material"
    for raw in (f'{{"{secret}": 1, "{secret}": 2}}', f'{{"{secret}": 1.5}}'):
        assert secret not in str(_refusal(raw))


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_JSON_VALUES)
def test_integer_json_round_trips(value: Any) -> None:
    assert loads(json.dumps(value, ensure_ascii=False).encode("utf-8")) == value


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_parse_or_raise_strict_json_error(raw: bytes) -> None:
    try:
        value = loads(raw, allow_floats=True)
    except StrictJSONError as error:
        assert error.rule in {"encoding", "syntax", "nesting", "duplicate-key", "constant"}
        return
    assert json.loads(raw.decode("utf-8")) == value  # what is accepted means the same
