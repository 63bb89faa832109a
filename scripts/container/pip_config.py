"""Mirror this machine's pip configuration into a `podman build`, without naming any host.

pip inside the build must use the same indexes, find-links, constraints and CA bundle as pip on
the host: a machine may sit behind a TLS-inspecting egress, use a private mirror, or keep a local
wheel store. This reads the host's effective configuration (`pip config list`, environment
variables included), writes it as a pip.conf into OUT_DIR and prints one `podman build` argument
per line: a read-only bind mount of that pip.conf at /etc/pip.conf, and one for every local path
the configuration refers to (mounted at the same path, so the file:// URLs keep working).

Usage: python3 pip_config.py OUT_DIR
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

# Options whose values name files, directories or file:// URLs that must exist inside the build.
PATH_OPTIONS = {"index-url", "extra-index-url", "find-links", "cert", "client-cert", "constraint"}
INDEX_OPTIONS = {"index-url", "extra-index-url"}
# Options that only make sense for the host itself.
SKIP_OPTIONS = {"cache-dir", "log", "target", "prefix", "root", "src", "user", "require-virtualenv"}


def effective_options() -> dict[tuple[str, str], str]:
    """{(section, option): value} as pip on this machine would apply it; environment wins."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        check=False,
        capture_output=True,
        text=True,
    )
    if listed.returncode != 0:
        # No pip beside this Python: the build gets pip's defaults (and the base image's CAs).
        print(f"pip_config: `pip config list` failed: {listed.stderr.strip()}", file=sys.stderr)
        return {}
    listing = listed.stdout
    files: dict[tuple[str, str], str] = {}
    env: dict[tuple[str, str], str] = {}
    for line in listing.splitlines():
        name, sep, raw = line.partition("=")
        if not sep:
            continue
        value = ast.literal_eval(raw)
        section, _, option = name.rpartition(".")
        if option in SKIP_OPTIONS:
            continue
        if section == ":env:":
            env[("global", option)] = value
        else:
            files[(section, option)] = value
    return files | env


def local_paths(option: str, value: str) -> list[Path]:
    """Existing local paths a value refers to; an index's parent too (its links are relative)."""
    paths = []
    for token in value.split():
        parsed = urlparse(token)
        if parsed.scheme == "file":
            path = Path(unquote(parsed.path))
        elif parsed.scheme == "" and token.startswith("/"):
            path = Path(token)
        else:
            continue
        if option in INDEX_OPTIONS and path.name == "simple":
            path = path.parent
        if path.exists():
            paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    out_dir = Path(argv[1])
    options = effective_options()
    sections: dict[str, list[str]] = {}
    mounts: set[Path] = set()
    for (section, option), value in sorted(options.items()):
        sections.setdefault(section, []).append(f"{option} = {value}")
        if option in PATH_OPTIONS:
            mounts.update(local_paths(option, value))
    text = "".join(
        f"[{section}]\n" + "".join(f"{line}\n" for line in lines) + "\n"
        for section, lines in sections.items()
    )
    conf = out_dir / "pip.conf"
    conf.write_text("# pip settings of the build host, mirrored by pip_config.py\n" + text)
    print(f"--volume={conf}:/etc/pip.conf:ro")
    for path in sorted(mounts):
        # A mount inside another mount is redundant (and podman would refuse the duplicate).
        if not any(other != path and other in path.parents for other in mounts):
            print(f"--volume={path}:{path}:ro")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
