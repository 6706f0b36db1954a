"""Where the CLI finds its gateway address and token: flag, environment, config file."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from flowyard.cli import rpc
from flowyard.cli.config import CliConfig, ConfigError, config_path, load_config


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_default_file_is_under_the_xdg_config_home(tmp_path: Path) -> None:
    found, explicit = config_path({"XDG_CONFIG_HOME": str(tmp_path)})
    assert found == tmp_path / "flowyard" / "config.toml" and not explicit
    assert load_config({"XDG_CONFIG_HOME": str(tmp_path)}) == CliConfig()


def test_flowyard_config_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'token = "fyt_x"\nserver = "gw:1"\n')
    config = load_config({"FLOWYARD_CONFIG": str(path)})
    assert (config.token, config.server, config.warning) == ("fyt_x", "gw:1", "")


def test_a_token_file_others_may_read_is_warned_about(tmp_path: Path) -> None:
    path = write(tmp_path / "c.toml", 'token = "fyt_x"\n', mode=0o644)
    assert "chmod 600" in load_config({"FLOWYARD_CONFIG": str(path)}).warning
    path = write(tmp_path / "s.toml", 'server = "gw:1"\n', mode=0o644)
    assert load_config({"FLOWYARD_CONFIG": str(path)}).warning == ""


@pytest.mark.parametrize(
    ("text", "problem"),
    [("token = \n", "not valid TOML"), ("token = 5\n", "token must be a string")],
)
def test_a_broken_file_is_an_error_naming_it(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError, match=problem) as caught:
        load_config({"FLOWYARD_CONFIG": str(path)})
    assert str(path) in str(caught.value)


def test_a_missing_named_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config({"FLOWYARD_CONFIG": str(tmp_path / "nope.toml")})


def test_flags_and_environment_win_over_the_file() -> None:
    config = CliConfig(server="file:1", token="file-token")
    assert rpc.server_address("flag:1", {"FLOWYARD_GRPC_ADDR": "env:1"}, config) == "flag:1"
    assert rpc.server_address(None, {"FLOWYARD_GRPC_ADDR": "env:1"}, config) == "env:1"
    assert rpc.server_address(None, {}, config) == "file:1"
    assert rpc.server_address(None, {}, CliConfig()) == rpc.DEFAULT_ADDRESS
    env = {"FLOWYARD_TOKEN": "env-token"}
    assert rpc.call_metadata(env, config) == (("authorization", "Bearer env-token"),)
    assert rpc.call_metadata({}, config) == (("authorization", "Bearer file-token"),)
    assert rpc.call_metadata({}, CliConfig()) == ()


class Refusal(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[()]:
        return ()


def test_access_refusals_say_what_to_do() -> None:
    code, text = rpc.describe_rpc_error(
        Refusal(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"), "gw:1"
    )
    assert code == rpc.EXIT_ERROR
    assert text.startswith("error: UNAUTHENTICATED: missing bearer token\n  (set $FLOWYARD_TOKEN")
    details = "admin role required for /flowyard.v1.TokenService/ListTokens; you are viewer"
    code, text = rpc.describe_rpc_error(Refusal(grpc.StatusCode.PERMISSION_DENIED, details), "x")
    assert text.splitlines() == [
        f"error: PERMISSION_DENIED: {details}",
        "  (ask an admin for a token with that role: flowyard token issue NAME --role ROLE)",
    ]
