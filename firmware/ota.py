"""Firmware updates: download into the inactive slot while hashing, switch only when the SHA-256
matches, boot the new image on trial, keep it after its first good check-in, and roll back an
image that never checks in.

The trial is counted in ``ota.json``: the first boot of a new image sets ``tries`` to 1; a second
boot still on trial means the first never reached a master (it crashed, hung until the
watchdog, or could not check in within ``trial_ms``), so the previous slot boots again.
"""

import hashlib

from .hal import Hal
from .store import Store
from .web import HttpError, request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

FILE = "ota.json"


class OtaError(Exception):
    """Raised when an image is refused: unreachable, wrong size or hash. Nothing was switched."""


class Ota:
    def __init__(self, hal: Hal, store: Store, *, trial_ms: int = 120000) -> None:
        self.hal = hal
        self.store = store
        self.trial_ms = trial_ms
        self.state = store.load(FILE, {"state": "none"})

    def boot(self) -> str:
        """Called once at boot, before anything else; what happened (for /status)."""
        st = self.state
        if st.get("state") != "trial":
            return str(st.get("state"))
        st["tries"] = int(st.get("tries", 0)) + 1
        if st["tries"] > 1:
            self.hal.image_rollback()
            self.state = {"state": "rolled_back", "version": st.get("previous"),
                          "refused": st.get("version")}
            self.store.save(FILE, self.state)
            self.hal.reset()  # into the previous image
            return "rolled_back"
        self.store.save(FILE, st)
        return "trial"

    def on_trial(self) -> bool:
        return self.state.get("state") == "trial"

    def version(self, default: str) -> str:
        return str(self.state.get("version") or default)

    def checked_in(self) -> None:
        """A master answered: a trial image is good."""
        if self.on_trial():
            self.hal.image_mark_good()
            self.state = {"state": "good", "version": self.state.get("version")}
            self.store.save(FILE, self.state)

    def trial_over(self, uptime_ms: int) -> bool:
        """True when a trial boot has run ``trial_ms`` without a check-in: time to reset."""
        return self.on_trial() and uptime_ms > self.trial_ms

    def install(self, url: str, sha256: str, version: str, running: str) -> "dict[str, Any]":
        """Download, verify, switch. ``OtaError`` (nothing switched) when anything is wrong."""
        if not isinstance(url, str) or not url.startswith("http://"):
            raise OtaError("url must be an http:// URL")
        if not isinstance(sha256, str) or len(sha256) != 64:
            raise OtaError("sha256 must be 64 hex digits")
        digest = hashlib.sha256()
        size = [0]

        def sink(chunk: bytes) -> None:
            digest.update(chunk)
            size[0] += len(chunk)
            self.hal.image_write(chunk)
            self.hal.feed_watchdog()

        self.hal.collect()
        self.hal.image_begin()
        try:
            resp = request(self.hal, "GET", url, timeout_s=10.0, sink=sink)
        except (OSError, HttpError, ValueError) as exc:
            raise OtaError("download failed: %s" % exc) from exc
        if resp.status != 200:
            raise OtaError("download failed: HTTP %d" % resp.status)
        got = "".join("%02x" % b for b in digest.digest())
        if got != sha256.lower():
            raise OtaError("sha256 mismatch: the image hashes to %s, expected %s" % (got, sha256))
        self.hal.image_switch()
        self.state = {"state": "trial", "version": version, "previous": running, "tries": 0}
        self.store.save(FILE, self.state)
        return {"version": version, "bytes": size[0], "sha256": got}
