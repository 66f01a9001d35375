"""JSON schemas reshaped for llama-cpp-python's schema-to-grammar converter (pure).

The converter resolves `$ref`s (`#/…`) against the root of the schema it is given, and does not
follow one at the root itself. Two shapes that clients send every day fall foul of that:
- pydantic's schema of a self-referencing model is a root `{"$ref": "#/$defs/Node", "$defs": …}`
  (the ollama client's `format=Node.model_json_schema()`);
- a tool's parameters with nested models carry their own `$defs`, which a forced tool call puts
  below the root (instructor's and LangChain's structured output through tools).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

DEFINITION_KEYS = ("$defs", "definitions")
# What a grammar rule's name cannot hold: the converter names a rule after a definition.
_RULE_UNSAFE = re.compile(r"[^A-Za-z0-9-]")


# The most repetitions a schema may ask for (minLength, maxItems, a pattern's {n}…). llama.cpp's
# grammar parser unrolls `x{m,n}` into rules, and the converter unrolls some itself: 10^8 threw
# std::bad_alloc inside the runner, which aborted with every request of that model (a serving
# review). 100,000 characters or items is more than a context holds.
MAX_REPETITIONS = 100_000
_COUNT_KEYWORDS = ("minLength", "maxLength", "minItems", "maxItems", "minProperties", "maxProperties")
# A repetition: `{5}`, `{2,}`, `{0,9}`, in a pattern (not an escaped `\{`) or in GBNF.
_REPETITION = re.compile(r"(?<!\\)\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")
# GBNF's literals and character classes, whose braces are text, not repetitions.
_GBNF_TEXT = re.compile(r'"(?:\\.|[^"\\])*"|\[(?:\\.|[^\]\\])*\]')


def check_repetitions(schema: object) -> None:
    """ValueError when a count keyword or a pattern's repetition anywhere in `schema` is over
    MAX_REPETITIONS (pure)."""
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, Mapping):
            for key in _COUNT_KEYWORDS:
                value = node.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool) and value > MAX_REPETITIONS:
                    raise ValueError(
                        f"{key} {value:,} is more than the {MAX_REPETITIONS:,} a schema may ask for"
                    )
            pattern = node.get("pattern")
            if isinstance(pattern, str):
                _check_counts(pattern, "its pattern")
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


def check_grammar_repetitions(grammar: str) -> None:
    """ValueError when the grammar repeats anything more than MAX_REPETITIONS times (pure)."""
    _check_counts(_GBNF_TEXT.sub("", grammar), "its grammar")


def _check_counts(text: str, where: str) -> None:
    for match in _REPETITION.finditer(text):
        count = max(int(part) for part in match.groups() if part)
        if count > MAX_REPETITIONS:
            raise ValueError(
                f"{where} repeats something {count:,} times, more than the {MAX_REPETITIONS:,} a "
                "schema may ask for"
            )


def root_resolved(schema: object) -> object:
    """`schema` with a `$ref` at its root replaced by what it points to; its definitions stay at
    the root, for the references inside. Anything else is returned as it is."""
    seen: set[str] = set()
    while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str):
        ref = schema["$ref"]
        target = _pointed(schema, ref)
        if target is None or ref in seen:
            return schema  # not a local reference, or a loop: the converter says what is wrong
        seen.add(ref)
        definitions = {key: schema[key] for key in DEFINITION_KEYS if key in schema}
        schema = {**target, **definitions}
    return schema


def for_the_converter(schema: object) -> object:
    """`schema` as the converter takes it: its definitions under rule-safe names (references
    rewritten), and a `$ref` at its root resolved."""
    if isinstance(schema, Mapping) and any(isinstance(schema.get(k), Mapping) for k in DEFINITION_KEYS):
        body, moved = hoisted_definitions(schema, "")
        schema = {**body, "$defs": moved}
    return root_resolved(schema)


def hoisted_definitions(schema: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A schema to be placed below the root of another: (itself without its definitions, those
    definitions under names that start with `prefix` and hold only letters, digits and '-', for
    the root's `$defs`), its references to them rewritten to match. Other references are left as
    they are."""
    body = copy.deepcopy(dict(schema))
    moved: dict[str, Any] = {}
    renamed: dict[str, str] = {}
    for key in DEFINITION_KEYS:
        definitions = body.pop(key, None)
        if isinstance(definitions, Mapping):
            for name, definition in definitions.items():
                new_name = f"{prefix}{_RULE_UNSAFE.sub('-', str(name))}"
                while new_name in moved:  # two names that differ only where they were unsafe
                    new_name += "-"
                moved[new_name] = definition
                renamed[f"#/{key}/{name}"] = f"#/$defs/{new_name}"
    _rewrite_refs(body, renamed)
    _rewrite_refs(moved, renamed)
    return body, moved


def _pointed(root: Mapping[str, Any], ref: str) -> Mapping[str, Any] | None:
    if not ref.startswith("#/"):
        return None
    node: object = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")  # JSON pointer escapes
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Mapping) else None


def _rewrite_refs(node: object, renamed: Mapping[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in renamed:
            node["$ref"] = renamed[ref]
        for value in node.values():
            _rewrite_refs(value, renamed)
    elif isinstance(node, list):
        for value in node:
            _rewrite_refs(value, renamed)
