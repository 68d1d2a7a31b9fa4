"""Claim schemas: the names and JSON types of the claims a verifier emits, published by each verifier.

A schema is plain data, so a verifier publishes it in a module that imports nothing heavy and the
policy checker reads it without importing the verifier:

    "string" | "number" | "boolean" | "null" | "any"     a leaf (a JSON type; "any": free-form)
    "string|null"                                          one of several leaf types
    ("null", [schema])                                     one of several schemas (a list or nothing)
    {"name": schema, ...}                                  an object with these keys (others unknown)
    {"*": schema}                                          an object whose keys vary (GPU measurement indexes)
    [schema]                                               an array of elements of that schema

Policies are checked against them at upload (kbs.policy.claimcheck): a path no verifier emits, or a
comparison that can never hold because of the claim's type, is a warning (`--strict`: an error).
The tests hold every verifier to its schema on real evidence (`conforms`), so a schema cannot drift
from the claims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Schema = str | Mapping[str, Any] | list[Any] | tuple[Any, ...]  # see the module docstring
WILDCARD = "*"
LEAF_TYPES = frozenset({"string", "number", "boolean", "null", "any"})


def json_type(value: Any) -> str:
    """The JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list | tuple) else "object"


def leaf_types(schema: Schema) -> frozenset[str]:
    """The JSON types a schema node admits ("object"/"array" for containers)."""
    if isinstance(schema, str):
        return frozenset(schema.split("|"))
    if isinstance(schema, tuple):
        return frozenset().union(*(leaf_types(alternative) for alternative in schema))
    return frozenset({"array"}) if isinstance(schema, list) else frozenset({"object"})


def lookup(schema: Schema, path: Sequence[str]) -> Schema | None:
    """The schema at `path` below `schema`, or None when no claim can be there.  A path that enters
    a free-form value ("any") stays "any": nothing can be said below it."""
    node: Schema = schema
    for i, part in enumerate(path):
        if isinstance(node, tuple):  # the first alternative the rest of the path fits
            found = (lookup(alternative, path[i:]) for alternative in node)
            return next((hit for hit in found if hit is not None), None)
        if isinstance(node, str):
            if "any" in leaf_types(node):
                return "any"
            return None
        if isinstance(node, list):
            if not part.isdigit():
                return None
            node = node[0] if node else "any"
        elif part in node:
            node = node[part]
        elif WILDCARD in node:
            node = node[WILDCARD]
        else:
            return None
    return node


def names_at(schema: Schema) -> list[str]:
    """The keys an object schema names (for "did you mean")."""
    return sorted(k for k in schema if k != WILDCARD) if isinstance(schema, Mapping) else []


def conforms(value: Any, schema: Schema, where: str = "") -> list[str]:
    """Every place where `value` is not of `schema` (empty when it conforms)."""
    if isinstance(schema, tuple):
        tries = [conforms(value, alternative, where) for alternative in schema]
        return [] if any(not problems for problems in tries) else min(tries, key=len)
    if isinstance(schema, str):
        allowed = leaf_types(schema)
        if "any" in allowed or json_type(value) in allowed:
            return []
        return [f"{where or '(root)'}: {json_type(value)}, schema says {schema}"]
    if isinstance(schema, list):
        if not isinstance(value, list | tuple):
            return [f"{where or '(root)'}: {json_type(value)}, schema says array"]
        element = schema[0] if schema else "any"
        return [p for i, item in enumerate(value) for p in conforms(item, element, f"{where}[{i}]")]
    if not isinstance(value, Mapping):
        return [f"{where or '(root)'}: {json_type(value)}, schema says object"]
    problems = []
    for key, item in value.items():
        path = f"{where}.{key}" if where else key
        if key in schema or WILDCARD in schema:
            problems += conforms(item, schema[key] if key in schema else schema[WILDCARD], path)
        else:
            problems.append(f"{path}: not in the schema")
    return problems


def validate_schema(schema: Schema, where: str = "schema") -> None:
    """Raise ValueError if `schema` is not a well-formed schema (the verifiers' modules are tested with it)."""
    if isinstance(schema, str):
        unknown = leaf_types(schema) - LEAF_TYPES
        if unknown:
            raise ValueError(f"{where}: unknown type {sorted(unknown)[0]!r}")
    elif isinstance(schema, tuple):
        for i, alternative in enumerate(schema):
            validate_schema(alternative, f"{where}<{i}>")
    elif isinstance(schema, list):
        if len(schema) != 1:
            raise ValueError(f"{where}: an array schema holds exactly one element schema")
        validate_schema(schema[0], f"{where}[]")
    elif isinstance(schema, Mapping):
        for key, item in schema.items():
            validate_schema(item, f"{where}.{key}")
    else:
        raise ValueError(f"{where}: {type(schema).__name__} is not a schema")
