"""What the gateway talks to: the event store and the actor facades, filled in as boot proceeds.

:class:`Services` lives under the app's ``SERVICES`` key (:mod:`cvops.platform.keys`); each service has
its own typed accessor, which answers 503 "cvops is starting; try again shortly" until boot is done.
:class:`BootedStore` is the store as the gateway's own projections see it: made with the app, it
reaches the real store once boot has put it there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from cvops.errors import Unavailable
from cvops.events.store import ForwardingStore, Store

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


class BootedStore(ForwardingStore):
    """A :class:`~cvops.events.store.Store` over ``services.store``: 503 until boot is done."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def _writer(self) -> Store:
        return self.services.need_store()
