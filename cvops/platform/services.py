"""What the gateway talks to: the event store and the actor facades, filled in as boot proceeds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cvops.errors import Unavailable
from cvops.events.store import Store

if TYPE_CHECKING:
    from cvops.platform.auth import Authenticator


@dataclass
class Services:
    store: Store | None = None
    auth: Authenticator | None = None
    registry: Any = None
    scheduler: Any = None
    pool: Any = None
    datasets: Any = None
    packages: Any = None
    ready: bool = False
    boot_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def need(self, name: str) -> Any:
        value = getattr(self, name)
        if value is None or not self.ready:
            raise Unavailable("cvops is starting; try again shortly", {"component": name})
        return value

    def need_auth(self) -> Authenticator:
        if self.auth is None:
            raise Unavailable("cvops is starting; try again shortly", {"component": "auth"})
        return self.auth
