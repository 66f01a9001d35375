"""What PyYAML's loaders do not report, from a composed document's nodes (pure): keys given twice
in one mapping, which `safe_load` resolves by keeping the last without a word, and keys that YAML
does not read as text."""

from __future__ import annotations

from collections.abc import Iterator

import yaml

YamlPath = tuple[str | int, ...]  # keys and list indexes from the document's root

_MERGE_KEY = "tag:yaml.org,2002:merge"  # `<<`: merged mappings may repeat keys
_STR_TAG = "tag:yaml.org,2002:str"


def mappings(root: yaml.Node) -> Iterator[tuple[YamlPath, yaml.MappingNode]]:
    """Every mapping node with its path, each once (aliases can make the node graph cyclic)."""
    pending: list[tuple[YamlPath, yaml.Node]] = [((), root)]
    visited: set[int] = set()
    while pending:
        path, node = pending.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            yield path, node
            pending.extend(((*path, key_text(key)), value) for key, value in node.value)
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(((*path, index), item) for index, item in enumerate(node.value))


def repeated_keys(root: yaml.Node) -> list[tuple[YamlPath, yaml.Node, yaml.Node]]:
    """Each key given again in its mapping: (its path, the key's first node, the repeat's)."""
    repeats: list[tuple[YamlPath, yaml.Node, yaml.Node]] = []
    for path, mapping in mappings(root):
        first: dict[str, yaml.Node] = {}
        for key, _ in mapping.value:
            if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_KEY:
                if key.value in first:
                    repeats.append(((*path, key.value), first[key.value], key))
                else:
                    first[key.value] = key
    return repeats


def keys_not_text(root: yaml.Node) -> list[tuple[YamlPath, str]]:
    """Each key that YAML does not read as text (`on:`, `no:`, `null:`, `1:` in YAML 1.1), with its
    path and a message saying what YAML read and what to write instead. pydantic reports such a
    key only as "Keys should be strings", at a path that names no key of the file (a build review:
    `on: 1` was reported at line 1 as `[1]`)."""
    found: list[tuple[YamlPath, str]] = []
    for path, mapping in mappings(root):
        for key, _ in mapping.value:
            # A list or a mapping as a key: PyYAML refuses it already ("found unhashable key").
            if isinstance(key, yaml.ScalarNode) and key.tag not in (_STR_TAG, _MERGE_KEY):
                message = (
                    f"YAML reads the key {key.value} as {_read_as(key)}, not as a name: "
                    f'put it in quotes ("{key.value}")'
                )
                found.append(((*path, key.value), message))
    return found


def _read_as(key: yaml.ScalarNode) -> str:
    """What YAML 1.1 makes of a plain scalar that is not text: `on` is true, `null` null, `1` a number."""
    kind = key.tag.rsplit(":", 1)[-1]
    try:
        value = yaml.constructor.SafeConstructor().construct_object(key)
    except (yaml.YAMLError, ValueError, LookupError, AttributeError, TypeError):  # bare builtins too
        return f"a {kind}"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return f"the number {value}"
    return f"a {kind}"


def key_text(key: yaml.Node) -> str:
    return key.value if isinstance(key, yaml.ScalarNode) else "?"
