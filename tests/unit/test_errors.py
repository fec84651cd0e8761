"""errors.class_for / from_dict / code_for_status: the one map between error codes and classes."""

from __future__ import annotations

import pickle

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cvops import errors as E
from cvops.client import AsyncClient
from cvops.platform.middleware import errors_middleware

ALL = [cls for cls in vars(E).values() if isinstance(cls, type) and issubclass(cls, E.CvopsError)]


def test_every_class_is_in_the_map_and_codes_are_unique() -> None:
    assert sorted(c.__name__ for c in E.BY_CODE.values()) == sorted(c.__name__ for c in ALL)
    assert len({c.code for c in ALL}) == len(ALL)


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.__name__)
def test_every_code_round_trips_to_its_class(cls: type[E.CvopsError]) -> None:
    assert E.class_for(cls.code) is cls
    assert E.class_for(cls.code, 418) is cls  # a known code wins over the status
    err = cls("boom", {"field": "x"})
    back = E.from_dict(err.to_dict())
    assert type(back) is cls
    assert (back.message, back.details, back.code, back.status) == (
        err.message,
        err.details,
        cls.code,
        cls.status,
    )
    assert type(E.from_dict(err.to_dict()["error"])) is cls  # the inner dict works too
    assert type(pickle.loads(pickle.dumps(back))) is cls


def test_status_picks_the_base_class() -> None:
    assert E.BY_STATUS[409] is E.Conflict  # not ConcurrencyError
    assert E.BY_STATUS[422] is E.ValidationFailed  # not EngineUnavailable
    assert E.BY_STATUS[500] is E.CvopsError  # not StartupFailed
    for status, cls in E.BY_STATUS.items():
        assert cls.status == status


def test_unknown_codes_fall_back_by_status_then_to_the_base() -> None:
    assert E.class_for("model_rejected", 422) is E.ValidationFailed
    assert E.class_for("teapot", 418) is E.CvopsError
    assert E.class_for("teapot") is E.CvopsError
    assert E.class_for(None, 404) is E.NotFound
    assert E.class_for("", None) is E.CvopsError
    err = E.from_dict({"code": "dataset_rejected", "message": "no images"}, status=422)
    assert type(err) is E.ValidationFailed and err.message == "no images" and err.details == {}
    # the worker's / inference's dicts carry their own status
    err = E.from_dict({"error": {"code": "busy", "message": "m", "status": 503, "details": {"q": 1}}})
    assert type(err) is E.Unavailable and err.details == {"q": 1}
    # garbage: never raises, always a CvopsError with some message
    err = E.from_dict({"error": "not a dict", "details": ["x"]})
    assert type(err) is E.CvopsError and err.message and err.details == {}


def test_too_many_requests_gets_retry_after_back() -> None:
    err = E.from_dict(E.TooManyRequests("slow down", retry_after=7.5).to_dict())
    assert isinstance(err, E.TooManyRequests) and err.retry_after == 7.5
    assert err.details == {"retry_after": 7.5}
    err = E.from_dict({"code": "too_many_requests", "details": {"retry_after": "soon"}})
    assert isinstance(err, E.TooManyRequests) and err.retry_after == 1.0


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "bad_request"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found"),
        (405, "method_not_allowed"),
        (409, "conflict"),
        (413, "payload_too_large"),
        (415, "unsupported_media_type"),
        (422, "validation_failed"),
        (429, "too_many_requests"),
        (418, "http_error"),
        (500, "http_error"),
        (503, "http_error"),
    ],
)
def test_code_for_status_of_aiohttp_answers(status: int, code: str) -> None:
    assert E.code_for_status(status) == code


async def test_middleware_and_client_agree_on_every_class() -> None:
    """Each class raised by a handler comes back to the client as the same class; aiohttp's own answers
    and an unhandled exception get the codes of the one map."""

    async def boom(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "crash":
            raise RuntimeError("secret stack")
        if name == "teapot":
            raise web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2)
        cls = next(c for c in ALL if c.__name__ == name)
        raise cls("nope", retry_after=3.0) if cls is E.TooManyRequests else cls("nope", {"k": 1})

    app = web.Application(middlewares=[errors_middleware()])
    app.router.add_get("/api/v1/boom/{name}", boom)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with AsyncClient(str(server.make_url("")).rstrip("/"), "t") as api:
            for cls in ALL:
                with pytest.raises(E.CvopsError) as info:
                    await api.request("GET", f"/boom/{cls.__name__}")
                assert type(info.value) is cls and info.value.message == "nope"
                assert "remote" not in info.value.details
                if cls is E.TooManyRequests:
                    assert info.value.retry_after == 3.0
            with pytest.raises(E.CvopsError) as info:
                await api.request("GET", "/boom/crash")
            assert type(info.value) is E.CvopsError and info.value.message == "internal error"
            with pytest.raises(E.PayloadTooLarge):
                await api.request("GET", "/boom/teapot")
            with pytest.raises(E.CvopsError) as info:
                await api.request("POST", "/boom/x")
            assert info.value.details["remote"] == {"code": "method_not_allowed", "status": 405}
    finally:
        await server.close()
