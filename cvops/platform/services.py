"""What the gateway talks to: the event store and the actor facades, filled in as boot proceeds.

:class:`Services` lives under the app's ``SERVICES`` key (:mod:`cvops.platform.keys`); each service has
its own typed accessor, which answers 503 "cvops is starting; try again shortly" until boot is done.
:class:`BootedStore` is the store as the gateway's own projections see it: made with the app, it
reaches the real store once boot has put it there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from cvops.errors import Unavailable
from cvops.events.schema import Envelope, Event
from cvops.events.store import Store

if TYPE_CHECKING:
    from cvops.actors.inference import InferencePool
    from cvops.actors.registry import Registry
    from cvops.actors.scheduler import Scheduler
    from cvops.platform.auth import Authenticator

T = TypeVar("T")

STARTING = "cvops is starting; try again shortly"


def _started(value: T | None, ready: bool, component: str) -> T:
    if value is None or not ready:
        raise Unavailable(STARTING, {"component": component})
    return value


@dataclass
class Services:
    store: Store | None = None
    auth: Authenticator | None = None
    registry: Registry | None = None
    scheduler: Scheduler | None = None
    pool: InferencePool | None = None
    ready: bool = False
    boot_error: str | None = None
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)  # at shutdown, in order

    def need_store(self) -> Store:
        return _started(self.store, self.ready, "store")

    def need_registry(self) -> Registry:
        return _started(self.registry, self.ready, "registry")

    def need_scheduler(self) -> Scheduler:
        return _started(self.scheduler, self.ready, "scheduler")

    def need_pool(self) -> InferencePool:
        return _started(self.pool, self.ready, "pool")

    def need_auth(self) -> Authenticator:
        """The authenticator is up before the actors (logins work while they start)."""
        return _started(self.auth, True, "auth")


class BootedStore:
    """A :class:`~cvops.events.store.Store` over ``services.store``: 503 until boot is done."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def append(
        self,
        stream: str,
        events: Sequence[Event],
        expected_version: int | None = None,
        *,
        user: str = "",
        correlation_id: str = "",
        causation_id: str = "",
    ) -> list[Envelope]:
        return await self.services.need_store().append(
            stream,
            events,
            expected_version,
            user=user,
            correlation_id=correlation_id,
            causation_id=causation_id,
        )

    async def read(
        self,
        after: int = 0,
        limit: int = 1000,
        stream: str | None = None,
        prefix: str | None = None,
        types: Sequence[str] | None = None,
        until_seq: int | None = None,
    ) -> list[Envelope]:
        return await self.services.need_store().read(after, limit, stream, prefix, types, until_seq)

    async def stream_version(self, stream: str) -> int:
        return await self.services.need_store().stream_version(stream)

    async def wait_for(self, after: int, timeout: float) -> int:
        return await self.services.need_store().wait_for(after, timeout)
