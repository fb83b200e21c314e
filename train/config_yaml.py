"""Reading config YAML: a strict loader (duplicate keys refused, aliases bounded), ``include:`` resolution
with deep merging, and the parsing of dotted ``key=value`` overrides.

Used by :mod:`train.config`, which re-exports these names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .config_checks import QUOTE_LIMIT, show_value
from .errors import ConfigError, clip


# ------------------------------------------------------------------------------------------------
# YAML: duplicate keys refused, aliases bounded, includes

MAX_ALIASES = 100                  # YAML aliases (*name) per document: configs need none or a few
MAX_NODES = 100_000                # values in a config once aliases are expanded (an alias bomb has 10⁹)
MAX_INCLUDE_DEPTH = 16
# Files read through includes, in all, and the seconds they may take: includes that fan out (each file including
# the next several times) multiply — 4 per level over 16 levels is 4¹⁶ reads, hours; the configs need a handful.
MAX_INCLUDE_READS = 200
MAX_INCLUDE_SECONDS = 10.0


class _YAMLProblem(Exception):
    """A YAML document we refuse although it parses: duplicate keys, too many aliases."""

    def __init__(self, message: str, mark: Any = None) -> None:
        super().__init__(message)
        self.mark = mark


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate mapping keys (the last would silently replace a whole
    section) and more than ``MAX_ALIASES`` aliases (an alias bomb)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _YAMLProblem(f"more than {MAX_ALIASES} aliases", self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:           # an unhashable key: the base class reports it
                    continue
                if duplicate:
                    raise _YAMLProblem(f"duplicate key {show_value(key)}", key_node.start_mark)
        return super().construct_mapping(node, deep)


def count_nodes(data: Any, limit: int = MAX_NODES) -> int:
    """Values in ``data`` with aliases expanded, counting stops past ``limit`` (no exponential walk)."""
    count, stack = 0, [data]
    while stack:
        x = stack.pop()
        count += 1
        if count > limit:
            break
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
    return count


def _load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` (a config file or an override value) with the strict loader; :class:`ConfigError`
    naming ``source`` and the line for anything refused."""
    try:
        loader = _Loader(text)
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except _YAMLProblem as e:
        where = f" (line {e.mark.line + 1})" if e.mark is not None else ""
        raise ConfigError(f"{source}: {e}{where}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{source} is not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{source} is nested too deeply") from None
    if count_nodes(data) > MAX_NODES:
        raise ConfigError(f"{source} expands to more than {MAX_NODES} values (aliases): refused")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` → (["a","b","c"], YAML-parsed value)."""
    shown = clip(repr(text), QUOTE_LIMIT)
    if "=" not in text:
        raise ConfigError(f"bad override {shown}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not key.strip() or any(not p or not p.replace("_", "").isalnum() for p in parts):
        raise ConfigError(f"bad override {shown}: expected dotted.key=value")
    try:
        value = _load_yaml(raw, f"override {shown}") if raw.strip() else ""
    except ConfigError as e:
        if "is not valid YAML" in str(e):
            raise ConfigError(f"bad override {shown}: value is not valid YAML") from None
        raise
    return parts, value


def _read_one(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(clip(f"cannot read config file {path}: {e}")) from None
    data = _load_yaml(text, f"config file {path}")
    if data is None:
        raise ConfigError(f"config file {path} is empty")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``top``, recursively for mappings present in both (``top`` wins; lists and other
    values are replaced whole). Neither argument is modified."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


class _IncludeBudget:
    """What one config's include expansion may cost: :data:`MAX_INCLUDE_READS` files, :data:`MAX_INCLUDE_SECONDS`."""

    def __init__(self, root: Path) -> None:
        import time
        self.root, self.reads, self.deadline = root, 0, time.monotonic() + MAX_INCLUDE_SECONDS

    def charge(self) -> None:
        import time
        self.reads += 1
        if self.reads > MAX_INCLUDE_READS:
            raise ConfigError(f"config file {self.root}: its includes read more than {MAX_INCLUDE_READS} files "
                              f"(do they fan out, a file included many times over?): refused")
        if time.monotonic() > self.deadline:
            raise ConfigError(f"config file {self.root}: reading its includes took more than "
                              f"{MAX_INCLUDE_SECONDS:g} s: refused")


def _read_with_includes(path: Path, chain: tuple[Path, ...], budget: _IncludeBudget | None = None) -> dict[str, Any]:
    budget = budget or _IncludeBudget(path)
    budget.charge()
    data = _read_one(path)
    if "include" not in data:
        return data
    names = data.pop("include")
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ConfigError(f"config file {path}: 'include' must be a file name or a list of file names, "
                          f"got {show_value(names)}")
    if len(chain) > MAX_INCLUDE_DEPTH:
        raise ConfigError(f"config file {path}: includes nest deeper than {MAX_INCLUDE_DEPTH}")
    merged: dict[str, Any] = {}
    for name in names:
        target = Path(name).expanduser()
        target = target if target.is_absolute() else path.parent / target
        try:
            key = target.resolve()
        except (OSError, RuntimeError):
            key = target
        if key in chain:
            cycle = " -> ".join(str(p) for p in (*chain[chain.index(key):], key))
            raise ConfigError(clip(f"config include cycle: {cycle}", 1000))
        if not target.is_file():
            raise ConfigError(f"config file {path}: included file not found: {target}")
        merged = deep_merge(merged, _read_with_includes(target, (*chain, key), budget))
    merged = deep_merge(merged, data)
    if count_nodes(merged) > MAX_NODES:
        raise ConfigError(f"config file {path} expands to more than {MAX_NODES} values: refused")
    return merged


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping. A top-level ``include: FILE`` (or a list of files; paths relative to the
    including file) is read first and deep-merged under this file's keys, which win; includes may nest,
    a cycle is refused. Empty files, duplicate keys and alias bombs are refused (:class:`ConfigError`)."""
    path = Path(path)
    try:
        start = path.resolve()
    except (OSError, RuntimeError):
        start = path
    return _read_with_includes(path, (start,))

