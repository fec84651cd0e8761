"""Pure folds: users, models, datasets, deployments, packages, the system rebuild and its hash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import msgspec

from cvops.events import projections as p
from cvops.events import schema as s

ROOT = Path(__file__).resolve().parents[2]


class Log:
    """Builds envelopes the way the EventLog would (global seq, per-stream versions)."""

    def __init__(self) -> None:
        self.envs: list[s.Envelope] = []
        self.versions: dict[str, int] = {}

    def add(self, stream: str, event: s.Event, user: str = "", ts: float | None = None) -> s.Envelope:
        v = self.versions.get(stream, 0) + 1
        self.versions[stream] = v
        seq = len(self.envs) + 1
        env = s.Envelope(
            seq=seq,
            stream=stream,
            version=v,
            type=s.type_of(event),
            ts=1000.0 + seq if ts is None else ts,
            data=s.encode_event(event),
            user=user,
        )
        self.envs.append(env)
        return env


def parity() -> s.Parity:
    return s.Parity(max_abs_diff=1e-5, top1_agreement=1.0, tolerance=1e-3, samples=8, passed=True)


def converted(model_id: str) -> s.ModelConverted:
    spec = s.TensorSpec(name="input", shape=["batch", 3, 224, 224], dtype="float32")
    return s.ModelConverted(
        model_id=model_id,
        onnx_sha256="f" * 64,
        onnx_bytes=1234,
        opset=17,
        inputs=[spec],
        outputs=[s.TensorSpec(name="logits", shape=["batch", 10], dtype="float32")],
        parameter_count=42,
        preprocessing=s.Preprocessing(),
        parity=parity(),
        labels=["a", "b"],
    )


def uploaded(model_id: str, name: str = "net") -> s.ModelUploaded:
    return s.ModelUploaded(
        model_id=model_id,
        name=name,
        task="classification",
        source_format="onnx",
        source_sha256="a" * 64,
        source_bytes=99,
        input_shape=[1, 3, 224, 224],
        hyperparameters={"lr": 0.1},
    )


def sample_log() -> Log:
    lg = Log()
    lg.add("user-admin", s.UserCreated(username="admin", role="admin", password_hash="h1"))
    lg.add("user-eve", s.UserCreated(username="eve", role="viewer", password_hash="h2"))
    lg.add("user-eve", s.RoleChanged(username="eve", role="engineer"))
    lg.add("user-eve", s.PasswordChanged(username="eve", password_hash="h3"))
    lg.add("user-eve", s.UserDisabled(username="eve"))
    lg.add("model-m1", uploaded("m1"))
    lg.add("model-m1", s.ModelConversionStarted(model_id="m1"))
    lg.add("model-m1", converted("m1"))
    lg.add("model-m2", uploaded("m2", "bad"))
    lg.add("model-m2", s.ModelConversionStarted(model_id="m2", attempt=2))
    lg.add("model-m2", s.ModelRejected(model_id="m2", reason="parity failed", details={"diff": 0.5}))
    lg.add(
        "dataset-d1",
        s.DatasetUploaded(
            dataset_id="d1",
            name="shapes",
            task="classification",
            format="imagefolder",
            sha256="b" * 64,
            bytes=10,
        ),
    )
    lg.add(
        "dataset-d1",
        s.DatasetValidated(
            dataset_id="d1", classes=["c", "s"], counts={"train": {"c": 3, "s": 4}}, path="datasets/d1"
        ),
    )
    lg.add(
        "dataset-d2",
        s.DatasetUploaded(
            dataset_id="d2", name="x", task="detection", format="yolo", sha256="c" * 64, bytes=5
        ),
    )
    lg.add("dataset-d2", s.DatasetRejected(dataset_id="d2", reason="zip bomb"))
    lg.add(
        "deployment-p1",
        s.DeploymentCreated(deployment_id="p1", model_id="m1", engine="onnxruntime-cpu", workers=2),
    )
    lg.add(
        "deployment-p1",
        s.InferenceStats(deployment_id="p1", window_start=1.0, window_end=2.0, requests=10, p95_ms=3.0),
    )
    lg.add(
        "deployment-p2", s.DeploymentCreated(deployment_id="p2", model_id="m1", engine="torch-cpu", workers=1)
    )
    lg.add("deployment-p2", s.DeploymentDeleted(deployment_id="p2"))
    lg.add(
        "package-k1",
        s.PackageBuilt(
            package_id="k1",
            model_id="m1",
            engine="onnxruntime-cpu",
            sha256="d" * 64,
            bytes=77,
            manifest={"model.onnx": "e" * 64},
        ),
        user="admin",
    )
    lg.add("job-j1", s.JobSubmitted(job_id="j1", kind="train", spec={}))
    return lg


def test_users_fold() -> None:
    state = p.fold(p.apply_users, p.UsersState(), sample_log().envs)
    assert set(state.users) == {"admin", "eve"}
    eve = state.users["eve"]
    assert (eve.role, eve.password_hash, eve.disabled) == ("engineer", "h3", True)
    assert eve.token_version == 3  # role, password, disable
    assert eve.created_seq == 2
    assert state.users["admin"].token_version == 0


def test_user_enable_delete_and_recreate_bumps_token_version() -> None:
    lg = Log()
    lg.add("user-bob", s.UserCreated(username="bob", role="viewer", password_hash="h"))
    lg.add("user-bob", s.UserDisabled(username="bob"))
    lg.add("user-bob", s.UserEnabled(username="bob"))
    state = p.fold(p.apply_users, p.UsersState(), lg.envs)
    assert state.users["bob"].token_version == 2 and not state.users["bob"].disabled
    lg.add("user-bob", s.UserDeleted(username="bob"))
    state = p.fold(p.apply_users, p.UsersState(), lg.envs)
    assert "bob" not in state.users
    lg.add("user-bob", s.UserCreated(username="bob", role="admin", password_hash="h2"))
    state = p.fold(p.apply_users, p.UsersState(), lg.envs)
    # a namesake created after a delete must not accept the old user's tokens (version 2)
    assert state.users["bob"].token_version == 3
    # events for unknown users are ignored, not errors
    lg.add("user-ghost", s.RoleChanged(username="ghost", role="admin"))
    assert "ghost" not in p.fold(p.apply_users, p.UsersState(), lg.envs).users


def test_models_fold() -> None:
    state = p.fold(p.apply_models, p.ModelsState(), sample_log().envs)
    m1, m2 = state.models["m1"], state.models["m2"]
    assert m1.status == "ready" and m1.version == 3
    assert m1.onnx is not None and m1.onnx.opset == 17 and m1.onnx.sha256 == "f" * 64
    assert m1.onnx.inputs[0].shape == ["batch", 3, 224, 224]
    assert m1.onnx.preprocessing.layout == "NCHW"
    assert m1.parity is not None and m1.parity.passed is True
    # the record composes the event's own Structs rather than copies of their fields
    ev = converted("m1")
    assert (
        m1.parity == ev.parity and m1.onnx.preprocessing == ev.preprocessing and m1.onnx.inputs == ev.inputs
    )
    assert m1.labels == ["a", "b"] and m1.hyperparameters == {"lr": 0.1}
    assert m1.attempts == 1 and m1.error is None
    assert m1.created_ts == 1006.0 and m1.updated_ts == 1008.0
    assert m2.status == "failed" and m2.error == "parity failed" and m2.error_details == {"diff": 0.5}
    assert m2.attempts == 2
    lg = sample_log()
    lg.add("model-m1", s.ModelDeleted(model_id="m1"))
    lg.add("model-zz", s.ModelConverted(**{**msgspec.structs.asdict(converted("zz"))}))  # unknown model
    state = p.fold(p.apply_models, p.ModelsState(), lg.envs)
    assert state.models["m1"].status == "deleted" and "zz" not in state.models


def test_datasets_deployments_packages() -> None:
    envs = sample_log().envs
    ds = p.fold(p.apply_datasets, p.DatasetsState(), envs).datasets
    assert ds["d1"].status == "ready" and ds["d1"].classes == ["c", "s"] and ds["d1"].path == "datasets/d1"
    assert ds["d1"].counts == {"train": {"c": 3, "s": 4}}
    assert ds["d2"].status == "failed" and ds["d2"].error == "zip bomb"
    deps = p.fold(p.apply_deployments, p.DeploymentsState(), envs).deployments
    assert deps["p1"].status == "active" and deps["p1"].stats["requests"] == 10
    assert "type" not in deps["p1"].stats
    assert deps["p2"].status == "deleted"
    pk = p.fold(p.apply_packages, p.PackagesState(), envs).packages
    assert pk["k1"].sha256 == "d" * 64 and pk["k1"].created_by == "admin"
    assert pk["k1"].manifest == {"model.onnx": "e" * 64}


def test_rebuild_and_hash_are_deterministic() -> None:
    envs = sample_log().envs
    a, b = p.rebuild(envs), p.rebuild(list(envs))
    assert a.last_seq == len(envs) and a.events == len(envs)
    assert p.state_hash(a) == p.state_hash(b)
    assert len(p.state_hash(a)) == 64
    # a different history gives a different hash
    c = p.rebuild(envs[:-2])
    assert p.state_hash(c) != p.state_hash(a)
    # rebuilding a prefix equals folding the same prefix
    assert p.rebuild(envs[:5]).users == p.fold(p.apply_users, p.UsersState(), envs[:5])
    summary = p.summary(a)
    assert summary["users"] == 2 and summary["models"] == {"failed": 1, "ready": 1}
    assert summary["deployments_active"] == 1 and summary["packages"] == 1
    if a.jobs is not None:
        assert "j1" in a.jobs.jobs


def test_state_hash_stable_across_processes() -> None:
    obj = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}}
    here = p.state_hash(obj)
    code = "from cvops.events.projections import state_hash; print(state_hash({'a': {'y': True, 'z': None}, 'b': [1, 2.5, 'x']}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == here  # dict order does not matter, the process does not matter
    assert p.state_hash({"a": 1}) != p.state_hash({"a": 2})


def test_unknown_events_ignored_by_every_fold() -> None:
    lg = Log()
    lg.add("job-x", s.JobQueued(job_id="x"))
    env = lg.envs[0]
    assert p.apply_users(p.UsersState(), env) == p.UsersState()
    assert p.apply_models(p.ModelsState(), env) == p.ModelsState()
    assert p.apply_datasets(p.DatasetsState(), env) == p.DatasetsState()
    assert p.apply_deployments(p.DeploymentsState(), env) == p.DeploymentsState()
    assert p.apply_packages(p.PackagesState(), env) == p.PackagesState()
