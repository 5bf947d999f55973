"""The daemon's own settings: where to listen, what to watch, how to coalesce edits.

Settings come from defaults, then an optional TOML file (``--settings``), then command-line
flags, later ones winning. Unknown keys and wrong types in the file are errors naming the
file and the key, like config errors.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from xdsd.errors import ConfigError, Problem

#: The gRPC server implementations ``grpc_impl`` may name.
GRPC_IMPLS = ("grpclib", "grpcio")


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP listen address."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``HOST:PORT`` (``[::1]:PORT`` for IPv6); port 0 asks for a free port.
        Raises ValueError."""
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not host:
            raise ValueError(f"expected HOST:PORT (got {text!r})")
        number = int(port)
        if not 0 <= number <= 65535:
            raise ValueError(f"port out of range in {text!r}")
        return cls(host.strip("[]"), number)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``xdsd serve`` needs to know, with DESIGN.md's defaults.

    ``quiet_period`` is how long the watcher waits for a burst of file events to go quiet
    before rebuilding (seconds); ``max_delay`` caps that wait during a long burst.
    ``grpc_impl`` picks the gRPC server: ``grpclib`` (pure Python) or ``grpcio``.
    ``root_namespace`` is Istio's MeshConfig ``rootNamespace``: a Sidecar there without
    ``workloadSelector`` applies to every namespace that has none of its own.
    ``shutdown_grace`` is how long, after SIGTERM, open streams get to end with their
    UNAVAILABLE status before they are cut (seconds).
    """

    config_dir: str = "config"
    grpc: Address | None = field(default_factory=lambda: Address("127.0.0.1", 18000))
    rest: Address | None = field(default_factory=lambda: Address("127.0.0.1", 18001))
    admin: Address | None = field(default_factory=lambda: Address("127.0.0.1", 19001))
    quiet_period: float = 0.01
    max_delay: float = 0.5
    grpc_backlog: int = 4096
    grpc_impl: str = "grpclib"
    root_namespace: str = "istio-system"  # model.networking.ROOT_NAMESPACE
    shutdown_grace: float = 5.0

    @classmethod
    def from_file(cls, path: str) -> Settings:
        """Read a TOML settings file (top-level keys are the field names, addresses as
        ``"HOST:PORT"`` strings or ``""`` to disable). Raises ConfigError."""
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as e:
            raise ConfigError(
                [Problem(path, 0, "", f"cannot read settings: {e.strerror}")]
            ) from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError([Problem(path, 0, "", f"TOML syntax error: {e}")]) from None
        return cls().merged(data, source=path)

    def merged(self, data: dict[str, Any], *, source: str) -> Settings:
        """These settings with ``data`` applied; ``source`` names where data came from."""
        known = {f.name: f for f in fields(self)}
        problems: list[Problem] = []
        changes: dict[str, Any] = {}
        for key, value in data.items():
            key_name = key.replace("-", "_")
            if key_name not in known:
                problems.append(
                    Problem(source, 0, key, f"unknown setting; known: {', '.join(known)}")
                )
                continue
            current = getattr(self, key_name)
            try:
                changes[key_name] = _coerce(key_name, current, value)
            except ValueError as e:
                problems.append(Problem(source, 0, key, str(e)))
        if problems:
            raise ConfigError(problems)
        return replace(self, **changes)


def _coerce(name: str, current: Any, value: Any) -> Any:
    if name in ("grpc", "rest", "admin"):
        if value in ("", None, False):
            return None
        if not isinstance(value, str):
            raise ValueError('must be "HOST:PORT" or "" to disable')
        return Address.parse(value)
    if name == "grpc_impl":
        if value not in GRPC_IMPLS:
            raise ValueError(f"must be one of {', '.join(GRPC_IMPLS)}")
        return value
    if isinstance(current, bool) or isinstance(value, bool):
        raise ValueError("must not be a boolean")
    if isinstance(current, float):
        if not isinstance(value, int | float) or value < 0:
            raise ValueError("must be a non-negative number")
        return float(value)
    if isinstance(current, int):
        if not isinstance(value, int) or value < 1:
            raise ValueError("must be a positive integer")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value
