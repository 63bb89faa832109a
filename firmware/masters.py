"""Which master the probe talks to: the config's ``masters`` list in priority order (1 first).

Fail over: after ``tries`` failed check-ins in a row with the current master, the next one in
order (wrapping round). Fail back: while not on the first, each check-in also asks the first; it
must answer ``failback_after`` times in a row before the probe moves back, so a master that
flickers does not make the probes flap between the two.
"""

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def normalise(entries: "Any") -> "list[dict[str, Any]]":
    """Usable entries (an ``http://`` endpoint), ordered by priority; the rest are dropped."""
    out: list[dict[str, Any]] = []
    if not isinstance(entries, list):
        return out
    for e in entries:
        if isinstance(e, dict) and isinstance(e.get("api_endpoint"), str) and \
                e["api_endpoint"].startswith("http://"):
            prio = e.get("priority")
            out.append({"name": str(e.get("name") or e["api_endpoint"]),
                        "api_endpoint": e["api_endpoint"].rstrip("/"),
                        "priority": prio if isinstance(prio, int) else 1000})
    out.sort(key=lambda e: e["priority"])
    return out


class Masters:
    def __init__(self, entries: "Any", *, tries: int = 3, failback_after: int = 3) -> None:
        self.entries = normalise(entries)
        self.tries = tries
        self.failback_after = failback_after
        self.index = 0
        self.failures = 0
        self.higher_ok = 0
        self.switches = 0

    def current(self) -> "dict[str, Any] | None":
        return self.entries[self.index] if self.entries else None

    def update(self, entries: "Any") -> None:
        """A new list from the config: stay with the current master when it is still listed."""
        fresh = normalise(entries)
        if not fresh or fresh == self.entries:
            return
        here = self.current()
        self.entries = fresh
        self.index = 0
        if here is not None:
            for i, e in enumerate(fresh):
                if e["api_endpoint"] == here["api_endpoint"]:
                    self.index = i
        self.failures = 0
        self.higher_ok = 0

    def succeeded(self) -> None:
        self.failures = 0

    def failed(self) -> bool:
        """One failed check-in; True when that moved the probe to the next master."""
        self.failures += 1
        if self.failures < self.tries or len(self.entries) < 2:
            return False
        self.index = (self.index + 1) % len(self.entries)
        self.failures = 0
        self.higher_ok = 0
        self.switches += 1
        return True

    def higher(self) -> "dict[str, Any] | None":
        """The master to try for a fail-back, when the probe is not on the first."""
        return self.entries[0] if self.index > 0 else None

    def higher_answered(self, ok: bool) -> bool:
        """The first master answered (or not); True when the probe moves back to it."""
        if not ok:
            self.higher_ok = 0
            return False
        self.higher_ok += 1
        if self.higher_ok < self.failback_after:
            return False
        self.index = 0
        self.failures = 0
        self.higher_ok = 0
        self.switches += 1
        return True
