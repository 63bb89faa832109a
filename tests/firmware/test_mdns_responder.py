"""The ESP32's own mDNS responder (firmware/mdns.py: MicroPython cannot advertise a service) on
a real multicast socket, found by the hub's real zeroconf browser, in a private network
namespace. The socket is set up as hal/esp32.py does, plus the loopback interface choice a PC
needs; the packet code and the answering loop are the device's."""

from __future__ import annotations

import socket
import threading

import pytest

from firmware.mdns import GROUP, PORT, Responder, answer_pending
from services.http_poller.discovery import ProbeBrowser
from services.http_poller.probes import ProbeDirectory
from tests.helpers import wait_for
from tests.probe_fixtures.netns import run_in_private_netns


def multicast_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # zeroconf holds 5353 too
    sock.bind(("0.0.0.0", PORT))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton(GROUP) + socket.inet_aton("127.0.0.1"))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.setblocking(False)
    return sock


def test_the_hub_discovers_a_probe_advertised_by_the_firmware_responder() -> None:
    def body() -> None:
        directory = ProbeDirectory()
        browser = ProbeBrowser(directory, interfaces=["127.0.0.1"])
        responder = Responder("_temps-probe._tcp", "probe-esp", 8080, "127.0.0.1",
                              {"id": "probe-esp", "name": "ESP probe", "fw": "1.0.0",
                               "mac": "24:6f:28:00:00:01"})
        sock = multicast_socket()
        stop = threading.Event()
        answered = [0]

        def loop() -> None:  # the device's probe loop, reduced to its mDNS duty
            # No announcement here: the browser can only learn of the probe from an answer.
            while not stop.wait(0.02):
                answered[0] += answer_pending(sock, responder)

        threading.Thread(target=loop, daemon=True).start()
        browser.start()
        try:
            found = wait_for(lambda: directory.get("probe-esp"), timeout=20,
                             what="the browser to find the responder's probe")
            assert (found.ip, found.port, found.name) == ("127.0.0.1", 8080, "ESP probe")
            assert answered[0] >= 1
        finally:
            stop.set()
            browser.stop()
            sock.close()

    reason = run_in_private_netns(body)
    if reason is not None:
        pytest.skip(f"no private network namespace for the mDNS test: {reason}")
