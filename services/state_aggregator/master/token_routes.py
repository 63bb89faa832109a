"""The aggregator's internal REST for sensor tokens (``tokens.py``), on master control's
blueprint. Only the ``web`` program calls ``tokens/...``: it issues a token when a sensor
registers over the LAN, verifies the token of every sensor request before forwarding it, and
serves ``token/refresh`` and the management routes ``sensors/{s}/tokens`` to the LAN. The web
program never forwards ``tokens/...`` from the LAN."""

from __future__ import annotations

from typing import Annotated

from flask import Response
from pydantic import BaseModel, ConfigDict, Field

from shared.master_models import SensorId
from shared.openapi import describe
from shared.web import ApiError, parse_body

from .routes import _id, _master, bp, ok
from .tokens import SensorTokens


class TokenIssue(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sensor_id: SensorId


class TokenGiven(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    token: Annotated[str, Field(min_length=1, max_length=256)]


def _tokens() -> SensorTokens:
    master = _master()
    return master.tokens or SensorTokens(master.service.db)


@bp.post("/tokens/issue")
@describe(body=TokenIssue, responses={201: "a new sensor token", 404: "unknown sensor",
                                      422: "invalid body"})
def issue_token() -> Response:
    return ok(_tokens().issue(parse_body(TokenIssue).sensor_id), 201)


@bp.post("/tokens/verify")
@describe(body=TokenGiven, responses={200: "the token's sensor", 401: "not a good token",
                                      422: "invalid body"})
def verify_token() -> Response:
    return ok(_tokens().verify(parse_body(TokenGiven).token))


@bp.post("/tokens/refresh")
@describe(body=TokenGiven, responses={201: "a new sensor token", 401: "not a good token",
                                      422: "invalid body"})
def refresh_token() -> Response:
    return ok(_tokens().refresh(parse_body(TokenGiven).token), 201)


@bp.get("/sensors/<sensor_id>/tokens")
@describe(responses={200: "the sensor's tokens, without secrets", 400: "bad id",
                     404: "unknown sensor"})
def sensor_tokens(sensor_id: str) -> Response:
    sensor = _master().admin.sensor(_id(sensor_id))  # 404 for an unknown sensor
    return ok({"sensor_id": sensor["sensor_id"], "tokens": _tokens().list(sensor_id)})


@bp.delete("/sensors/<sensor_id>/tokens")
@describe(responses={200: "how many were revoked", 400: "bad id", 404: "unknown sensor"})
def revoke_tokens(sensor_id: str) -> Response:
    _master().admin.sensor(_id(sensor_id))
    return ok({"sensor_id": sensor_id, "revoked": _tokens().revoke(sensor_id)})


@bp.delete("/sensors/<sensor_id>/tokens/<token_id>")
@describe(responses={200: "revoked", 400: "bad id", 404: "unknown sensor or token"})
def revoke_token(sensor_id: str, token_id: str) -> Response:
    _master().admin.sensor(_id(sensor_id))
    revoked = _tokens().revoke(sensor_id, _id(token_id, "token_id"))
    if not revoked:
        raise ApiError(404, "unknown_token",
                       f"sensor {sensor_id!r} has no valid token {token_id!r}")
    return ok({"sensor_id": sensor_id, "revoked": revoked})
