"""Staged work, the buyer's side: drive a seller's job stage by stage (docs/buyer.md,
"Staged work").

A seller sells a long task as paid stages of one job: the first stage's response names the job
(``Job-Id``), each later stage is a request of its own carrying it. :class:`StagedJob` (and
:class:`AsyncStagedJob`) do that bookkeeping over a client that pays (a
:class:`~.transport.PaymentTransport`); the spending policy decides each stage as any payment,
and a task budget must also cover what the stages after it cost (``extra.stage.ahead`` in the
challenge), so a job the budget cannot finish is refused before anything is paid::

    with policy.task("report", budget="$0.10"):
        job = StagedJob(client)
        job.stage("POST", f"{seller}/report", json={"topic": "tides"})
        job.stage("POST", f"{seller}/report/analyse")
        job.stage("POST", f"{seller}/report/write")

A stage answered with anything but a 2xx ends the job (:class:`StageFailed`): the seller
refunds that stage and sells no later one, and this object sends no more requests for it.
"""

from __future__ import annotations

from typing import Any

import httpx

from ..errors import FourmicaError
from ..wire import PaymentRequirements

__all__ = ["AsyncStagedJob", "JOB_HEADER", "StageFailed", "StagedJob", "ahead_of"]

JOB_HEADER = "Job-Id"


class StageFailed(FourmicaError):
    """A stage was not delivered (its response was not a 2xx), or the job had failed before."""

    status = 409
    reason = "stage_failed"

    def __init__(self, message: str, response: httpx.Response | None = None) -> None:
        super().__init__(message)
        self.response = response


def ahead_of(offer: PaymentRequirements) -> int:
    """What a staged job's later stages cost, as the offer says (0 when it says nothing)."""
    stage = offer.extra.get("stage")
    ahead = stage.get("ahead") if isinstance(stage, dict) else None
    if not isinstance(ahead, str) or not (ahead.isascii() and ahead.isdigit()) or len(ahead) > 78:
        return 0  # "²" is a digit to str.isdigit, not to int()
    return int(ahead)


class _Job:
    def __init__(self, job_id: str | None) -> None:
        #: The job's id, once the first stage named it (or as given, to resume a job).
        self.id = job_id
        #: Each stage's response, in order.
        self.responses: list[httpx.Response] = []
        self.failed: StageFailed | None = None

    def _request(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self.failed is not None:
            raise self.failed
        headers = httpx.Headers(kwargs.pop("headers", None))
        if self.id is not None:
            headers[JOB_HEADER] = self.id
        return {**kwargs, "headers": headers}

    def _answered(self, response: httpx.Response) -> httpx.Response:
        self.responses.append(response)
        if not response.is_success:
            self.failed = StageFailed(
                f"stage {len(self.responses)} of job {self.id or '(none)'} answered "
                f"{response.status_code}: the job is over",
                response,
            )
            raise self.failed
        named = response.headers.get(JOB_HEADER)
        if self.id is None and named:
            self.id = named
        return response


class StagedJob(_Job):
    """A seller's staged job over ``client`` (an :class:`httpx.Client` that pays)."""

    def __init__(self, client: httpx.Client, job_id: str | None = None) -> None:
        super().__init__(job_id)
        self.client = client

    def stage(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send the next stage (``kwargs`` as :meth:`httpx.Client.request`)."""
        return self._answered(self.client.request(method, url, **self._request(kwargs)))


class AsyncStagedJob(_Job):
    """A seller's staged job over ``client`` (an :class:`httpx.AsyncClient` that pays)."""

    def __init__(self, client: httpx.AsyncClient, job_id: str | None = None) -> None:
        super().__init__(job_id)
        self.client = client

    async def stage(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send the next stage (``kwargs`` as :meth:`httpx.AsyncClient.request`)."""
        return self._answered(await self.client.request(method, url, **self._request(kwargs)))
