"""The three modes: how long and how often each section runs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mode:
    name: str
    runs: int                       # repetitions behind every median
    ceiling_msgs: int               # messages per ceiling run
    ports: int                      # pseudo-terminals for the end-to-end sections
    devices_per_port: int
    throughput_s: float             # one sustained-throughput run
    throughput_runs: int
    latency_s: float                # one latency run
    latency_rate: float             # readings/s offered in the latency runs
    scale_sizes: tuple[int, ...]
    scale_cycles: int
    poll_sensors: int
    poll_interval: float
    poll_window_s: float            # each polling run is one window of this length
    startup_runs: int
    master_mqtt: int = 1000         # master control: sensors heart-beating over MQTT
    master_http: int = 200          # and over HTTP through the web program, every 10 s
    master_s: float = 60.0          # the measured window, after the warm-up
    master_warmup_s: float = 10.0


MODES = {
    "smoke": Mode("smoke", runs=1, ceiling_msgs=2000, ports=2, devices_per_port=2,
                  throughput_s=1.0, throughput_runs=1, latency_s=1.0, latency_rate=200,
                  scale_sizes=(100, 200),
                  scale_cycles=1, poll_sensors=20, poll_interval=1.0, poll_window_s=3.0,
                  startup_runs=1, master_mqtt=50, master_http=10, master_s=5.0,
                  master_warmup_s=2.0),
    "quick": Mode("quick", runs=3, ceiling_msgs=10_000, ports=4, devices_per_port=4,
                  throughput_s=4.0, throughput_runs=3, latency_s=3.0, latency_rate=1000,
                  scale_sizes=(1000, 5000, 10_000), scale_cycles=3, poll_sensors=1000,
                  poll_interval=5.0, poll_window_s=5.0, startup_runs=3),
    "full": Mode("full", runs=5, ceiling_msgs=40_000, ports=8, devices_per_port=4,
                 throughput_s=60.0, throughput_runs=3, latency_s=20.0, latency_rate=1000,
                 scale_sizes=(1000, 5000, 10_000), scale_cycles=5, poll_sensors=1000,
                 poll_interval=5.0, poll_window_s=20.0, startup_runs=5, master_s=600.0),
}
