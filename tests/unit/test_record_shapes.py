"""The typed records keep the shapes of the dicts they replaced, byte for byte.

The fixtures below were written by the version before the records were typed (``ModelUploaded`` and
``ModelConverted`` as msgpack in the log, and the model record's JSON as ``GET /models/{id}`` answered):
an old log still decodes, folds into the typed record, and that record encodes to the same JSON; the
events re-encode to the same bytes.  The list responses are their Structs, and each validates against the
schema OpenAPI declares for it.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import msgspec
import pytest

from cvops.actors.jobs import typed_job
from cvops.events import projections as proj
from cvops.events import schema as s
from cvops.events.commands import RegisterModel, decode_register_model, encode_command
from cvops.events.scheduling import JobRecord
from cvops.events.scheduling import job_view as old_job_view
from cvops.jobs_api import BenchmarkJob, TrainJob, job_spec
from cvops.platform.api_datasets import DatasetList
from cvops.platform.api_deployments import DeploymentList
from cvops.platform.api_jobs import JobList
from cvops.platform.api_models import ModelList
from cvops.platform.openapi import build_openapi
from cvops.platform.table import all_routes
from cvops.views import DeploymentView, JobView, job_view

OLD_UPLOADED = bytes.fromhex(
    "de0011a474797065ad4d6f64656c55706c6f61646564a86d6f64656c5f6964a26d31a46e616d65a474696e79a4746173"
    "6bae636c617373696669636174696f6ead736f757263655f666f726d6174a6707265736574ad736f757263655f736861"
    "323536a0ac736f757263655f627974657300ab696e7075745f7368617065c0a66c6162656c7392a3636174a3646f67a4"
    "61726368c0a6707265736574a874696e795f636e6eab6e756d5f636c617373657302aa696d6167655f73697a6520af70"
    "6172656e745f6d6f64656c5f6964c0aa646174617365745f6964c0af6879706572706172616d657465727380aa707265"
    "747261696e6564c2"
)
OLD_CONVERTED = bytes.fromhex(
    "de0010a474797065ae4d6f64656c436f6e766572746564a86d6f64656c5f6964a26d31ab6f6e6e785f736861323536d9"
    "406161616161616161616161616161616161616161616161616161616161616161616161616161616161616161616161"
    "6161616161616161616161616161616161aa6f6e6e785f6279746573cd04d2a56f7073657411a6696e707574739183a4"
    "6e616d65a5696e707574a5736861706594a56261746368032020a56474797065a7666c6f61743332a76f757470757473"
    "9183a46e616d65a66c6f67697473a5736861706592a5626174636802a56474797065a7666c6f61743332af706172616d"
    "657465725f636f756e7463ad70726570726f63657373696e6785aa696d6167655f73697a65922020a46d65616e93cb3f"
    "df0a3d70a3d70acb3fdd2f1a9fbe76c9cb3fd9fbe76c8b4396a373746493cb3fcd4fdf3b645a1dcb3fccac083126e979"
    "cb3fcccccccccccccda66c61796f7574a44e434857a6726573697a65a6726573697a65a670617269747985ac6d61785f"
    "6162735f64696666cb3eb0c6f7a0b5ed8dae746f70315f61677265656d656e74cb3ff0000000000000a9746f6c657261"
    "6e6365cb3f1a36e2eb1c432da773616d706c657304a6706173736564c3a66c6162656c7392a3636174a3646f67ac746f"
    "7263685f736861323536d940626262626262626262626262626262626262626262626262626262626262626262626262"
    "62626262626262626262626262626262626262626262626262626262ac746f7263685f666f726d6174aa73746174655f"
    "64696374a461726368a874696e795f636e6eaf707265747261696e65645f66696c65a5772e707468b170726574726169"
    "6e65645f736861323536d940636363636363636363636363636363636363636363636363636363636363636363636363"
    "63636363636363636363636363636363636363636363636363636363"
)
# fields added after these bytes were written: a model an evolution's trial trained (issue 13)
TRIAL_LINEAGE = ("evolution_job_id", "trial_job_id", "generation", "trial")
# GET /models/m1 of the log above, as the untyped record answered it
OLD_RECORD_JSON = (
    b'{"id":"m1","name":"tiny","task":"classification","status":"ready","source_format":"preset","sour'
    b'ce_sha256":"","source_bytes":0,"input_shape":null,"labels":["cat","dog"],"arch":null,"preset":"t'
    b'iny_cnn","num_classes":2,"image_size":32,"parent_model_id":null,"dataset_id":null,"hyperparamete'
    b'rs":{},"pretrained":false,"pretrained_weights":{"file":"w.pth","sha256":"ccccccccccccccccccccccc'
    b'ccccccccccccccccccccccccccccccccccccccccc"},"onnx":{"sha256":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'
    b'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","bytes":1234,"opset":17,"inputs":[{"name":"input","shape":["batc'
    b'h",3,32,32],"dtype":"float32"}],"outputs":[{"name":"logits","shape":["batch",2],"dtype":"float32'
    b'"}],"parameter_count":99,"preprocessing":{"image_size":[32,32],"mean":[0.485,0.456,0.406],"std":'
    b'[0.229,0.224,0.225],"layout":"NCHW","resize":"resize"},"torch_sha256":"bbbbbbbbbbbbbbbbbbbbbbbbb'
    b'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb","torch_format":"state_dict","torch_arch":"tiny_cnn"},"p'
    b'arity":{"max_abs_diff":1e-6,"top1_agreement":1.0,"tolerance":0.0001,"samples":4,"passed":true},"'
    b'error":null,"error_details":{},"attempts":1,"created_ts":1700000000.0,"updated_ts":1700000002.0,'
    b'"version":3}'
)


def _envelopes() -> list[s.Envelope]:
    started = s.encode_event(s.ModelConversionStarted(model_id="m1"))
    rows = [
        ("ModelUploaded", OLD_UPLOADED),
        ("ModelConversionStarted", started),
        ("ModelConverted", OLD_CONVERTED),
    ]
    return [
        s.Envelope(seq=i + 1, stream="model-m1", version=i + 1, type=t, ts=1700000000.0 + i, data=d)
        for i, (t, d) in enumerate(rows)
    ]


def _record() -> proj.ModelRecord:
    return proj.fold(proj.apply_models, proj.ModelsState(), _envelopes()).models["m1"]


def test_old_model_events_decode_and_reencode_to_the_same_bytes() -> None:
    up, conv = s.decode_event("ModelUploaded", OLD_UPLOADED), s.decode_event("ModelConverted", OLD_CONVERTED)
    assert isinstance(up, s.ModelUploaded) and isinstance(conv, s.ModelConverted)
    assert s.encode_event(conv) == OLD_CONVERTED
    # ModelUploaded has since gained the lineage of an evolution's trial (issue 13): an old event decodes
    # with those unset, and re-encodes to its old fields plus the four new ones, null
    new = msgspec.msgpack.decode(s.encode_event(up))
    assert new == {**msgspec.msgpack.decode(OLD_UPLOADED), **dict.fromkeys(TRIAL_LINEAGE)}
    # the shared field declarations are the events' own, in the same order
    assert s.ModelUploaded.__struct_fields__ == s.ModelSource.__struct_fields__
    assert s.ModelConverted.__struct_fields__ == s.ConvertedForm.__struct_fields__


def test_an_old_log_folds_into_a_typed_record_with_the_old_json() -> None:
    rec = _record()
    assert isinstance(rec.onnx, proj.OnnxInfo) and isinstance(rec.parity, s.Parity)
    assert isinstance(rec.onnx.preprocessing, s.Preprocessing) and isinstance(
        rec.onnx.inputs[0], s.TensorSpec
    )
    assert isinstance(rec.pretrained_weights, proj.PretrainedWeights)
    assert rec.onnx.preprocessing.image_size == [32, 32] and rec.onnx.torch_arch == "tiny_cnn"
    got = msgspec.json.decode(msgspec.json.encode(rec))
    assert got == {**msgspec.json.decode(OLD_RECORD_JSON), **dict.fromkeys(TRIAL_LINEAGE)}
    assert list(got) == [k for k in proj.ModelRecord.__struct_fields__]  # the record's own field order
    # and the JSON decodes back into the same typed record (msgpack between processes too)
    assert msgspec.json.decode(OLD_RECORD_JSON, type=proj.ModelRecord) == rec
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(rec), type=proj.ModelRecord) == rec


def test_a_record_shows_no_torchscript_torch_form() -> None:
    conv = s.decode_event("ModelConverted", OLD_CONVERTED)
    assert isinstance(conv, s.ModelConverted)
    old = msgspec.structs.replace(conv, torch_format="torchscript")
    info = proj.OnnxInfo.of(old)
    assert info.torch_sha256 == "" and info.torch_format == "" and info.sha256 == conv.onnx_sha256


def _old_fields_event(model_id: str, fields: dict[str, Any]) -> s.ModelUploaded:
    """How the registry built the event from a dict before the command existed."""
    return msgspec.convert({"model_id": model_id, **fields}, s.ModelUploaded)


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        (  # an upload
            RegisterModel(
                name="net", task="classification", source_format="onnx", source_sha256="a" * 64,
                source_bytes=99, input_shape=[1, 3, 224, 224], labels=["a", "b"], num_classes=2,
            ),
            {
                "name": "net", "task": "classification", "source_format": "onnx", "source_sha256": "a" * 64,
                "source_bytes": 99, "input_shape": [1, 3, 224, 224], "labels": ["a", "b"], "arch": None,
                "num_classes": 2,
            },
        ),
        (  # a preset
            RegisterModel(name="r", task="classification", source_format="preset", preset="resnet18", pretrained=True),
            {
                "name": "r", "task": "classification", "source_format": "preset", "source_sha256": "",
                "source_bytes": 0, "preset": "resnet18", "num_classes": None, "image_size": None, "labels": [],
                "pretrained": True,
            },
        ),
        (  # a training result
            RegisterModel(
                model_id="t1", name="r-ft", task="classification", source_format="state_dict",
                source_sha256="b" * 64, source_bytes=5, arch="resnet18", num_classes=2, image_size=64,
                labels=["a", "b"], parent_model_id="m1", dataset_id="d1", hyperparameters={"lr": 0.01},
            ),
            {
                "name": "r-ft", "task": "classification", "source_format": "state_dict", "source_sha256": "b" * 64,
                "source_bytes": 5, "arch": "resnet18", "num_classes": 2, "image_size": 64, "labels": ["a", "b"],
                "parent_model_id": "m1", "dataset_id": "d1", "hyperparameters": {"lr": 0.01},
            },
        ),
    ],
)  # fmt: skip
def test_register_model_is_the_event_the_three_old_paths_wrote(
    command: RegisterModel, fields: dict[str, Any]
) -> None:
    command.check()
    wire = decode_register_model(encode_command(command))
    assert wire == command
    model_id = command.model_id or "fresh"
    ev = wire.to_event(model_id)
    assert ev == _old_fields_event(model_id, fields)
    assert s.encode_event(ev) == s.encode_event(_old_fields_event(model_id, fields))


def test_register_model_refuses_an_unknown_task() -> None:
    from cvops.errors import ValidationFailed

    with pytest.raises(ValidationFailed):
        RegisterModel(name="x", task="segmentation", source_format="onnx").check()


def test_the_job_worker_turns_a_spec_back_into_its_typed_job() -> None:
    req = BenchmarkJob(model_id="m1", engines=["onnxruntime-cpu"], batch_sizes=[1, 4])
    job, register = typed_job(job_spec(req))
    assert job == req and register
    trial = {**job_spec(TrainJob(model_id="m1", dataset_id="d1")), "register": False}
    job, register = typed_job(trial)
    assert isinstance(job, TrainJob) and job.dataset_id == "d1" and not register


JOB = JobRecord(
    id="j1",
    kind="train",
    spec={"kind": "train", "model_id": "m1", "dataset_id": "d1", "hyperparameters": {}},
    submitted_by="ann",
    status="succeeded",
    token=0,
    device="cpu",
    attempt=1,
    progress={"phase": "epoch"},
    result={"model_id": "m2", "parity": msgspec.to_builtins(_record().parity)},
    queue_seq=4,
    checkpoints=[{"epoch": 1, "sha256": "d" * 64}],
    version=3,
)


def test_the_job_view_is_the_record_less_its_fifo_key_and_encodes_as_the_dict_did() -> None:
    view = job_view(JOB)
    assert isinstance(view, JobView)
    assert JobView.__struct_fields__ == tuple(f for f in JobRecord.__struct_fields__ if f != "queue_seq")
    assert msgspec.json.encode(view) == msgspec.json.encode(old_job_view(JOB))


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return build_openapi(all_routes())


def _validator(spec: dict[str, Any], path: str, method: str = "get", status: str = "200") -> Any:
    schema = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    return jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]})


def test_list_responses_are_their_structs_and_validate_against_openapi(spec: dict[str, Any]) -> None:
    model = _record()
    failed = msgspec.structs.replace(model, id="m2", status="failed", onnx=None, parity=None, error="bad")
    dataset = proj.DatasetRecord(
        id="d1", name="pets", task="classification", format="imagefolder", sha256="c" * 64, bytes=1,
        status="ready", classes=["a"], counts={"train": {"a": 2}}, image_stats={"mean_w": 3.0},
    )  # fmt: skip
    deployment = DeploymentView(
        id="p1", model_id="m1", engine="onnxruntime-cpu", workers=1, stats={"requests": 2}
    )
    cases = [
        ("/api/v1/models", ModelList(models=[model, failed]), {"models": [model, failed]}),
        ("/api/v1/datasets", DatasetList(datasets=[dataset]), {"datasets": [dataset]}),
        ("/api/v1/jobs", JobList(jobs=[job_view(JOB)]), {"jobs": [old_job_view(JOB)]}),
        ("/api/v1/deployments", DeploymentList(deployments=[deployment]), {"deployments": [deployment]}),
    ]
    for path, body, old in cases:
        raw = msgspec.json.encode(body)
        assert raw == msgspec.json.encode(old), path  # the dict literal the handler built before
        _validator(spec, path).validate(msgspec.json.decode(raw))
    one = msgspec.json.decode(msgspec.json.encode(model))
    _validator(spec, "/api/v1/models/{id}").validate(one)
    _validator(spec, "/api/v1/jobs/{id}").validate(msgspec.json.decode(msgspec.json.encode(job_view(JOB))))
    # a record that lost its typing would no longer match what the document declares
    broken = {**one, "onnx": {**one["onnx"], "preprocessing": "224x224"}}
    assert not _validator(spec, "/api/v1/models/{id}").is_valid(broken)


def test_the_document_declares_the_records_fields(spec: dict[str, Any]) -> None:
    comps = spec["components"]["schemas"]
    assert set(comps["ModelRecord"]["properties"]) == set(proj.ModelRecord.__struct_fields__)
    assert set(comps["JobView"]["properties"]) == set(JobView.__struct_fields__)
    assert set(comps["DeploymentView"]["properties"]) == set(DeploymentView.__struct_fields__)
    assert set(comps["DatasetRecord"]["properties"]) == set(proj.DatasetRecord.__struct_fields__)
    assert comps["ModelList"]["properties"]["models"]["items"] == {"$ref": "#/components/schemas/ModelRecord"}


def test_register_dataset_is_the_event_the_old_path_wrote() -> None:
    from cvops.errors import ValidationFailed
    from cvops.events.commands import RegisterDataset, decode_register_dataset

    fields = {"name": "pets", "task": "detection", "format": "yolo", "sha256": "c" * 64, "bytes": 10}
    command = RegisterDataset(**fields)
    command.check()
    assert decode_register_dataset(encode_command(command)) == command
    old = msgspec.convert({"dataset_id": "d1", **fields}, s.DatasetUploaded)
    assert s.encode_event(command.to_event("d1")) == s.encode_event(old)
    assert s.DatasetUploaded.__struct_fields__ == s.DatasetSource.__struct_fields__
    for bad in ({"task": "segmentation"}, {"format": "coco"}):
        with pytest.raises(ValidationFailed):
            msgspec.structs.replace(command, **bad).check()
