"""A service whose port another program holds, under the real supervisord with the real
supervisord.conf: it stops at start for good (FATAL, see ``stopped_for_good``) with one line that
names the address, the setting and the holder, instead of gunicorn's five retries and a restart
every 7 s for ever, and the other programs run on.

Why stop rather than move to another port: the port is configured (SERIAL_HANDLER_PORT and the
like, 5001-5003 by default, outside the kernel's ephemeral range) and the other programs, ``./hub
curl`` and an operator's firewall address it by that setting; a program holding it does not go
away by retrying. In the container the internal ports live in the container's own network
namespace, where nothing else can take them (tests/container)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import (
    Instance,
    instance_env,
    start_supervisord,
    states,
    stop_supervisord,
    stopped_for_good,
)
from tests.helpers import Broker, retained, wait_for

pytestmark = pytest.mark.e2e

SENSOR = {"sensor_id": "t1", "sensor_type": "climate", "interval": 1,
          "source": {"type": "serial", "port": "sim://busy?profile=climate&ids=t1",
                     "mode": "poll", "read_timeout": 1.0}}


def test_a_taken_port_stops_its_service_for_good_naming_the_holder(mosquitto: Broker,
                                                                   tmp_path: Path) -> None:
    instances = tmp_path / "instances"
    instances.mkdir()
    (instances / "busy.json").write_text(json.dumps({
        "instance_id": "busy", "friendly_name": "a port in use", "config": {"sensors": [SENSOR]}}))
    env = instance_env(mosquitto, tmp_path, instances, "busy")
    port = int(env["SERIAL_HANDLER_PORT"])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        proc, output = start_supervisord(env)
        inst = Instance(env, f"{env['MQTT_BASE_TOPIC']}/v1/instances/busy", proc, output)
        try:
            wait_for(lambda: stopped_for_good(inst, "serial-handler"), timeout=60, interval=0.2,
                     what=f"serial-handler FATAL: {states(inst)}\n{inst.log()}")
            # The others run on: the bridge says online, and every program but one is RUNNING.
            retained(mosquitto.host, mosquitto.port, f"{inst.root_topic}/status", timeout=60,
                     where=lambda m: m.text == "online")
            wait_for(lambda: all(state == "RUNNING" for program, state in states(inst).items()
                                 if program != "serial-handler"), timeout=60, interval=0.2,
                     what=f"the other programs RUNNING: {states(inst)}")
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
