"""The device's ``/main.py``: MicroPython runs it after ``boot.py``. Copied to the root of the
flash (see firmware/README.md); the package itself lives in ``/firmware``."""

from firmware.device import main

main()
