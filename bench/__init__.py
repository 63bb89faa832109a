"""The benchmark harness: runs the real instance (real supervisord, real processes, a real
mosquitto on 127.0.0.1) and measures it against the paho ceiling measured in the same run.

``python -m bench`` (or ``./hub bench``); see ``bench/README.md``.
"""
