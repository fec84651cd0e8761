"""Commands: what a caller asks an actor to do, as typed Structs (msgpack between processes).  A command
is decided against the current state into events; it is never stored itself.

:class:`RegisterModel` is the one way a model comes into the registry, for all three sources: an upload,
a preset and a training result.  Its fields are :class:`~cvops.events.schema.ModelSource`'s (declared
once, shared with the ``ModelUploaded`` event it becomes)."""

from __future__ import annotations

import msgspec

from cvops.errors import ValidationFailed
from cvops.events.schema import DatasetSource, DatasetUploaded, ModelSource, ModelUploaded

TASKS = ("classification", "detection")
FORMATS = ("imagefolder", "yolo")


class RegisterModel(ModelSource, frozen=True, kw_only=True):
    """Register a model and convert it.  ``model_id`` empty: the registry draws a fresh one (uploads,
    presets); a training result names its own, derived from the job, so a retried registration hits the
    same stream."""

    model_id: str = ""
    source_sha256: str = ""  # "" for a preset: it is built, not uploaded
    source_bytes: int = 0

    def check(self) -> None:
        """What every source must satisfy (the routes check their own fields before)."""
        if self.task not in TASKS:
            raise ValidationFailed(f"task must be one of {', '.join(TASKS)}", {"field": "task"})

    def to_event(self, model_id: str) -> ModelUploaded:
        """The ``ModelUploaded`` event of this command, for the model ``model_id``."""
        fields = {f: getattr(self, f) for f in ModelSource.__struct_fields__}
        fields["model_id"] = model_id
        return ModelUploaded(**fields)


class RegisterDataset(DatasetSource, frozen=True, kw_only=True):
    """Register an uploaded dataset zip and validate it; the registry draws its id."""

    dataset_id: str = ""

    def check(self) -> None:
        if self.task not in TASKS:
            raise ValidationFailed(f"task must be one of {', '.join(TASKS)}", {"field": "task"})
        if self.format not in FORMATS:
            raise ValidationFailed("format must be imagefolder or yolo", {"field": "format"})

    def to_event(self, dataset_id: str) -> DatasetUploaded:
        fields = {f: getattr(self, f) for f in DatasetSource.__struct_fields__}
        fields["dataset_id"] = dataset_id
        return DatasetUploaded(**fields)


_DECODER = msgspec.msgpack.Decoder(RegisterModel)
_DATASET_DECODER = msgspec.msgpack.Decoder(RegisterDataset)


def encode_command(command: RegisterModel | RegisterDataset) -> bytes:
    return msgspec.msgpack.encode(command)


def decode_register_model(data: bytes) -> RegisterModel:
    return _DECODER.decode(data)


def decode_register_dataset(data: bytes) -> RegisterDataset:
    return _DATASET_DECODER.decode(data)
