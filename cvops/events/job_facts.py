"""Pure folds over the facts jobs leave in the log, for the actors' small projections
(:class:`~cvops.events.projection.Projection` / ``SyncProjection``).  Each ``apply_*`` folds one envelope
into its state and returns it; each ``*_TYPES`` is the read filter that goes with it.

* :func:`apply_engine_selected`: the engine a benchmark last selected for each model (``engine: auto``);
* :func:`apply_trials`: an evolution's finished trials, by ``(generation, index)``;
* :func:`apply_ended`: the jobs that ended (succeeded, failed or cancelled), with that status.

Which checkpoints a run still keeps is :func:`cvops.gc.apply_kept`, beside its keep policy.
"""

from __future__ import annotations

from cvops.events.schema import EngineSelected, Envelope, TrialCompleted

ENGINE_TYPES = ("EngineSelected",)
TRIAL_TYPES = ("TrialCompleted",)
# terminal event type -> the job status it leaves (the scheduler writes them to its own stream)
ENDED: dict[str, str] = {"JobSucceeded": "succeeded", "JobFailed": "failed", "JobCancelled": "cancelled"}
ENDED_TYPES = tuple(sorted(ENDED))

EngineChoices = dict[str, EngineSelected]  # model id -> the selection that chose its engine
Trials = dict[tuple[int, int], TrialCompleted]  # (generation, index) -> the trial's record
EndedJobs = dict[str, str]  # job id -> terminal status


def apply_engine_selected(state: EngineChoices, env: Envelope) -> EngineChoices:
    """The latest selection per model wins; a benchmark that selected nothing leaves the earlier one."""
    if env.type in ENGINE_TYPES:
        ev = env.event()
        if isinstance(ev, EngineSelected) and ev.selected:
            state[ev.model_id] = ev
    return state


def apply_trials(state: Trials, env: Envelope) -> Trials:
    if env.type in TRIAL_TYPES:
        ev = env.event()
        if isinstance(ev, TrialCompleted):
            state[(ev.generation, ev.index)] = ev
    return state


def apply_ended(state: EndedJobs, env: Envelope) -> EndedJobs:
    status = ENDED.get(env.type)
    if status is not None:
        job_id = getattr(env.event(), "job_id", None)
        if isinstance(job_id, str):
            state[job_id] = status
    return state
