"""One real `cvops serve` for the API e2e tests, with a token per role."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.server import Server, request


@dataclass
class Live:
    server: Server
    admin: str
    engineer: str
    viewer: str

    @property
    def url(self) -> str:
        return self.server.url

    def token_for(self, role: str) -> str:
        return {"admin": self.admin, "engineer": self.engineer, "viewer": self.viewer}[role]


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data: Path = tmp_path_factory.mktemp("e2e") / "data"
    server = Server(data).start()
    try:
        admin = server.token()
        for name, role in (("eve", "engineer"), ("vic", "viewer")):
            status, body = request(
                server.url,
                "POST",
                "/api/v1/users",
                {"username": name, "password": f"{name}-password", "role": role},
                admin,
            )
            assert status == 201, body
        yield Live(server, admin, server.token("eve", "eve-password"), server.token("vic", "vic-password"))
    finally:
        server.stop()
