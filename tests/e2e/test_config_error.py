"""A configuration error under the real supervisord with the real supervisord.conf: every program
that meets it ends FATAL (see ``stopped_for_good``), with its message once, and is never
restarted. (``./hub run`` and the
image's entrypoint check first and do not start supervisord at all; this is what happens when
the check is skipped or the file changes under a running instance.)

A service whose port another program holds stops the same way, with one line that names the
address, the setting and the holder, instead of gunicorn's five retries and a restart every 7 s
for ever. Why stop rather than move to another port: the port is configured
(SERIAL_HANDLER_PORT and the like, 5001-5003 by default, outside the kernel's ephemeral range)
and the other programs, ``./hub curl`` and an operator's firewall address it by that setting; a
program holding it does not go away by retrying. In the container the internal ports live in the
container's own network namespace, where nothing else can take them (tests/container)."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import socket
import urllib.request
from functools import partial
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.e2e.conftest import (
    Instance,
    instance_env,
    start_supervisord,
    states,
    stop_supervisord,
    stopped_for_good,
)
from tests.helpers import Broker, internal_headers, retained, wait_for

pytestmark = pytest.mark.e2e

MESSAGE = "instance_id: is 'demo' but INSTANCE_NAME is 'mine'"


def conf_programs() -> list[str]:
    parser = configparser.RawConfigParser()
    parser.read(ROOT / "supervisord.conf")
    return [s.partition(":")[2] for s in parser.sections() if s.startswith("program:")]


def healthy(port: int, headers: dict[str, str]) -> bool:
    try:
        ask = urllib.request.Request(f"http://127.0.0.1:{port}/health", headers=headers)
        with urllib.request.urlopen(ask, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def test_a_copied_instance_file_stops_every_program_for_good_with_its_message_once(
        mosquitto: Broker, tmp_path: Path) -> None:
    instances = tmp_path / "instances"
    instances.mkdir()
    shutil.copy(ROOT / "instances" / "demo.json", instances / "mine.json")
    env = instance_env(mosquitto, tmp_path, instances, "mine")
    proc, output = start_supervisord(env)
    inst = Instance(env, "", proc, output)
    programs = conf_programs()
    try:
        wait_for(lambda: all(stopped_for_good(inst, p) for p in programs), timeout=60,
                 interval=0.2, what=lambda: f"{programs} FATAL: {states(inst)}\n{inst.log()}")
        log = inst.log()
        for program in programs:
            assert log.count(f"spawned: '{program}'") == 1, log
            assert log.count(f"{program}: invalid instance file") == 1, log
        assert log.count(MESSAGE) == len(programs), log
    finally:
        stop_supervisord(proc)


def test_a_program_restarted_on_a_broken_file_stops_for_good_and_the_others_run_on(
        mosquitto: Broker, tmp_path: Path) -> None:
    instances = tmp_path / "instances"
    instances.mkdir()
    data = json.loads((ROOT / "instances" / "lab.json").read_text())
    (instances / "lab.json").write_text(json.dumps(data))
    env = instance_env(mosquitto, tmp_path, instances, "lab")
    proc, output = start_supervisord(env)
    inst = Instance(env, "", proc, output)
    programs = conf_programs()
    try:
        # Up, not only RUNNING: a service's worker reads the file again when it boots, which
        # takes seconds on a busy machine.
        for port in ("SERIAL_HANDLER_PORT", "HTTP_POLLER_PORT", "STATE_AGGREGATOR_PORT"):
            wait_for(partial(healthy, int(env[port]), internal_headers(env)), timeout=90, interval=0.2,
                     what=f"/health on {port}")
        retained(mosquitto.host, mosquitto.port, f"{env['MQTT_BASE_TOPIC']}/v1/instances/lab/status",
                 timeout=60, where=lambda m: m.text == "online")
        # RUNNING, not only answering: supervisord calls a program RUNNING after startsecs (5 s).
        wait_for(lambda: all(states(inst).get(p) == "RUNNING" for p in programs), timeout=60,
                 interval=0.2, what=lambda: f"every program RUNNING: {states(inst)}")
        data["instance_id"] = "demo"  # an edit that breaks the file under the running instance
        (instances / "lab.json").write_text(json.dumps(data))
        inst.supervisorctl("restart", "serial-handler")
        wait_for(lambda: stopped_for_good(inst, "serial-handler"), timeout=30,
                 interval=0.2, what=lambda: f"serial-handler FATAL: {states(inst)}\n{inst.log()}")
        log = inst.log()
        assert log.count("spawned: 'serial-handler'") == 2, log
        assert log.count("instance_id: is 'demo' but INSTANCE_NAME is 'lab'") == 1, log
        others = states(inst)
        assert all(others[p] == "RUNNING" for p in programs if p != "serial-handler"), others
    finally:
        stop_supervisord(proc)


PORT_SENSOR = {"sensor_id": "t1", "sensor_type": "climate", "interval": 1,
          "source": {"type": "serial", "port": "sim://busy?profile=climate&ids=t1",
                     "mode": "poll", "read_timeout": 1.0}}


def test_a_taken_port_stops_its_service_for_good_naming_the_holder(mosquitto: Broker,
                                                                   tmp_path: Path) -> None:
    instances = tmp_path / "instances"
    instances.mkdir()
    (instances / "busy.json").write_text(json.dumps({
        "instance_id": "busy", "friendly_name": "a port in use", "config": {"sensors": [PORT_SENSOR]}}))
    env = instance_env(mosquitto, tmp_path, instances, "busy")
    port = int(env["SERIAL_HANDLER_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        proc, output = start_supervisord(env)
        inst = Instance(env, f"{env['MQTT_BASE_TOPIC']}/v1/instances/busy", proc, output)
        try:
            wait_for(lambda: stopped_for_good(inst, "serial-handler"), timeout=60, interval=0.2,
                     what=lambda: f"serial-handler FATAL: {states(inst)}\n{inst.log()}")
            # The others run on: the bridge says online, and every program but one is RUNNING.
            retained(mosquitto.host, mosquitto.port, f"{inst.root_topic}/status", timeout=60,
                     where=lambda m: m.text == "online",
                     what=lambda: f"the bridge online: {states(inst)}\n{inst.log()}")
            wait_for(lambda: all(state == "RUNNING" for program, state in states(inst).items()
                                 if program != "serial-handler"), timeout=60, interval=0.2,
                     what=lambda: f"the other programs RUNNING: {states(inst)}\n{inst.log()}")
            log = inst.log()
            assert log.count("spawned: 'serial-handler'") == 1, log
            said = [line for line in log.splitlines() if "cannot listen on" in line]
            assert len(said) == 1, log
            assert f"cannot listen on 127.0.0.1:{port} (SERIAL_HANDLER_PORT): the address is " \
                   f"in use by pid {os.getpid()} (" in said[0], said
            assert "listening there" in said[0], said
            assert "Connection in use" not in log, log  # gunicorn never started
        finally:
            stop_supervisord(proc)
