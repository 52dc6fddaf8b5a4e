"""A config file on disk, before it is typed: read its YAML (one-line errors naming the file),
follow `base:` to the file it extends, apply `--set key=value` overrides. config.load builds
the typed Config from what this returns."""

from __future__ import annotations

from pathlib import Path

import yaml

from minitrain.core.config import ConfigError


def read(path: Path, depth: int = 0) -> dict:
    """A config file's mapping; `base: FILE` (relative to it) supplies every key it leaves out."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or depth > 4:
        raise ConfigError(f"{path}: base: expected one config file's path (at most 5 deep)")
    merged = read(path.parent / base, depth + 1)
    for key, value in raw.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged


def apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"{path}: override {item!r}: expected key=value")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{path}: override {key!r}: {part!r} is not a section")
    node[parts[-1]] = value
