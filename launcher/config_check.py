"""Checking a config's keys and values against config_schema.json, and saying what is wrong in
one line: `<file>: <key.path>: <what is wrong and what is expected>`, with a close match for a
misspelt key (never one of opposite meaning)."""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any, Mapping, NoReturn, Sequence

import jsonschema

from launcher.errors import ConfigError

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TYPE_NAMES = {"object": "a mapping", "array": "a list", "string": "a string",
               "integer": "an integer", "number": "a number", "boolean": "true or false"}


def check_keys(value: Any, path: list, source: str) -> None:
    """Mapping keys must be strings (YAML reads `1:` or `yes:` as a number or a boolean)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                fail(source, path + [str(key)], f"expected a string key, got {key!r}; quote it")
            check_keys(item, path + [key], source)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_keys(item, path + [index], source)


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((Path(__file__).parent / "config_schema.json").read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(data: dict, source: str) -> None:
    error = jsonschema.exceptions.best_match(_validator().iter_errors(data))
    if error is not None:
        fail(source, *_explain(error))


def _explain(error: jsonschema.ValidationError) -> tuple[list, str]:
    """A jsonschema error as (key path, what is wrong and what is expected)."""
    path, instance, schema = list(error.absolute_path), error.instance, error.schema
    if "propertyNames" in error.schema_path:  # only the provider section: its keys per type
        return path + [instance], _unknown_provider_key(instance, schema["enum"])
    if error.validator == "required":
        missing = next(key for key in error.validator_value if key not in instance)
        return path + [missing], _missing_message(error, missing)
    if error.validator == "additionalProperties":
        known = schema.get("properties", {})
        unknown = next(key for key in instance if key not in known)
        hint = did_you_mean(unknown, known) or f"; expected one of: {', '.join(known)}"
        return path + [unknown], f"unknown key{hint}"
    message = f"expected {_describe(schema)}, got {_show(instance)}"
    if error.validator == "enum":
        message += did_you_mean(instance, schema["enum"])
    return path, message


def _unknown_provider_key(key: str, known: list) -> str:
    """Names the provider type; says which types do take the key, when it is not a typo."""
    by_type = _keys_by_provider_type()
    kind = next(t for t, keys in by_type.items() if keys == known)
    hint = did_you_mean(key, known)
    takers = [repr(t) for t, keys in by_type.items() if key in keys]
    if not hint and takers:
        hint = f"; a key of provider type{'s' * (len(takers) > 1)} {' and '.join(takers)}"
    hint = hint or f"; expected one of: {', '.join(known)}"
    return f"unknown key for provider type {kind!r}{hint}"


@cache
def _keys_by_provider_type() -> dict[str, list]:
    blocks = _validator().schema["properties"]["provider"]["allOf"]
    return {block["if"]["properties"]["type"]["const"]: block["then"]["propertyNames"]["enum"]
            for block in blocks}


def _missing_message(error: jsonschema.ValidationError, key: str) -> str:
    if "then" in error.schema_path:  # a provider-specific requirement
        return f"missing; provider type {error.instance.get('type')!r} requires it"
    key_schema = error.schema.get("properties", {}).get(key, {})
    return f"missing required key; expected {_describe(key_schema)}"


def _describe(schema: Mapping) -> str:
    """What a value of `schema` should be, in words."""
    if "x-expected" in schema:
        return schema["x-expected"]
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    kind = schema.get("type")
    if schema.get("minimum") == 0:
        return f"a non-negative {kind}"
    if schema.get("exclusiveMinimum") == 0:
        return f"a positive {kind}"
    return _TYPE_NAMES.get(kind, "a valid value")


_OPPOSITES = (("min", "max"), ("head", "worker"), ("internal", "external"))


def did_you_mean(word: Any, choices) -> str:
    """A close match, never one of opposite meaning (min_workers for max_workers,
    use_internal_ips for use_external_head_ip...)."""
    word = str(word)
    pairs = _OPPOSITES + tuple(p[::-1] for p in _OPPOSITES)
    close = [c for c in difflib.get_close_matches(word, [str(c) for c in choices], n=3)
             if not any(a in word and b in c and a not in c for a, b in pairs)]
    return f"; did you mean {close[0]!r}?" if close else ""


def _show(value: Any, limit: int = 60) -> str:
    """A value as the user wrote it, shortened; an empty YAML value is None, say so."""
    if value is None:
        return "an empty value"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_path(parts: Sequence) -> str:
    """`a.b[2]."/remote/path"`: list indices in brackets, unusual keys quoted."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)
            text = text if _PLAIN_KEY.fullmatch(text) else json.dumps(text, ensure_ascii=False)
            out += f".{text}" if out else text
    return out


def fail(source: str, path: Sequence, message: str) -> NoReturn:
    line = f"{source}: {_key_path(path)}: {message}" if path else f"{source}: {message}"
    raise ConfigError(" ".join(line.splitlines()))
