"""The client CLI's local parts: where the token is cached, argv routing, media types, usage errors."""

from __future__ import annotations

import asyncio
import io
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cvops import cli
from cvops.cli_client import PACKAGE_BUILD, route_argv
from cvops.cli_commands import media_type, prediction_rows
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
from cvops.cli_tables import Column, emit, fields, listing


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


# ---------------------------------------------------------------------------------------- output helpers


def _render(table: Any) -> str:
    console = Console(width=200, file=io.StringIO())
    console.print(table)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def test_listing_takes_every_column_form() -> None:
    records = [{"id": "a", "source_format": "onnx", "tags": ["x", "y"]}, {"id": "b"}]
    columns: list[Column] = [
        "id",
        ("source", "source_format"),
        ("tags", lambda r: ",".join(r.get("tags") or [])),
    ]
    table = listing("models", columns, records)
    assert table.title == "models"
    assert [c.header for c in table.columns] == ["id", "source", "tags"]
    assert [list(c.cells) for c in table.columns] == [["a", "b"], ["onnx", ""], ["x,y", ""]]


def test_fields_keeps_the_order_skips_empties_and_json_encodes() -> None:
    rec = {"id": "m1", "labels": ["a"], "onnx": {"opset": 17}, "error": "", "arch": None, "size": 0}
    table = fields("model m1", rec, ("arch", "size", "onnx", "id", "labels", "error", "missing"))
    assert [list(c.cells) for c in table.columns] == [
        ["size", "onnx", "id", "labels"],
        ["0", '{"opset": 17}', "m1", '["a"]'],
    ]


def test_emit_prints_json_or_the_tables(capsys: pytest.CaptureFixture[str]) -> None:
    data = [{"id": "a", "n": 1}]
    assert emit(True, data, "never shown") == 0
    out = capsys.readouterr().out
    assert json.loads(out) == data and "never shown" not in out
    assert emit(False, data, listing(None, ["id", "n"], data), "a line") == 0
    out = capsys.readouterr().out
    assert "a line" in out and "id" in out and "┃" in out and "{" not in out


class _FakeApi:
    def __init__(self) -> None:
        self.specs: list[dict[str, Any]] = []

    async def datasets(self) -> list[dict[str, Any]]:
        return [{"id": "d1", "name": "ds", "classes": ["a", "b"], "bytes": 9}]

    async def dataset(self, dataset_id: str) -> dict[str, Any]:
        return {"id": dataset_id, "counts": {"train": {"a": 1}}, "sha256": ""}

    async def submit_job(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.specs.append(spec)
        return {"id": "j1", "status": "queued"}


def _run(argv: list[str], api: _FakeApi) -> int:
    args = cli.build_parser().parse_args(argv)
    return int(asyncio.run(args.client_handler(args, api)))


def test_list_and_show_commands(capsys: pytest.CaptureFixture[str]) -> None:
    api = _FakeApi()
    assert _run(["datasets", "ls"], api) == 0
    out = capsys.readouterr().out
    assert "d1" in out and "a,b" in out and "classes" in out
    assert _run(["datasets", "show", "d7", "--json"], api) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "d7"
    assert _run(["datasets", "show", "d7"], api) == 0
    out = capsys.readouterr().out
    assert "dataset d7" in out and '{"train": {"a": 1}}' in out and "sha256" not in out


def test_job_specs_from_flags(capsys: pytest.CaptureFixture[str]) -> None:
    api = _FakeApi()
    assert _run(["train", "m", "d", "--epochs", "3", "--hp", "warmup=2", "--hp", "note=x"], api) == 0
    assert _run(["benchmark", "m", "--max-p95-ms", "5", "--iterations", "7", "--engines", "a,b"], api) == 0
    assert capsys.readouterr().out == "j1\nj1\n"  # the id alone on stdout
    train, bench = api.specs
    assert train["hyperparameters"] == {"epochs": 3, "warmup": 2, "note": "x"}
    assert bench["constraints"] == {"max_p95_ms": 5.0}
    assert (bench["iterations"], bench["engines"], "warmup" in bench) == (7, ["a", "b"], False)
    with pytest.raises(UsageError):
        _run(["train", "m", "d", "--hp", "novalue"], api)


def test_prediction_rows_cover_classes_boxes_and_frames() -> None:
    answers = {
        "a.png": {"predictions": [{"label": "cat", "class_id": 1, "score": 0.912345}]},
        "b.jpg": {"detections": [{"label": "dog", "class_id": 2, "score": 0.5, "box": [1.4, 2, 3, 4.6]}]},
        "c.mp4": {"frames": [{"index": 3, "predictions": [{"label": "x", "class_id": 0, "score": 1.0}] * 3}]},
    }
    rows = prediction_rows(answers, top_k=2)
    assert rows[:2] == [("a.png", "cat", 1, "0.9123", ""), ("b.jpg", "dog", 2, "0.5", "1,2,3,5")]
    assert rows[2:] == [("c.mp4#3", "x", 0, "1", "")] * 2


class _TrainedApi(_FakeApi):
    """A train job that ended at registration, whose model is still converting."""

    def __init__(self) -> None:
        super().__init__()
        self.waited: list[str] = []

    async def job(self, job_id: str) -> dict[str, Any]:
        result = {"model_id": "m9", "model_status": "pending", "best_val_accuracy": 0.9}
        return {"id": job_id, "kind": "train", "status": "succeeded", "result": result}

    async def model(self, model_id: str) -> dict[str, Any]:
        return {"id": model_id, "status": "converting"}

    async def wait_model(self, model_id: str) -> dict[str, Any]:
        self.waited.append(model_id)
        return {"id": model_id, "status": "ready", "parity": {"passed": True}}


def test_watching_a_train_job_returns_once_its_model_is_ready(capsys: pytest.CaptureFixture[str]) -> None:
    api = _TrainedApi()
    assert _run(["jobs", "watch", "j1"], api) == 0
    assert api.waited == ["m9"]  # the job ended at registration; the command waits for the model
    assert "model m9: ready, parity passed" in capsys.readouterr().err
