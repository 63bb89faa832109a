"""``python -m connector``: run the MQTT bridge for ``INSTANCE_NAME``."""

import gc

from shared.config import load_config, wait_for_health

from .bridge import Bridge


def main() -> None:
    settings, instance = load_config("mqtt-bridge")
    # The bridge allocates several objects per message (paho's message and its info with a
    # Condition): with the default threshold (700) the collector runs every few messages and
    # its older generations walk the whole mirror of device states. Collect less often, and
    # keep what is loaded at start out of the walk.
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    wait_for_health([settings.state_aggregator])
    Bridge(settings, instance).run_forever()


if __name__ == "__main__":
    main()
