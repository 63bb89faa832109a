"""What /proc says about processes and the machine: CPU ticks, RSS/PSS, process trees."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    # comm may contain spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (0.0 when it is gone)."""
    try:
        f = _stat_fields(pid)
    except (OSError, ValueError):
        return 0.0
    return (int(f[11]) + int(f[12])) / TICK  # fields 14 and 15 of proc(5)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def smaps_rollup(pid: int) -> dict[str, float]:
    """RSS and PSS of ``pid`` in MB (zeros when it is gone)."""
    out = {"rss_mb": 0.0, "pss_mb": 0.0}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            out[f"{key.lower()}_mb"] = int(rest.split()[0]) / 1024
    return out


def memory_of(pids: list[int]) -> dict[str, float]:
    rss = pss = 0.0
    for pid in pids:
        m = smaps_rollup(pid)
        rss += m["rss_mb"]
        pss += m["pss_mb"]
    return {"rss_mb": round(rss, 1), "pss_mb": round(pss, 1)}


def cpu_of(pids: list[int]) -> float:
    return sum(cpu_seconds(p) for p in pids)


def machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.partition(":")[2].strip()
            break
    try:
        mosq = subprocess.run([mosquitto_binary(), "-h"], capture_output=True, text=True,
                              timeout=5, check=False).stdout
        m = re.search(r"mosquitto version (\S+)", mosq)
        mosq_version = m.group(1) if m else "?"
    except (OSError, RuntimeError):
        mosq_version = "?"
    import paho.mqtt
    return {
        "cores": os.cpu_count(), "cpu": cpu_model, "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "python": sys.version.split()[0], "platform": platform.platform(),
        "mosquitto": mosq_version, "paho_mqtt": paho.mqtt.__version__,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def mosquitto_binary() -> str:
    import shutil
    found = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise RuntimeError("mosquitto is not installed: ./hub setup installs it")
    return found
