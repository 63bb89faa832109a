"""The internal REST's lock (``shared.internal``): the per-instance secret on disk, the check every
internal service makes, and ``RestClient`` carrying it to a real served service."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from services.state_aggregator.app import create_app as aggregator_app
from services.state_aggregator.core import Aggregator
from shared.errors import ConfigError, ServiceError
from shared.instance import parse_instance
from shared.internal import HEADER, load_secret, new_secret, protect, secret_path
from shared.rest import RestClient
from tests.helpers import free_port


def test_a_new_secret_is_private_to_the_user_and_new_at_every_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    first = new_secret(run_dir)
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(secret_path(run_dir).stat().st_mode) == 0o600
    assert load_secret(run_dir) == first and len(first) >= 40
    second = new_secret(run_dir)
    assert second != first and load_secret(run_dir) == second
    assert [p.name for p in run_dir.iterdir()] == ["internal.secret"]  # no temporary left


def _load(run_dir: str, out: multiprocessing.Queue[str]) -> None:
    out.put(load_secret(Path(run_dir)))


def test_processes_that_find_no_secret_all_end_with_the_same_one(tmp_path: Path) -> None:
    """What a test's supervisord does: the programs start at once and none finds a secret."""
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_load, args=(str(tmp_path / "run"), out)) for _ in range(6)]
    for p in procs:
        p.start()
    found = {out.get(timeout=30) for _ in procs}
    for p in procs:
        p.join(10)
    assert found == {load_secret(tmp_path / "run")}
    assert stat.S_IMODE(secret_path(tmp_path / "run").stat().st_mode) == 0o600


def test_a_secret_file_others_can_read_is_refused_with_its_path(tmp_path: Path) -> None:
    new_secret(tmp_path)
    secret_path(tmp_path).chmod(0o644)
    with pytest.raises(ConfigError, match=r"internal.secret must be this user's and of mode 0600 "
                                          r"\(it is uid \d+, mode 0644\)"):
        load_secret(tmp_path)


def test_an_empty_secret_file_is_refused(tmp_path: Path) -> None:
    fd = os.open(secret_path(tmp_path), os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with pytest.raises(ConfigError, match="is empty"):
        load_secret(tmp_path)


def _app(secret: str) -> Flask:
    app = Flask("t")

    @app.get("/devices")
    def devices() -> dict[str, list[str]]:
        return {"devices": ["a"]}

    protect(app, secret)
    return app


@pytest.mark.parametrize("path", ["/devices", "/no/such/route", "/master/sensors"])
def test_without_the_secret_every_path_gets_the_same_refusal(path: str) -> None:
    client = _app("s3cret").test_client()
    missing = client.get(path)
    assert missing.status_code == 401
    assert missing.json is not None and missing.json["error"] == "unauthorized"
    assert HEADER in missing.json["message"]
    wrong = client.post(path, headers={HEADER: "guess"}, json={})
    assert wrong.status_code == 403 and wrong.json is not None
    assert wrong.json["message"] == f"{HEADER} is not this instance's"


def test_with_the_secret_the_routes_answer_as_before() -> None:
    client = _app("s3cret").test_client()
    assert client.get("/devices", headers={HEADER: "s3cret"}).json == {"devices": ["a"]}
    assert client.get("/nope", headers={HEADER: "s3cret"}).status_code == 404


@pytest.fixture
def aggregator() -> Iterator[tuple[str, str]]:
    """A real aggregator app behind a secret, served over HTTP."""
    instance = parse_instance({"instance_id": "lock", "friendly_name": "lock", "config": {
        "sensors": [{"sensor_id": "s1", "sensor_type": "climate",
                     "source": {"type": "http", "url": "http://127.0.0.1:9/x"}}]}})
    agg = Aggregator(instance, handlers={}, cache_ttl=10, poll_interval=5)
    secret = "a" * 43
    server: BaseWSGIServer = make_server("127.0.0.1", free_port(),
                                         aggregator_app(agg, secret=secret), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", secret
    server.shutdown()
    agg.stop()


def test_rest_client_with_the_secret_reaches_the_aggregator(
        aggregator: tuple[str, str]) -> None:
    url, secret = aggregator
    client = RestClient(url, name="state-aggregator", secret=secret)
    assert "s1" in [d["device_id"] for d in client.get("/devices")["devices"]]


@pytest.mark.parametrize(("secret", "status"), [(None, 401), ("b" * 43, 403)])
def test_rest_client_without_the_secret_is_refused(aggregator: tuple[str, str],
                                                   secret: str | None, status: int) -> None:
    url, _ = aggregator
    with pytest.raises(ServiceError) as caught:
        RestClient(url, name="state-aggregator", secret=secret).get("/devices")
    assert caught.value.status == status


def test_a_run_dir_that_cannot_hold_the_secret_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(ConfigError, match=r"HUB_RUN_DIR: cannot keep the internal secret in "):
        load_secret(tmp_path / "a-file" / "run")
