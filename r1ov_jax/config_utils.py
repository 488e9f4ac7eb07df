"""ml_collections configs from Python files (``get_config()``) with ``--config.a.b=value`` overrides."""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections

from r1ov_jax.errors import UserError


class ConfigError(UserError, ValueError):
    """A config file or override is wrong."""


# Nodes whose fields are architecture overrides of the model preset (any field of its text / vision config,
# e.g. --config.model.text.num_hidden_layers=4); builders.model_config checks the names.
OPEN_NODES = ("model.text", "model.vision")


def load_config(path: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """Loads ``path`` (a .py file defining ``get_config()``) and applies ``a.b=value`` overrides."""
    if not os.path.exists(path):
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"_r1ov_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        raise ConfigError(f"{path}: failed to execute: {type(e).__name__}: {e}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: defines no get_config()")
    try:
        cfg = module.get_config()
    except Exception as e:  # the user's file: its failure is a config error, named
        raise ConfigError(f"{path}: get_config() raised {type(e).__name__}: {e}") from None
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(
            f"{path}: get_config() returned {type(cfg).__name__}, expected an ml_collections.ConfigDict"
        )
    for item in overrides:
        apply_override(cfg, item)
    return cfg


def parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare strings need no quotes: --config.model.attn_impl=xla


def apply_override(cfg: ml_collections.ConfigDict, item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like a.b=value")
    key, text = item.split("=", 1)
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        if p not in node:
            raise ConfigError(f"unknown config field {key!r} (no {p!r}; known: {sorted(node.keys())})")
        node = node[p]
    leaf = parts[-1]
    if leaf not in node and ".".join(parts[:-1]) not in OPEN_NODES:
        raise ConfigError(f"unknown config field {key!r} (known at that level: {sorted(node.keys())})")
    value = parse_value(text)
    old = node.get(leaf)
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(old, tuple) and isinstance(value, list):
        value = tuple(value)
    if isinstance(old, tuple) and isinstance(value, str):
        value = tuple(v for v in value.split(",") if v)
    try:
        node[leaf] = value
    except TypeError as e:
        raise ConfigError(f"--config.{key}={text}: {e}") from None
