"""Print the Debian mirror URI this machine's apt uses for a suite (default: bookworm).

debootstrap needs a mirror; the repository must not name one, so the base-image script asks the
machine's own apt configuration at run time. Both formats are read: deb822 `*.sources` files and
one-line `sources.list` entries. Exit status 1 when no matching `deb` entry exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

APT_DIR = Path("/etc/apt")


def _deb822_entries(text: str) -> list[dict[str, str]]:
    entries: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key = ""
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if current:
                entries.append(current)
            current, key = {}, ""
        elif line.startswith("#"):
            continue
        elif line[0].isspace() and key:
            current[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    return entries


def _candidates() -> list[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of every enabled `deb` source, in apt's reading order."""
    found: list[tuple[str, list[str], list[str]]] = []
    lists = [APT_DIR / "sources.list", *sorted((APT_DIR / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for raw in path.read_text().splitlines():
            words = raw.split("#", 1)[0].split()
            if len(words) >= 4 and words[0] == "deb":
                if words[1].startswith("["):  # options such as [signed-by=...]
                    while words and not words[1].endswith("]"):
                        words.pop(1)
                    words.pop(1)
                if len(words) >= 4:
                    found.append((words[1], [words[2]], words[3:]))
    for path in sorted((APT_DIR / "sources.list.d").glob("*.sources")):
        for entry in _deb822_entries(path.read_text()):
            if entry.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in entry.get("types", "").split():
                continue
            suites = entry.get("suites", "").split()
            components = entry.get("components", "").split()
            found.extend((uri, suites, components) for uri in entry.get("uris", "").split())
    return found


def main(argv: list[str]) -> int:
    suite = argv[1] if len(argv) > 1 else "bookworm"
    for uri, suites, components in _candidates():
        if suite in suites and "main" in components:
            print(uri.rstrip("/"))
            return 0
    print(f"no 'deb' source for {suite!r} with component 'main' in {APT_DIR}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
