"""The checkpoint keep policy, the blobs the log still names, and the shape of trained model ids."""

from __future__ import annotations

import re
import uuid

import pytest

from cvops.actors.trainer import trained_model_id
from cvops.config import load_settings
from cvops.errors import ValidationFailed
from cvops.events import schema as s
from cvops.events.scheduling import SchedulerState, apply_scheduler
from cvops.gc import KeepPolicy, KeptCheckpoint, checkpoints_to_discard, parse_keep, referenced_blobs
from tests.unit.test_projections import Log

ID = re.compile(r"^[0-9a-f]{16}$")


def _sha(n: int) -> str:
    return f"{n:064x}"


def _run(epochs: int, best: int) -> list[KeptCheckpoint]:
    return [KeptCheckpoint(epoch=e, sha256=_sha(e), best_epoch=min(e, best)) for e in range(1, epochs + 1)]


def test_parse_keep() -> None:
    assert parse_keep("last,best") == KeepPolicy(last=1, best=True)
    assert parse_keep(" best , last ") == KeepPolicy(last=1, best=True)
    assert parse_keep("last") == KeepPolicy(last=1, best=False)
    assert parse_keep("all") == KeepPolicy(last=None, best=True)
    assert parse_keep("3") == KeepPolicy(last=3, best=True)
    for bad in ("", "0", "-1", "best", "first", "last,worst"):
        with pytest.raises(ValidationFailed):
            parse_keep(bad)
    assert load_settings({}).keep_checkpoints == "last,best"
    with pytest.raises(ValidationFailed):
        load_settings({"CVOPS_KEEP_CHECKPOINTS": "sometimes"})


def test_last_and_best_are_kept() -> None:
    policy = parse_keep("last,best")
    # best at epoch 2 of 5: keep 2 and 5
    gone = checkpoints_to_discard(_run(5, best=2), policy)
    assert [c.epoch for c in gone] == [1, 3, 4]
    # the newest is the best: only it
    assert [c.epoch for c in checkpoints_to_discard(_run(3, best=3), policy)] == [1, 2]
    assert checkpoints_to_discard(_run(1, best=1), policy) == []
    assert [c.epoch for c in checkpoints_to_discard(_run(4, best=2), parse_keep("last"))] == [1, 2, 3]
    assert checkpoints_to_discard(_run(6, best=1), parse_keep("all")) == []
    assert [c.epoch for c in checkpoints_to_discard(_run(6, best=1), parse_keep("2"))] == [2, 3, 4]
    # a best epoch with no checkpoint of its own (checkpoints were spaced out): just the newest
    spaced = [KeptCheckpoint(epoch=e, sha256=_sha(e), best_epoch=3) for e in (2, 4, 6)]
    assert [c.epoch for c in checkpoints_to_discard(spaced, policy)] == [2, 4]
    # the same bytes saved twice (a resumed epoch) are never deleted while one copy is kept
    twice = [*_run(2, best=2), KeptCheckpoint(epoch=2, sha256=_sha(2), best_epoch=2)]
    assert [c.epoch for c in checkpoints_to_discard(twice, policy)] == [1]


def test_the_log_names_kept_checkpoints_not_discarded_ones() -> None:
    log = Log()
    log.add("job-j1", s.JobSubmitted(job_id="j1", kind="train", spec={}, submitted_by="admin"))
    for e in (1, 2, 3):
        log.add("job-j1", s.CheckpointSaved(job_id="j1", epoch=e, sha256=_sha(e), metrics={"best_epoch": 1}))
    log.add("job-j1", s.CheckpointsDiscarded(job_id="j1", sha256s=[_sha(2)], epochs=[2]))
    named = referenced_blobs(log.envs)
    assert _sha(1) in named and _sha(3) in named and _sha(2) not in named
    # the scheduler's record forgets it too; a resumed attempt still starts from the newest
    state = SchedulerState()
    for env in log.envs:
        state = apply_scheduler(state, env)
    rec = state.jobs["j1"]
    assert [c["epoch"] for c in rec.checkpoints] == [1, 3]
    assert rec.last_checkpoint is not None and rec.last_checkpoint["epoch"] == 3


def test_trained_model_ids_have_the_shape_of_every_other_id() -> None:
    job_id = uuid.uuid4().hex[:16]
    mid = trained_model_id(job_id)
    assert ID.match(mid) and ID.match(uuid.uuid4().hex[:16])
    assert trained_model_id(job_id) == mid  # a retried registration hits the same stream
    assert trained_model_id(uuid.uuid4().hex[:16]) != mid
    # ids of the old shape (<job id[:12]>t) stay in old logs and still fold into readable records
    from cvops.events import projections as proj

    log = Log()
    old = f"{job_id[:12]}t"
    log.add(
        f"model-{old}",
        s.ModelUploaded(
            model_id=old,
            name="m",
            task="classification",
            source_format="state_dict",
            source_sha256=_sha(9),
            source_bytes=1,
        ),
    )
    assert proj.rebuild(log.envs).models.models[old].id == old
    from cvops.platform.openapi import _ID

    pattern = str(_ID["pattern"])
    assert re.match(pattern, old) and re.match(pattern, mid)
