"""Background jobs in the admin API (cache and HLS warm-ups): the list, one job, the 202 that starts one."""

from __future__ import annotations

from typing import Any, Dict, Tuple

from twisted.web.resource import Resource
from twisted.web.server import Request

from speedproxy.admin.context import AdminContext, APIResource
from speedproxy.admin.json_resource import NotFoundResource, not_found


class JobResource(APIResource):
    """``GET <jobs>/<id>``: one job's progress and results."""

    def __init__(self, api: AdminContext, jobs: Any, job_id: str, what: str) -> None:
        super().__init__(api)
        self.jobs = jobs
        self.job_id = job_id
        self.what = what

    def json_GET(self, request: Request) -> Dict[str, Any]:
        job = self.jobs.get(self.job_id)
        if job is None:
            raise not_found(f"no {self.what} {self.job_id!r} (the last {self.jobs.keep} are kept)", "id")
        return job.summary()


class JobsResource(APIResource):
    """``POST`` starts a job, ``GET`` lists them; ``/<id>`` is one job.

    Subclasses set :attr:`path` (where the jobs are, for ``status_url``) and
    :attr:`what` (how a job is named in a 404).
    """

    isLeaf = False
    path = ""
    what = "job"

    def __init__(self, api: AdminContext, jobs: Any) -> None:
        super().__init__(api)
        self.jobs = jobs

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        if len(path) > 64:
            return NotFoundResource()
        return JobResource(self.api, self.jobs, path.decode("latin-1"), self.what)

    def accepted(self, request: Request, job: Any, note: str, answer: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
        """The 202 for a job just started (``note`` goes into the audit line)."""
        request.audit_note = f"job={job.id} {note}"  # type: ignore[attr-defined]
        answer["status_url"] = f"{self.path}/{job.id}"
        return 202, answer
