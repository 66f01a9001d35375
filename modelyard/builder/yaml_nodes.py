"""What PyYAML's loaders do not report, from a composed document's nodes (pure): keys given twice
in one mapping, which `safe_load` resolves by keeping the last without a word."""

from __future__ import annotations

from collections.abc import Iterator

import yaml

YamlPath = tuple[str | int, ...]  # keys and list indexes from the document's root

_MERGE_KEY = "tag:yaml.org,2002:merge"  # `<<`: merged mappings may repeat keys


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


def key_text(key: yaml.Node) -> str:
    return key.value if isinstance(key, yaml.ScalarNode) else "?"
