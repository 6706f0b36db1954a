"""The CLI's config file: ``$FLOWYARD_CONFIG``, else ``~/.config/flowyard/config.toml``.

TOML with two optional keys::

    server = "gateway.example:50051"   # used when neither --server nor $FLOWYARD_GRPC_ADDR
    token = "fyt_..."                  # used when $FLOWYARD_TOKEN is not set

The file holds a secret: keep it readable by you alone (``chmod 600``); the CLI warns
when others may read it. A missing default file is fine; a missing ``$FLOWYARD_CONFIG``,
unreadable or invalid TOML, or keys that are not strings are errors.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

CONFIG_ENV = "FLOWYARD_CONFIG"
KEYS = ("server", "token")


class ConfigError(Exception):
    """The config file cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class CliConfig:
    server: str = ""
    token: str = ""
    path: Path | None = None
    warning: str = ""


def config_path(environ: Mapping[str, str] = os.environ) -> tuple[Path, bool]:
    """The config file and whether it was named explicitly ($FLOWYARD_CONFIG)."""
    named = environ.get(CONFIG_ENV, "").strip()
    if named:
        return Path(named).expanduser(), True
    base = environ.get("XDG_CONFIG_HOME", "").strip() or str(Path.home() / ".config")
    return Path(base) / "flowyard" / "config.toml", False


def load_config(environ: Mapping[str, str] = os.environ) -> CliConfig:
    path, explicit = config_path(environ)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{path} (${CONFIG_ENV}): no such file") from None
        return CliConfig()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    values: dict[str, str] = {}
    for key in KEYS:
        value = data.get(key, "")
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a string")
        values[key] = value.strip()
    warning = ""
    if values["token"]:
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warning = f"warning: {path} holds a token and others may read it; chmod 600 {path}"
    return CliConfig(server=values["server"], token=values["token"], path=path, warning=warning)
