"""Reading YAML written by people: config files and study files, one hardened loader.

Every problem is a ConfigError naming the file (and the line or byte): a missing file, a folder
or device, bytes that are not UTF-8, invalid YAML, a key given twice in one mapping, nesting or
aliases beyond any use a config has (a "billion laughs" file), and a file too large to be one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def yaml_number(value: Any) -> Any:
    """YAML 1.1 reads 1e-4 (no dot) as a string: the float it means; any other value as it is."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


MAX_YAML_BYTES = 1 << 20  # a config or study file is a few KB; anything this large is not one
MAX_YAML_ALIASES = 100  # `*alias` references: a few are a convenience, nested thousands a bomb


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last), and
    more than MAX_YAML_ALIASES aliases (a "billion laughs" file expands them into memory)."""

    aliases = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise ConfigError(f"{self.name}:{mark.line + 1}: more than {MAX_YAML_ALIASES} YAML aliases (*name); "
                                  "a config has no use for that many (nested aliases expand without bound)")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges; flatten_mapping handles it
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error says so below
                continue
            if first is not None:
                raise ConfigError(f"{self.name}:{line}: key {str(key)[:80]!r} given twice (first on line {first})")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml_file(path: Path) -> Any:
    """Parse one YAML file, or ConfigError naming it (and the line or byte) for a missing file,
    a folder, bytes that are not UTF-8, invalid YAML, nesting deeper than a config has any use
    for, or a key given twice in one mapping."""
    try:
        return _read_yaml_file(path)
    except OSError as exc:  # a name longer than the OS allows (ENAMETOOLONG), a path through a file...
        shown = str(path) if len(str(path)) <= 120 else f"{str(path)[:60]}...{str(path)[-40:]}"
        raise ConfigError(f"{shown}: cannot read it as a config file ({exc.strerror or exc})") from None


MAX_YAML_DEPTH = 50  # a config nests 2 levels, a study file 4; PyYAML itself recurses per level


def _read_yaml_file(path: Path) -> Any:
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a YAML config file")
    if path.exists() and not path.is_file():  # a FIFO would block, /dev/zero never end
        raise ConfigError(f"{path}: not a regular file (a device, pipe or socket), not a YAML config file")
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: {path.stat().st_size} bytes, larger than a config file can be "
                              f"({MAX_YAML_BYTES} bytes)")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:  # never quote the content: the byte offset is enough
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    loader = _UniqueKeyLoader(text)
    loader.name = str(path)  # marks in YAML errors name the file
    _check_depth(text, path)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    _check_expanded_size(data, path)
    return data


def _check_depth(text: str, path: Path) -> None:
    """Refuse nesting deeper than MAX_YAML_DEPTH from the token stream (flat, no recursion): the
    parser and composer recurse once per level, and 20,000 levels end in a RecursionError."""
    depth = 0
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, (yaml.BlockMappingStartToken, yaml.BlockSequenceStartToken,
                                  yaml.FlowMappingStartToken, yaml.FlowSequenceStartToken)):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    line = token.start_mark.line + 1
                    raise ConfigError(f"{path}:{line}: nested more than {MAX_YAML_DEPTH} levels deep; a config has "
                                      "no use for that many")
            elif isinstance(token, (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)):
                depth -= 1
    except yaml.YAMLError:
        return  # invalid YAML: the parser says where, below


MAX_YAML_VALUES = 100_000  # values in a file once its aliases are expanded (a config has a few hundred)


def _check_expanded_size(data: Any, path: Path) -> None:
    """A few aliases can still nest into billions of values (9 levels of 9: 72 aliases), which
    anything that walks or prints the data would expand; count them, with a budget."""
    seen, stack = 0, [data]
    while stack:
        item = stack.pop()
        seen += 1
        if seen > MAX_YAML_VALUES:
            raise ConfigError(f"{path}: more than {MAX_YAML_VALUES} values once its YAML aliases are expanded; a "
                              "config has no use for that many")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


