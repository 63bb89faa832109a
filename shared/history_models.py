"""The readings history's payloads (issue 11): readings posted over REST (one or a bulk of up to
``BULK_MAX``), and the MQTT ``meta/request/history`` request. Shared by the aggregator (which
stores them), the web program (which validates LAN bodies before forwarding them) and the bridge.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shared.jsonutil import dumps
from shared.models import DeviceId
from shared.timeutil import in_range, parse_iso

BULK_MAX = 1000  # readings per POST /api/readings/bulk (the seed syncs 360 per request)
PAGE_MAX = 10_000  # readings per page of GET /api/readings
MQTT_LIMIT_MAX = 500  # readings per meta/history answer: one MQTT message stays small
MQTT_WINDOW_MAX_S = 7 * 86400.0  # a meta/request/history window spans at most a week
CSV_COLUMNS = ("id", "device_id", "ts_utc", "ts_local", "reading_id", "payload")
# A reading id chosen by the sensor; never starts with "@", which marks the hub's own keys.
ReadingId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
# The query arguments of the readings routes (the aggregator's /history and the LAN's
# /api/readings), for their OpenAPI descriptions: ISO 8601 bounds, keyset pagination.
READINGS_QUERY: dict[str, Any] = {
    "start_date": str, "end_date": str, "device_id": str,
    "limit": Annotated[int, Field(ge=1, le=PAGE_MAX)], "cursor": str}


def _epoch(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{what} must be an ISO 8601 timestamp")
    try:
        ts = float(value) if isinstance(value, int | float) else parse_iso(value)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{what} is not an ISO 8601 timestamp: {value!r:.100}") from exc
    if not in_range(ts):
        raise ValueError(f"{what} must be between 1970 and 9999, got {value!r:.100}")
    return ts


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ReadingIn(_Model):
    """One reading for the history: ``ts_utc`` (ISO 8601; ``timestamp`` is taken too) when it
    was sampled, the sensor's ``reading_id`` when it has one (else the timestamp identifies
    it), and its values. ``ts_local`` is the hub's to compute (from ``TZ``); one given is
    ignored."""

    device_id: DeviceId
    ts_utc: float
    reading_id: ReadingId | None = None
    payload: dict[str, Any]

    @classmethod
    def from_body(cls, body: Any) -> ReadingIn:
        if isinstance(body, dict) and "ts_utc" not in body and "timestamp" in body:
            body = {**body, "ts_utc": body["timestamp"]}
        return cls.model_validate(body)

    @field_validator("ts_utc", mode="before")
    @classmethod
    def _ts(cls, v: Any) -> float:
        return _epoch(v, "ts_utc")


class ReadingsBulkIn(_Model):
    readings: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=BULK_MAX)]

    def parsed(self) -> list[ReadingIn]:
        """The readings; ``ValueError`` naming the first bad one by its index."""
        out = []
        for i, raw in enumerate(self.readings):
            try:
                out.append(ReadingIn.from_body(raw))
            except ValueError as exc:
                raise ValueError(f"readings[{i}]: {exc}") from exc
        return out


class HistoryRequestIn(_Model):
    """``meta/request/history``: a bounded window of one device's stored readings."""

    id: Annotated[str, Field(max_length=128)] | None = None
    device_id: DeviceId
    start: float
    end: float
    limit: Annotated[int, Field(ge=1, le=MQTT_LIMIT_MAX)] = 100

    @field_validator("start", "end", mode="before")
    @classmethod
    def _ts(cls, v: Any) -> float:
        return _epoch(v, "start/end")

    @model_validator(mode="after")
    def _window(self) -> HistoryRequestIn:
        if self.end <= self.start:
            raise ValueError("end must be after start")
        if self.end - self.start > MQTT_WINDOW_MAX_S:
            raise ValueError(f"the window may span at most {MQTT_WINDOW_MAX_S / 86400:g} days")
        return self


def csv_chunks(pages: Iterable[list[dict[str, Any]]]) -> Iterator[str]:
    """Stored readings (as ``GET .../readings`` answers them) as CSV: the header, then one chunk
    per page, so an export of any size streams in constant memory."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    yield buf.getvalue()
    for page in pages:
        buf.seek(0)
        buf.truncate()
        for r in page:
            writer.writerow((r["id"], r["device_id"], r["ts_utc"], r["ts_local"],
                             r["reading_id"] or "", dumps(r["payload"]).decode()))
        yield buf.getvalue()
