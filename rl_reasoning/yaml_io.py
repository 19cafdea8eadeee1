"""Reading YAML that a user wrote (recipes, `key=value` overrides) without trusting it.

`yaml.safe_load` builds no objects, but it is not safe against size: nine levels of
`&a [*z, *z, ...]` ("billion laughs") compose to a few hundred nodes yet expand to billions of
values as soon as anything walks the result (formatting an error message, copying a config).
`load_yaml` composes the node graph first, counts the values it would expand to (each shared
node counted once per reference, memoised, so the count itself is linear in the file), and
refuses more than MAX_VALUES, or a self-referencing anchor, before anything is constructed.
A file that is not UTF-8 is refused with the line and byte, and nesting too deep for the parser
is refused too; each case is one `ConfigError` line.
"""

from __future__ import annotations

import yaml

from .errors import ConfigError

MAX_VALUES = 100_000  # a recipe has a few hundred; a data-inline list of problems a few thousand


def decode_utf8(data: bytes, where: str) -> str:
    """`data` as text, or a ConfigError naming the line and the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"{where}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column})") from None


def load_yaml(text: str, where: str):
    """The value of one YAML document, refusing alias bombs, self-references and absurd nesting."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise ConfigError(f"{where}: nested too deeply to be a recipe") from None
        if node is None:
            return None
        expanded = _expanded_size(node, where)
        if expanded > MAX_VALUES:
            raise ConfigError(f"{where}: aliases (*name) expand to more than {MAX_VALUES:,} values; refusing to build it")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _expanded_size(root: yaml.Node, where: str) -> int:
    """Values in the fully expanded document (iterative post-order, memoised per node)."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            size[key] = min(1 + sum(size[id(c)] for c in _children(node)), MAX_VALUES + 1)
            continue
        if key in size:
            continue
        if key in on_path:
            raise ConfigError(f"{where}: an alias (*name) refers to the value that contains it (line {node.start_mark.line + 1})")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in size)
    return size[id(root)]
