"""What the client CLI keeps on this machine: the cached login (server and bearer token), the server
URL and token it resolves, the password it reads (never from argv), and its exit statuses."""

from __future__ import annotations

import getpass
import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

DEFAULT_URL = "http://127.0.0.1:8080"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3


class Credentials(msgspec.Struct, frozen=True):
    """What ``cvops login`` caches: the server and a bearer token (never the password)."""

    url: str
    token: str
    username: str = ""
    role: str = ""


class NotLoggedIn(Exception):
    """No token: neither CVOPS_TOKEN nor a cached login."""


class UsageError(Exception):
    """A bad argument found after parsing (exit 2)."""


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """``CVOPS_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/cvops``, else ``~/.config/cvops``."""
    env = os.environ if env is None else env
    if env.get("CVOPS_CONFIG_DIR"):
        return Path(env["CVOPS_CONFIG_DIR"])
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "cvops"


def credentials_path(env: Mapping[str, str] | None = None) -> Path:
    return config_dir(env) / "credentials.json"


def load_credentials(env: Mapping[str, str] | None = None) -> Credentials | None:
    path = credentials_path(env)
    try:
        return msgspec.json.decode(path.read_bytes(), type=Credentials)
    except FileNotFoundError:
        return None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def save_credentials(creds: Credentials, env: Mapping[str, str] | None = None) -> Path:
    """Write the credentials file with mode 0600 (its folder 0700), atomically."""
    path = credentials_path(env)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, msgspec.json.encode(creds) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def resolve_url(flag: str | None = None, env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    creds = load_credentials(env)
    return (flag or env.get("CVOPS_URL") or (creds.url if creds else "") or DEFAULT_URL).rstrip("/")


def resolve_token(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    if env.get("CVOPS_TOKEN"):
        return env["CVOPS_TOKEN"]
    creds = load_credentials(env)
    if creds is None or not creds.token:
        raise NotLoggedIn("not logged in: run `cvops login --url URL --username NAME`")
    return creds.token


def read_password(password_file: str | None, env: Mapping[str, str] | None = None) -> str:
    """The password, never from argv: the first line of ``password_file``, else ``CVOPS_PASSWORD``,
    else a getpass prompt."""
    env = os.environ if env is None else env
    if password_file:
        try:
            text = Path(password_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read the password file {password_file}: {exc}") from exc
        password = text.split("\n", 1)[0].rstrip("\r")
        if not password:
            raise UsageError(f"the password file {password_file} is empty")
        return password
    if env.get("CVOPS_PASSWORD"):
        return env["CVOPS_PASSWORD"]
    try:
        return getpass.getpass("Password: ")
    except EOFError as exc:
        raise UsageError(
            "no password: give --password-file FILE or CVOPS_PASSWORD, or run in a terminal"
        ) from exc
