"""The client CLI's local parts: where the token is cached, argv routing, media types, usage errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from cvops import cli
from cvops.cli_client import PACKAGE_BUILD, route_argv
from cvops.cli_commands import media_type
from cvops.cli_config import (
    Credentials,
    NotLoggedIn,
    UsageError,
    config_dir,
    load_credentials,
    read_password,
    resolve_token,
    resolve_url,
    save_credentials,
)


def test_config_dir_precedence(tmp_path: Path) -> None:
    assert config_dir({"CVOPS_CONFIG_DIR": "/a", "XDG_CONFIG_HOME": "/b"}) == Path("/a")
    assert config_dir({"XDG_CONFIG_HOME": "/b"}) == Path("/b/cvops")
    assert config_dir({}) == Path.home() / ".config" / "cvops"


def test_credentials_cached_private(tmp_path: Path) -> None:
    env = {"CVOPS_CONFIG_DIR": str(tmp_path / "cfg")}
    with pytest.raises(NotLoggedIn):
        resolve_token(env)
    path = save_credentials(Credentials(url="http://h:1", token="t0k", username="u"), env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_credentials(env) == Credentials(url="http://h:1", token="t0k", username="u")
    assert resolve_token(env) == "t0k" and resolve_url(None, env) == "http://h:1"
    assert resolve_token({**env, "CVOPS_TOKEN": "other"}) == "other"
    assert resolve_url(None, {**env, "CVOPS_URL": "http://x:2/"}) == "http://x:2"
    assert resolve_url("http://flag:3", {**env, "CVOPS_URL": "http://x:2"}) == "http://flag:3"
    path.write_text("not json")
    assert load_credentials(env) is None


def test_password_sources(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\nignored\n")
    assert read_password(str(pw), {"CVOPS_PASSWORD": "env"}) == "from-file"
    assert read_password(None, {"CVOPS_PASSWORD": "env"}) == "env"
    pw.write_text("\n")
    with pytest.raises(UsageError):
        read_password(str(pw), {})
    with pytest.raises(UsageError):
        read_password(str(tmp_path / "missing"), {})


def test_package_routing() -> None:
    assert route_argv(["package", "m1", "-o", "x.tar.gz"]) == [PACKAGE_BUILD, "m1", "-o", "x.tar.gz"]
    assert route_argv(["package", "verify", "p.tar.gz"]) == ["package", "verify", "p.tar.gz"]
    assert route_argv(["package", "--help"]) == ["package", "--help"]
    parser = cli.build_parser()
    args = parser.parse_args(route_argv(["package", "m1", "--engine", "torch-cpu"]))
    assert args.model == "m1" and args.engine == "torch-cpu"
    args = parser.parse_args(route_argv(["package", "verify", "p.tar.gz"]))
    assert args.path == "p.tar.gz"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["benchmark", "m", "--batch-sizes", "1,x"], ["login", "--password", "pw"], ["jobs"]):
        with pytest.raises(SystemExit) as info:
            cli.main(argv)
        assert info.value.code == 2
    assert "pw" not in capsys.readouterr().out


def test_media_type() -> None:
    assert media_type(Path("a.bin"), b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert media_type(Path("a.jpg"), b"\x89PNG\r\n\x1a\n") == "image/png"
    assert media_type(Path("a"), b"\x00\x00\x00\x18ftypmp42") == "video/mp4"
    assert media_type(Path("a.PNG"), b"????") == "image/png"
