"""cvops.ml.training: hyperparameters, the classification loop (learning, cancel, resume, early stop)."""

from __future__ import annotations

import io
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from cvops.errors import ValidationFailed
from cvops.events.schema import Preprocessing
from cvops.ml import train_common
from cvops.ml import training as tr
from cvops.ml.datasets import DatasetInfo, validate_dataset
from cvops.ml.synthetic import digits_dataset, draw_shapes_dataset, yolo_shapes_dataset
from cvops.ml.training import (
    DEFAULTS,
    Hyperparameters,
    TrainingCancelled,
    is_default,
    load_checkpoint,
    load_state_dict_bytes,
    lr_factor,
    train_classifier,
    validate_hyperparameters,
)

PP32 = Preprocessing(image_size=[32, 32], mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 3, width: int = 16, dropout: float = 0.0) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.fc = nn.Linear(4 * w, num_classes)
        self.train_forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.train_forwards += 1
        return self.fc(self.features(x))  # type: ignore[no-any-return]


class ConstantModel(nn.Module):
    """Logits that ignore the image: validation accuracy can never improve."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1) + 0.0 * x.mean()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetInfo]:
    root = draw_shapes_dataset(tmp_path_factory.mktemp("shapes"), n_per_class=60, size=32, seed=0)
    return root, validate_dataset(root, "classification", "imagefolder")


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, DatasetInfo]:
    root = draw_shapes_dataset(tmp_path_factory.mktemp("small"), n_per_class=12, size=24, seed=1)
    return root, validate_dataset(root, "classification", "imagefolder")


# ------------------------------------------------------------------------------- hyperparameters

OUT_OF_BOUNDS = {
    "epochs": [0, 1001],
    "batch_size": [0, 1025],
    "optimizer": ["rmsprop"],
    "lr": [1e-7, 1.5],
    "momentum": [-0.1, 1.0],
    "weight_decay": [-1e-3, 0.2],
    "schedule": ["linear"],
    "warmup_epochs": [-1, 11],  # 11 > epochs (10)
    "label_smoothing": [-0.1, 0.6],
    "augment_flip": ["yes"],
    "augment_scale_crop": [1],
    "color_jitter": [0.51],
    "image_size": [15, 1025],
    "seed": [-1, 2**32],
    "patience": [-1],
    "num_workers": [-1, 65],
    "lrf": [0.0, 1.5],
    "box": [-1.0, 51.0],
    "cls": [-0.1, 11.0],
    "dfl": [-0.1, 21.0],
    "hsv_h": [-0.1, 1.1],
    "hsv_s": [1.1],
    "hsv_v": [1.1],
    "degrees": [-1.0, 181.0],
    "translate": [1.5],
    "scale": [-0.5],
    "fliplr": [1.01],
    "mosaic": [2.0],
    "mixup": [-0.01],
}


@pytest.mark.parametrize(("field", "value"), [(f, v) for f, values in OUT_OF_BOUNDS.items() for v in values])
def test_out_of_bounds_hyperparameter_is_named(field: str, value: object) -> None:
    with pytest.raises(ValidationFailed) as exc:
        validate_hyperparameters({field: value})
    assert exc.value.details["field"] == field
    assert field in exc.value.message
    assert not is_default({field: value})


def test_every_field_has_a_bounds_case() -> None:
    assert set(OUT_OF_BOUNDS) == set(Hyperparameters.__struct_fields__)


def test_hyperparameters_accept_bounds_and_reject_unknown() -> None:
    hp = validate_hyperparameters(
        {"epochs": 1000, "lr": 1, "momentum": 0.999, "image_size": 16, "optimizer": "sgd", "num_workers": 0}
    )
    assert hp.lr == 1.0 and hp.image_size == 16 and hp.optimizer == "sgd"
    with pytest.raises(ValidationFailed) as exc:
        validate_hyperparameters({"epochs": 3, "learning_rate": 0.1})
    assert exc.value.details["field"] == "learning_rate"
    with pytest.raises(ValidationFailed):
        validate_hyperparameters([1, 2])  # type: ignore[arg-type]
    assert validate_hyperparameters({"epochs": 5, "warmup_epochs": 5}).warmup_epochs == 5


def test_defaults_and_is_default() -> None:
    assert DEFAULTS == Hyperparameters() == validate_hyperparameters({}) == validate_hyperparameters(None)
    assert (DEFAULTS.epochs, DEFAULTS.batch_size, DEFAULTS.optimizer, DEFAULTS.lr) == (10, 32, "adamw", 1e-3)
    assert is_default({}) and is_default(None) and is_default({"epochs": 10, "optimizer": "adamw"})
    assert is_default(DEFAULTS)
    assert not is_default({"epochs": 11})
    assert not is_default({"lr": 0.01})
    assert not is_default({"bogus": 1})


def test_lr_schedule_shapes() -> None:
    hp = Hyperparameters(epochs=10, warmup_epochs=2)
    spe = 5
    assert lr_factor(0, spe, hp) == pytest.approx(1 / 10)
    assert lr_factor(9, spe, hp) == pytest.approx(1.0)
    assert lr_factor(10, spe, hp) == pytest.approx(1.0)
    assert lr_factor(30, spe, hp) == pytest.approx(0.5)  # half way through the cosine part
    assert lr_factor(49, spe, hp) < 0.01
    step = Hyperparameters(epochs=9, schedule="step")
    assert [lr_factor(e * spe, spe, step) for e in (0, 2, 3, 6)] == pytest.approx([1, 1, 0.1, 0.01])


# --------------------------------------------------------------------------------------- training


def test_small_cnn_learns_shapes_fast(shapes: tuple[Path, DatasetInfo]) -> None:
    root, info = shapes
    torch.manual_seed(0)
    model = SmallCNN()
    events: list[dict[str, Any]] = []
    ckpts: list[tuple[int, bytes, dict[str, float]]] = []
    hp = {"epochs": 10, "lr": 1e-2, "batch_size": 16, "num_workers": 0, "augment_scale_crop": False}
    t0 = time.perf_counter()
    result = train_classifier(
        model,
        root,
        info,
        hp,
        preprocessing=PP32,
        progress=events.append,
        checkpoint=lambda e, b, m: ckpts.append((e, b, m)),
        should_stop=lambda: False,
    )
    elapsed = time.perf_counter() - t0  # ~3 s on one idle core; no bound asserted on a shared machine
    assert result.best_val_accuracy is not None and result.best_val_accuracy > 0.8  # chance: 1/3
    assert result.epochs_done == 10 and len(result.history) == 10 and not result.stopped_early
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert 0 < result.first_step_s < elapsed and result.images_per_s > 0
    epoch_events = [e for e in events if e["phase"] == "epoch"]
    assert [e["epoch"] for e in epoch_events] == list(range(1, 11))
    assert set(epoch_events[0]) >= {"epoch", "epochs", "loss", "val_accuracy", "lr", "images_per_s", "phase"}
    assert [c[0] for c in ckpts] == list(range(1, 11))
    assert set(ckpts[-1][2]) >= {"loss", "val_accuracy", "lr", "images_per_s"}
    raw = torch.load(io.BytesIO(ckpts[-1][1]), weights_only=True)  # our checkpoints are weights-only safe
    assert raw["epoch"] == 10 and set(raw) >= {"model", "optimizer", "scheduler", "scaler", "rng"}
    # the returned weights are the best epoch's and reproduce its accuracy
    best = SmallCNN()
    best.load_state_dict(load_state_dict_bytes(result.state_dict))
    best_epoch = epoch_events[result.best_epoch - 1]
    assert best_epoch["val_accuracy"] == pytest.approx(result.best_val_accuracy, abs=1e-6)


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("sklearn") is None, reason="scikit-learn not installed"
)
def test_digits_well_above_chance(tmp_path: Path) -> None:
    root = digits_dataset(tmp_path / "digits", size=32, n_per_class=40)
    info = validate_dataset(root, "classification", "imagefolder")
    assert info.classes == [str(i) for i in range(10)]
    torch.manual_seed(0)
    hp = {"epochs": 6, "lr": 1e-2, "batch_size": 16, "num_workers": 0, "augment_flip": False}
    result = train_classifier(SmallCNN(num_classes=10), root, info, hp, preprocessing=PP32)
    assert result.best_val_accuracy is not None and result.best_val_accuracy > 0.4  # chance: 0.1


def test_cancel_within_one_batch(small_shapes: tuple[Path, DatasetInfo]) -> None:
    root, info = small_shapes
    model = SmallCNN(width=4)
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 3

    ckpts: list[int] = []
    with pytest.raises(TrainingCancelled) as exc:
        train_classifier(
            model,
            root,
            info,
            {"epochs": 3, "batch_size": 4, "num_workers": 0},
            preprocessing=PP32,
            should_stop=stop,
            checkpoint=lambda e, b, m: ckpts.append(e),
        )
    assert model.train_forwards == 3  # the 4th check stopped it before the 4th batch
    assert (exc.value.epoch, exc.value.batch) == (1, 4)
    assert ckpts == []


def test_resume_gives_identical_weights(small_shapes: tuple[Path, DatasetInfo]) -> None:
    """The strong guarantee: resuming from the epoch-k checkpoint ends bit-identical to a straight run."""
    root, info = small_shapes
    hp = {
        "epochs": 4,
        "batch_size": 8,
        "lr": 1e-2,
        "optimizer": "sgd",
        "warmup_epochs": 1,
        "color_jitter": 0.2,
        "label_smoothing": 0.1,
        "num_workers": 0,
        "seed": 5,
    }
    ckpts: dict[int, bytes] = {}
    torch.manual_seed(1)
    straight = SmallCNN(width=8, dropout=0.2)
    full = train_classifier(
        straight, root, info, hp, preprocessing=PP32, checkpoint=lambda e, b, m: ckpts.__setitem__(e, b)
    )
    torch.manual_seed(2)
    resumed = SmallCNN(width=8, dropout=0.2)  # different initial weights: all must come from the checkpoint
    seen: list[int] = []
    part = train_classifier(
        resumed,
        root,
        info,
        hp,
        preprocessing=PP32,
        resume_from=ckpts[2],
        start_epoch=2,
        progress=lambda p: seen.append(p["epoch"]) if p["phase"] == "epoch" else None,
    )
    assert seen == [3, 4] and part.epochs_done == full.epochs_done == 4 and part.resumed_from_epoch == 2
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    strip = [{k: v for k, v in h.items() if k != "images_per_s"} for h in full.history]
    assert [{k: v for k, v in h.items() if k != "images_per_s"} for h in part.history] == strip
    best_a, best_b = load_state_dict_bytes(full.state_dict), load_state_dict_bytes(part.state_dict)
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
    assert load_checkpoint(ckpts[4])["epoch"] == 4
    with pytest.raises(ValidationFailed, match="start_epoch"):
        train_classifier(resumed, root, info, hp, preprocessing=PP32, resume_from=ckpts[2], start_epoch=3)
    # a crash after the last checkpoint: resuming trains nothing and returns the finished result
    calls: list[int] = []
    again = train_classifier(
        SmallCNN(width=8, dropout=0.2),
        root,
        info,
        hp,
        preprocessing=PP32,
        resume_from=ckpts[4],
        checkpoint=lambda e, b, m: calls.append(e),
    )
    assert calls == [] and again.epochs_done == 4 and again.best_val_accuracy == full.best_val_accuracy
    assert again.state_dict == full.state_dict


def test_async_and_inline_checkpoints_match(small_shapes: tuple[Path, DatasetInfo]) -> None:
    import threading

    root, info = small_shapes
    hp = {"epochs": 2, "batch_size": 8, "num_workers": 0, "lr": 1e-2}
    runs: dict[bool, list[tuple[int, bytes, str]]] = {True: [], False: []}
    for mode in (True, False):
        got = runs[mode]
        torch.manual_seed(3)
        train_classifier(
            SmallCNN(width=4),
            root,
            info,
            hp,
            preprocessing=PP32,
            async_checkpoint=mode,
            checkpoint=lambda e, b, m, got=got: got.append((e, b, threading.current_thread().name)),  # type: ignore[misc]
        )
    assert [e for e, _, _ in runs[True]] == [e for e, _, _ in runs[False]] == [1, 2]
    assert all(n.startswith("cvops-ckpt") for _, _, n in runs[True])
    assert all(n == threading.current_thread().name for _, _, n in runs[False])
    for (_, a, _), (_, b, _) in zip(runs[True], runs[False], strict=True):
        ca, cb = load_checkpoint(a), load_checkpoint(b)
        assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
        assert ca["optimizer"]["state"].keys() == cb["optimizer"]["state"].keys()
        assert ca["scheduler"] == cb["scheduler"]
        assert [h["loss"] for h in ca["history"]] == [h["loss"] for h in cb["history"]]


def test_checkpoint_min_interval_keeps_the_last(small_shapes: tuple[Path, DatasetInfo]) -> None:
    root, info = small_shapes
    got: list[int] = []
    train_classifier(
        SmallCNN(width=4),
        root,
        info,
        {"epochs": 3, "batch_size": 16, "num_workers": 0},
        preprocessing=PP32,
        checkpoint=lambda e, b, m: got.append(e),
        checkpoint_min_interval_s=3600,
    )
    assert got == [1, 3]  # the first (nothing before it) and the last


def test_checkpoint_callback_errors_fail_the_run(small_shapes: tuple[Path, DatasetInfo]) -> None:
    root, info = small_shapes

    def broken(epoch: int, data: bytes, metrics: dict[str, float]) -> None:
        raise OSError("disk full")

    for mode in (True, False):
        with pytest.raises(OSError, match="disk full"):
            train_classifier(
                SmallCNN(width=4),
                root,
                info,
                {"epochs": 2, "batch_size": 16, "num_workers": 0},
                preprocessing=PP32,
                checkpoint=broken,
                async_checkpoint=mode,
            )


def test_early_stopping_with_patience(small_shapes: tuple[Path, DatasetInfo]) -> None:
    root, info = small_shapes
    hp = {"epochs": 20, "patience": 2, "batch_size": 16, "num_workers": 0}
    result = train_classifier(ConstantModel(), root, info, hp, preprocessing=PP32)
    assert result.stopped_early and result.epochs_done == 3 and result.best_epoch == 1


def test_batch_progress_and_output_checks(
    small_shapes: tuple[Path, DatasetInfo], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, info = small_shapes
    monkeypatch.setattr(train_common, "BATCH_PROGRESS_INTERVAL_S", 0.0)
    events: list[dict[str, Any]] = []
    hp = {"epochs": 1, "batch_size": 8, "num_workers": 0, "image_size": 16}
    train_classifier(SmallCNN(width=4), root, info, hp, preprocessing=PP32, progress=events.append)
    batches = [e for e in events if e["phase"] == "batch"]
    assert batches and set(batches[0]) == {"phase", "epoch", "batch", "batches", "loss", "images_per_s"}
    assert batches[-1]["batches"] == math.ceil(len(info.splits["train"]) / 8)
    assert math.isfinite(batches[0]["loss"])
    with pytest.raises(ValidationFailed, match="classes"):
        train_classifier(SmallCNN(num_classes=5, width=4), root, info, hp, preprocessing=PP32)
    with pytest.raises(ValidationFailed, match="resume_from"):
        train_classifier(SmallCNN(width=4), root, info, hp, preprocessing=PP32, start_epoch=1)


def test_checkpoints_refuse_pickled_objects() -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("echo pwned",))

    buf = io.BytesIO()
    torch.save({"format": tr.CHECKPOINT_FORMAT, "x": Evil()}, buf)
    with pytest.raises(ValidationFailed, match="checkpoint"):
        load_checkpoint(buf.getvalue())
    with pytest.raises(ValidationFailed):
        load_checkpoint(b"garbage")
    with pytest.raises(ValidationFailed):
        load_state_dict_bytes(tr.save_bytes({"a": 1}))


@pytest.mark.slow
def test_resnet18_learns_shapes(tmp_path: Path) -> None:
    import torchvision

    root = draw_shapes_dataset(tmp_path / "s", n_per_class=60, size=32)
    info = validate_dataset(root, "classification", "imagefolder")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    hp = {"epochs": 15, "batch_size": 16, "lr": 1e-3, "num_workers": 0}
    pp = Preprocessing(image_size=[32, 32])
    result = train_classifier(model, root, info, hp, preprocessing=pp)
    assert result.best_val_accuracy is not None and result.best_val_accuracy > 0.6


@pytest.mark.slow
def test_yolov8n_detector_one_epoch(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    root = yolo_shapes_dataset(tmp_path / "y", n=8, size=64)
    info = validate_dataset(root, "detection", "yolo")
    events: list[dict[str, Any]] = []
    ckpts: list[int] = []
    hp = {"epochs": 1, "batch_size": 4, "num_workers": 0, "image_size": 64}
    result = tr.train_detector(
        None,
        root,
        info,
        hp,
        progress=events.append,
        checkpoint=lambda e, b, m: ckpts.append(e),
        workdir=tmp_path / "work",
    )
    assert result.epochs_done == 1 and ckpts == [1]
    epoch_events = [e for e in events if e["phase"] == "epoch"]
    assert epoch_events and "map50" in epoch_events[-1] and math.isfinite(epoch_events[-1]["loss"])
    state = load_state_dict_bytes(result.state_dict)
    assert any(k.endswith("weight") for k in state)
    from PIL import Image

    # ultralytics' import-time monkey patches are undone (its Image.open tries to pip-install plugins)
    assert Image.open.__module__ == "PIL.Image" and torch.save.__module__ == "torch.serialization"


@pytest.mark.slow
def test_yolov8n_detector_cancel_and_resume(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    root = yolo_shapes_dataset(tmp_path / "y", n=8, size=64, seed=2)
    info = validate_dataset(root, "detection", "yolo")
    hp = {"epochs": 2, "batch_size": 4, "num_workers": 0, "image_size": 64}
    calls = 0

    def stop() -> bool:
        nonlocal calls
        calls += 1
        return calls > 1

    with pytest.raises(TrainingCancelled) as exc:
        tr.train_detector(None, root, info, hp, should_stop=stop)
    assert (exc.value.epoch, exc.value.batch) == (1, 2)
    ckpts: dict[int, bytes] = {}
    tr.train_detector(
        None, root, info, {**hp, "epochs": 1}, checkpoint=lambda e, b, m: ckpts.__setitem__(e, b)
    )
    seen: list[int] = []
    resumed = tr.train_detector(
        None,
        root,
        info,
        hp,
        resume_from=ckpts[1],
        progress=lambda p: seen.append(p["epoch"]) if p["phase"] == "epoch" else None,
    )
    assert seen == [2] and resumed.epochs_done == 2 and resumed.resumed_from_epoch == 1
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    with pytest.raises(ValidationFailed, match="detection"):
        tr.train_detector(
            None,
            root,
            validate_dataset(draw_shapes_dataset(tmp_path / "c", 2, 16), "classification", "imagefolder"),
            hp,
        )


@pytest.mark.gpu
def test_cuda_amp_training_and_cpu_loadable_checkpoints(shapes: tuple[Path, DatasetInfo]) -> None:
    root, info = shapes
    torch.manual_seed(0)
    ckpts: dict[int, bytes] = {}
    hp = {"epochs": 10, "lr": 1e-2, "batch_size": 16, "num_workers": 2, "augment_scale_crop": False}
    result = train_classifier(
        SmallCNN(),
        root,
        info,
        hp,
        device="cuda",
        preprocessing=PP32,
        checkpoint=lambda e, b, m: ckpts.__setitem__(e, b),
    )
    assert result.amp and result.device.startswith("cuda") and result.num_workers == 2
    assert result.best_val_accuracy is not None and result.best_val_accuracy > 0.6
    ckpt = load_checkpoint(ckpts[3])  # map_location=cpu: a cuda checkpoint loads anywhere
    assert ckpt["scaler"] and all(t.device.type == "cpu" for t in ckpt["model"].values())
    resumed = train_classifier(
        SmallCNN(), root, info, hp, device="cuda", preprocessing=PP32, resume_from=ckpts[3]
    )
    assert resumed.epochs_done == 10 and resumed.resumed_from_epoch == 3 and len(resumed.history) == 10


def test_resume_checkpoint_checks_start_epoch() -> None:
    """The one resume check both trainers use: the checkpoint and its epoch, or why not."""
    assert train_common.resume_checkpoint(None, 0) == (None, 0)
    with pytest.raises(ValidationFailed, match="start_epoch needs resume_from"):
        train_common.resume_checkpoint(None, 2)
    data = tr.save_bytes({"format": tr.CHECKPOINT_FORMAT, "epoch": 3})
    for start in (0, 3):
        ckpt, done = train_common.resume_checkpoint(data, start)
        assert done == 3 and ckpt is not None and ckpt["epoch"] == 3
    with pytest.raises(ValidationFailed, match="start_epoch=2 but the checkpoint is at epoch 3"):
        train_common.resume_checkpoint(data, 2)
    with pytest.raises(ValidationFailed, match="not a cvops training checkpoint"):
        train_common.resume_checkpoint(tr.save_bytes({"epoch": 3}), 0)
