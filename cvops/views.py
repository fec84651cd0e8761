"""The records as the HTTP API shows them, shared by the actors that build them and the gateway routes
that encode them (and document them in OpenAPI: the response Structs ARE the responses, so the docs and
the code cannot diverge).  Torch-free and Ray-free.

* :class:`DeploymentView`: a deployment record, whether this gateway serves it, and its router's counters.
* :data:`JobView`: a :class:`~cvops.events.scheduling.JobRecord` less its internal FIFO key
  (``queue_seq``); its fields are derived from the record's, never declared twice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from cvops.events.projections import DeploymentRecord
from cvops.events.scheduling import JobRecord
from cvops.serving import RouterStats

# record fields the API does not show
JOB_INTERNAL_FIELDS = ("queue_seq",)


class DeploymentView(DeploymentRecord, kw_only=True):
    """A deployment as ``GET /deployments/{id}`` shows it: its record, whether this gateway serves it,
    and (while it does) its router's counters.  ``router`` is left out of the JSON when not serving."""

    serving: bool = False
    router: RouterStats | msgspec.UnsetType = msgspec.UNSET


def struct_without(base: type[msgspec.Struct], name: str, drop: tuple[str, ...]) -> Any:
    """A frozen Struct type named ``name`` with ``base``'s fields (same order, types and defaults) except
    ``drop``."""
    fields: list[Any] = []
    for f in msgspec.structs.fields(base):
        if f.name in drop:
            continue
        if f.required:
            fields.append((f.name, f.type))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, f.type, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, f.type, f.default))
    return msgspec.defstruct(name, fields, kw_only=True, frozen=True, module=__name__)


if TYPE_CHECKING:
    JobView = JobRecord
else:
    JobView = struct_without(JobRecord, "JobView", JOB_INTERNAL_FIELDS)
    JobView.__doc__ = "A job as ``GET /jobs/{id}`` shows it: its record less the internal FIFO key."


def job_view(record: JobRecord) -> JobView:
    """The :data:`JobView` of ``record`` (encodes exactly as ``scheduling.job_view``'s dict did)."""
    return msgspec.convert(record, JobView, from_attributes=True)
