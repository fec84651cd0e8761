"""Pure integrity check of an event log: ``verify(envelopes) -> problems`` (empty means sound)."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from cvops.events.scheduling import audit_tokens
from cvops.events.schema import UPCASTERS, Envelope

MAX_PROBLEMS = 1000  # stop collecting after this many (the log is clearly broken by then)


def verify(envelopes: Iterable[Envelope], tokens: int | None = None) -> list[str]:
    """Problems found in ``envelopes`` (in seq order): seq gaps, version gaps, undecodable payloads.

    * ``seq`` starts at 1 and has no gap and no repeat;
    * each stream's versions go 1, 2, 3, ... in seq order;
    * every payload decodes to an event whose tag is the row's ``type``;
    * if ``tokens`` is given, the GPU-token audit (:func:`~cvops.events.scheduling.audit_tokens`)
      (never more jobs holding tokens than there are tokens) runs over the same envelopes.
    """
    problems: list[str] = []
    versions: dict[str, int] = {}
    expected_seq = 1
    kept: list[Envelope] | None = [] if tokens is not None else None

    def problem(text: str) -> None:
        if len(problems) < MAX_PROBLEMS:
            problems.append(text)

    for env in envelopes:
        if kept is not None:
            kept.append(env)
        if env.seq != expected_seq:
            if env.seq > expected_seq:
                missing = (
                    f"{expected_seq}" if env.seq == expected_seq + 1 else f"{expected_seq}..{env.seq - 1}"
                )
                problem(f"seq gap: missing {missing} (next present is {env.seq})")
            else:
                problem(f"seq out of order: {env.seq} after {expected_seq - 1}")
        expected_seq = max(expected_seq, env.seq + 1)
        want = versions.get(env.stream, 0) + 1
        if env.version != want:
            problem(f"seq {env.seq}: stream {env.stream!r} version {env.version}, expected {want}")
        versions[env.stream] = max(env.version, versions.get(env.stream, 0))
        try:
            ev = env.event()
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            problem(f"seq {env.seq}: payload of type {env.type!r} does not decode: {exc}")
            continue
        tag = ev.__struct_config__.tag
        if tag != env.type and env.type not in UPCASTERS:
            problem(f"seq {env.seq}: row type {env.type!r} but payload is {tag!r}")
    if tokens is not None and kept is not None:
        problems.extend(str(p) for p in audit_tokens(kept, tokens))
    return problems
