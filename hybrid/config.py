"""The TOML config contract, loaded into typed dataclasses.

A bad config fails at start with one line naming the key and the problem, e.g.
``hybrid.toml: backends[1].kind: must be one of llamacpp, openai, vllm (got 'ollama')``.
With no file, :func:`default_config` gives the embedded default: one local tier served in-process by
llama.cpp on the bundled Gemma 3 270M model.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKEND_KINDS = ("llamacpp", "openai", "vllm")
BUNDLED_MODEL = "gemma-3-270m"


class ConfigError(Exception):
    """A config problem, with the key path in the message."""


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: list[str] = field(default_factory=list)
    max_body_bytes: int = 10 * 1024 * 1024
    log_level: str = "info"


@dataclass
class BackendConfig:
    name: str = ""
    kind: str = ""
    tier: str = "local"
    # llamacpp / vllm: one model; openai: the ids it serves
    model: str = ""
    models: list[str] = field(default_factory=list)
    context: int = 0  # 0: ask the backend (GGUF metadata, vLLM /v1/models)
    # llamacpp
    threads: int = 0  # 0: physical cores
    pool_size: int = 1  # independent contexts; each holds its own KV cache
    chat_format: str = ""  # "" : from the model (bundled Gemma -> "gemma")
    batch_size: int = 512
    # openai / vllm attached
    base_url: str = ""
    api_key_env: str = ""
    connect_timeout_s: float = 5.0
    first_byte_timeout_s: float = 60.0
    total_timeout_s: float = 600.0
    max_concurrency: int = 0  # 0: no limit
    price_input_per_mtok: float = 0.0
    price_output_per_mtok: float = 0.0


@dataclass
class RoutingConfig:
    default: str = "auto"
    fallbacks: list[str] = field(default_factory=lambda: ["local", "cloud"])
    overflow_wait_s: float = 2.0


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    backends: list[BackendConfig] = field(default_factory=list)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    source: str = "<embedded default>"

    def backend(self, name: str) -> BackendConfig:
        for b in self.backends:
            if b.name == name:
                return b
        raise KeyError(name)

    @property
    def tiers(self) -> list[str]:
        seen: list[str] = []
        for b in self.backends:
            if b.tier not in seen:
                seen.append(b.tier)
        return seen


def default_config() -> Config:
    """The embedded default: the bundled model on the CPU, no auth, loopback."""
    return Config(backends=[BackendConfig(name="cpu", kind="llamacpp", tier="local", model=BUNDLED_MODEL)])


def load_config(path: str | Path | None) -> Config:
    """Load and validate a config file; ``None`` gives the embedded default."""
    if path is None:
        return default_config()
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    try:
        cfg = parse_config(raw)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    cfg.source = str(p)
    return cfg


def parse_config(raw: dict[str, Any]) -> Config:
    known = {"server", "backends", "routing"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown section (known: {', '.join(sorted(known))})")
    server = _build(ServerConfig, raw.get("server", {}), "server")
    server.api_keys = [_resolve_key(v, f"server.api_keys[{i}]") for i, v in enumerate(server.api_keys)]
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"server.port: must be between 0 and 65535 (got {server.port})")
    if server.max_body_bytes <= 0:
        raise ConfigError("server.max_body_bytes: must be positive")

    raw_backends = raw.get("backends", [])
    if not isinstance(raw_backends, list):
        raise ConfigError("backends: must be an array of tables ([[backends]])")
    backends = [_build(BackendConfig, b, f"backends[{i}]") for i, b in enumerate(raw_backends)]
    if not backends:
        raise ConfigError("backends: at least one [[backends]] entry is required")
    names: set[str] = set()
    for i, b in enumerate(backends):
        _check_backend(b, f"backends[{i}]")
        if b.name in names:
            raise ConfigError(f"backends[{i}].name: duplicate backend name {b.name!r}")
        names.add(b.name)

    routing = _build(RoutingConfig, raw.get("routing", {}), "routing")
    if routing.overflow_wait_s < 0:
        raise ConfigError("routing.overflow_wait_s: must be >= 0")
    return Config(server=server, backends=backends, routing=routing)


def _check_backend(b: BackendConfig, path: str) -> None:
    if not b.name:
        raise ConfigError(f"{path}.name: required")
    if b.kind not in BACKEND_KINDS:
        raise ConfigError(f"{path}.kind: must be one of {', '.join(BACKEND_KINDS)} (got {b.kind!r})")
    if not b.tier:
        raise ConfigError(f"{path}.tier: must not be empty")
    if b.tier in ("auto",):
        raise ConfigError(f"{path}.tier: 'auto' is reserved for routing")
    if b.kind == "llamacpp":
        if not b.model:
            raise ConfigError(f"{path}.model: required for kind 'llamacpp' (a catalog id or a .gguf path)")
        if b.pool_size < 1:
            raise ConfigError(f"{path}.pool_size: must be >= 1")
        if b.threads < 0:
            raise ConfigError(f"{path}.threads: must be >= 0")
    if b.kind == "openai":
        if not b.base_url:
            raise ConfigError(f"{path}.base_url: required for kind 'openai'")
        if not b.models and b.model:
            b.models = [b.model]
        if not b.models:
            raise ConfigError(f"{path}.models: list the model ids this backend serves")
    if b.kind == "vllm" and not b.model:
        raise ConfigError(f"{path}.model: required for kind 'vllm'")
    if b.base_url and not b.base_url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}.base_url: must start with http:// or https:// (got {b.base_url!r})")
    if b.context < 0:
        raise ConfigError(f"{path}.context: must be >= 0")
    for name in ("connect_timeout_s", "first_byte_timeout_s", "total_timeout_s"):
        if getattr(b, name) <= 0:
            raise ConfigError(f"{path}.{name}: must be > 0")


def _resolve_key(value: str, path: str) -> str:
    if value.startswith("env:"):
        name = value[4:]
        resolved = os.environ.get(name)
        if not resolved:
            raise ConfigError(f"{path}: environment variable {name} is not set")
        return resolved
    if not value:
        raise ConfigError(f"{path}: empty key")
    return value


def _build(cls: type, table: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, checking keys and types."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in fields:
            raise ConfigError(f"{path}.{key}: unknown key")
        kwargs[key] = _check_type(value, hints[key], f"{path}.{key}")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _check_type(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            try:
                return _check_type(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: wrong type {type(value).__name__}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: must be {_type_name(tp)}")
        (item,) = typing.get_args(tp)
        return [_check_type(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: must be a number (got {value!r})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: must be an integer (got {value!r})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: must be true or false (got {value!r})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: must be a string (got {value!r})")
        return value
    raise ConfigError(f"{path}: unsupported type")
