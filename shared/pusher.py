"""Moves a handler's observations to the aggregator in batches.

``emit`` only appends to a queue; one thread sends whatever has piled up in a single
``POST /ingest`` (up to ``max_batch`` items), so an idle hub sends each reading at once and a
busy one sends hundreds per request. While the aggregator is away the queue holds up to
``capacity`` observations and the same batch is retried with backoff; only past that are the
oldest dropped, and counted. The queue holds the observations as the handler built them
(validated once, there); they become JSON only when a batch is sent.

Under a steady trickle (readings a millisecond or two apart) that would mean one request per
reading or two, and the requests, not the readings, would eat the CPU of both processes. So when
the previous request ended only moments ago (the hub is busy), the thread lingers ``linger``
seconds before taking the batch: at idle a reading still goes at once, under load the batches
grow and the requests become few.

A batch taken is kept, with its id, until the aggregator answers it; a failed request sends the
same batch again under the same id. The aggregator stores a batch's changes (and its id) before
it answers, so a batch it stored but could not answer (it was killed in between) is recognised
when it comes again, and not applied twice. What a handler holds in memory (its queue and the
unanswered batch) is the only window in which a crash of the handler itself loses readings.

A batch the aggregator refuses as invalid (422) is not sent again: it never will be taken, and
it would hold every newer observation back. The one way a handler's own, validated observations
get there is time: one stamped before the host's clock stepped back by more than the skew an
observation may have (``shared.models.ObsTime``). The aggregator applies nothing of a refused
batch, so the observations whose time is now out of range are dropped, counted in ``refused``
and logged with the aggregator's reason, and the rest of the batch goes again under its id; a
batch refused for any other reason is dropped whole.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque

from shared.errors import ServiceError
from shared.models import ErrorObs, EventObs, IngestBatch, LinkObs, ReadingObs, to_json
from shared.rest import RestClient
from shared.timeutil import obs_time_problem

log = logging.getLogger(__name__)

Obs = ReadingObs | ErrorObs | EventObs | LinkObs


class Pusher:
    def __init__(self, client: RestClient, *, source: str, max_batch: int = 1000,
                 capacity: int = 200_000, linger: float = 0.002, busy_within: float = 0.01) -> None:
        self._client = client
        self._linger = linger
        self._busy_within = busy_within
        self._last_post_end = 0.0
        self._source = source
        self._max_batch = max_batch
        self._queue: deque[Obs] = deque()
        self._capacity = capacity
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._inflight: list[Obs] = []  # the batch taken and not yet answered
        self._prefix = f"{source}-{uuid.uuid4().hex[:12]}"
        self._batch_no = 0
        self.sent = 0
        self.batches = 0
        self.dropped = 0
        self.refused = 0
        self._refused_batches = 0
        self.failures = 0

    def emit(self, obs: Obs) -> None:
        with self._cond:
            if len(self._queue) >= self._capacity:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 10_000 == 0:
                    log.error("aggregator backlog full: dropped %d oldest observations", self.dropped)
            self._queue.append(obs)
            self._cond.notify()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"push-{self._source}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()

    def stats(self) -> dict[str, int]:
        with self._cond:
            queued = len(self._queue) + len(self._inflight)
        return {"queued": queued, "sent": self.sent, "batches": self.batches,
                "dropped": self.dropped, "refused": self.refused, "failures": self.failures}

    def _take(self) -> tuple[str, list[Obs]] | None:
        """The next batch and its id (``None`` when stopping with nothing left)."""
        with self._cond:
            self._cond.wait_for(lambda: self._queue or self._stop)
            if self._stop and not self._queue:
                return None
            busy = time.monotonic() - self._last_post_end < self._busy_within
            if busy and len(self._queue) < self._max_batch and not self._stop:
                # let the readings that are on their way join this request
                self._cond.wait_for(lambda: self._stop, timeout=self._linger)
            n = min(len(self._queue), self._max_batch)
            self._inflight = [self._queue.popleft() for _ in range(n)]
        self._batch_no += 1
        return f"{self._prefix}-{self._batch_no}", self._inflight

    @staticmethod
    def _in_time(batch: list[Obs]) -> list[Obs]:
        """What of ``batch`` the aggregator's clock still takes (``shared.models.ObsTime``)."""
        now = time.time()
        return [obs for obs in batch if obs_time_problem(obs.ts, now) is None]

    def _refuse(self, n: int, exc: ServiceError) -> None:
        self.refused += n
        self._refused_batches += 1
        if self._refused_batches == 1 or self._refused_batches % 100 == 0:
            log.error("the aggregator refused %d observations, dropped (%d refused in all): %s",
                      n, self.refused, exc)

    def _run(self) -> None:
        backoff = 0.2
        while (taken := self._take()) is not None:
            batch_id, batch = taken
            # model_construct: these are the handler's own, already validated models.
            body = to_json(IngestBatch.model_construct(source=self._source, items=batch,
                                                       batch_id=batch_id))
            delivered = True
            while True:
                try:
                    self._client.post("/ingest", body, timeout=10.0)
                    break
                except ServiceError as exc:
                    if exc.status == 422:
                        if (kept := self._in_time(batch)) and len(kept) < len(batch):
                            # the aggregator applied none of it: the rest goes under the same id
                            self._refuse(len(batch) - len(kept), exc)
                            batch = kept
                            with self._cond:
                                self._inflight = kept
                            body = to_json(IngestBatch.model_construct(
                                source=self._source, items=batch, batch_id=batch_id))
                            continue
                        delivered = False
                        self._refuse(len(batch), exc)
                        break
                    self.failures += 1
                    if self.failures == 1 or backoff >= 5.0:
                        log.warning("cannot deliver %d observations (%s); retrying",
                                    len(batch), exc)
                    with self._cond:
                        if self._cond.wait_for(lambda: self._stop, timeout=backoff):
                            return
                    backoff = min(backoff * 2, 5.0)
            backoff = 0.2
            self._last_post_end = time.monotonic()
            with self._cond:
                self._inflight = []
            if delivered:
                self.sent += len(batch)
                self.batches += 1
