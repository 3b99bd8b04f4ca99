"""Strict JSON: one parse rule for every signed, hashed or wire-carried JSON document.

Python's :func:`json.loads` is lenient where edgeseal cannot be. A document that
is signed or hashed must have exactly one meaning, to every reader, so
:func:`loads` refuses what two parsers may read differently:

- **duplicate keys** (RFC 8259 §4 leaves their meaning open: Python keeps the
  last value, other parsers the first or an error), at any depth;
- the constants **NaN, Infinity and -Infinity** (not JSON at all, RFC 8259 §6);
- **floating-point numbers** unless ``allow_floats`` is set: a float's text has
  many spellings and its value depends on the reader's precision, so the
  formats that are signed or hashed carry integers only (with floats allowed,
  a literal beyond the double range such as ``1e999`` still reads as ``inf``);
- bytes that are **not UTF-8** (RFC 8259 §8.1), and a UTF-8 byte-order mark;
- nesting past Python's recursion limit, and integer literals past its digit
  limit (``sys.get_int_max_str_digits``), which both become errors here rather
  than escaping as :class:`RecursionError`.

Every refusal is a :class:`StrictJSONError` (a :class:`ValueError`) whose
``rule`` names the rule broken and whose ``token`` holds the offending key,
number or constant, so each caller can wrap it into its own error type and
message. The messages never quote a key or value; bound the input before calling.
Nothing here does I/O.
"""

from __future__ import annotations

import json
from typing import Any, Literal

__all__ = ["Rule", "StrictJSONError", "loads"]

Rule = Literal["encoding", "syntax", "nesting", "duplicate-key", "float", "constant"]


class StrictJSONError(ValueError):
    """The input is not strict JSON; ``rule`` says which rule it broke.

    ``token`` is the duplicated key, the float's literal text or the constant's
    name for those rules, else ``None``. For ``"encoding"``, ``"syntax"`` and
    ``"nesting"`` the message is that of the underlying Python error.
    """

    def __init__(self, message: str, *, rule: Rule, token: str | None = None) -> None:
        super().__init__(message)
        self.rule: Rule = rule
        self.token = token


def loads(data: bytes | bytearray | memoryview | str, *, allow_floats: bool = False) -> Any:
    """Parse ``data`` (UTF-8 bytes, or already-decoded text) as strict JSON.

    Raises :class:`StrictJSONError` for anything the module docstring refuses;
    with ``allow_floats`` the non-constant floats are returned as :class:`float`.
    """
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(str(exc), rule="encoding") from None
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_float=None if allow_floats else _refuse_float,
            parse_constant=_refuse_constant,
        )
    except StrictJSONError:
        raise
    except RecursionError as exc:
        raise StrictJSONError(str(exc), rule="nesting") from None
    except ValueError as exc:
        # JSONDecodeError, and int()'s refusal of an over-long integer literal.
        raise StrictJSONError(str(exc), rule="syntax") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictJSONError("duplicate key", rule="duplicate-key", token=key)
        out[key] = value
    return out


def _refuse_float(text: str) -> Any:
    raise StrictJSONError("floating-point numbers are not allowed", rule="float", token=text)


def _refuse_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not allowed", rule="constant", token=name)
