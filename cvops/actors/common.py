"""Small helpers shared by the actor shells."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

import ray
from ray.exceptions import RayActorError, RayTaskError

from cvops.errors import CvopsError, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

NAMESPACE = "cvops"


def unwrap(exc: BaseException) -> BaseException:
    """Return the cvops error inside a Ray task error, else the error itself."""
    seen = 0
    while isinstance(exc, RayTaskError) and seen < 5:
        cause = exc.cause if exc.cause is not None else exc
        if cause is exc:
            break
        exc = cause
        seen += 1
    return exc


async def call(ref: Awaitable[T]) -> T:
    """Await a Ray call and re-raise a CvopsError raised inside the actor as itself."""
    try:
        return await ref
    except RayTaskError as exc:
        inner = unwrap(exc)
        if isinstance(inner, CvopsError):
            raise inner from None
        raise
    except RayActorError as exc:
        raise Unavailable("a cvops actor is not available", {"reason": str(exc)[:300]}) from exc


def call_sync(ref: Any) -> Any:
    """Block on a Ray call (from a worker thread, never an event loop) like :func:`call` awaits it."""
    try:
        return ray.get(ref)
    except RayTaskError as exc:
        inner = unwrap(exc)
        if isinstance(inner, CvopsError):
            raise inner from None
        raise
    except RayActorError as exc:
        raise Unavailable("a cvops actor is not available", {"reason": str(exc)[:300]}) from exc


def worker_priority() -> None:
    """Ray starts workers at nice 15; job and inference workers run at the normal priority."""
    try:
        current = os.nice(0)
        if current > 0:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
    except (PermissionError, OSError) as exc:
        log.debug("could not change worker priority: %s", exc)


def get_actor(name: str) -> Any:
    return ray.get_actor(name, namespace=NAMESPACE)
