"""``python -m connector``: run the MQTT bridge for ``INSTANCE_NAME``."""

import gc
import sys

from shared.config import CONFIG_ERROR_EXIT, load_config, wait_for_health
from shared.errors import ConfigError


def main() -> None:
    settings, instance = load_config("mqtt-bridge")
    # paho and the bridge only after the configuration check: a bad one then exits well
    # within supervisord's startsecs and ends FATAL instead of in a restart loop.
    from .bridge import Bridge

    # The bridge allocates several objects per message (paho's message and its info with a
    # Condition): with the default threshold (700) the collector runs every few messages and
    # its older generations walk the whole mirror of device states. Collect less often, and
    # keep what is loaded at start out of the walk.
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    wait_for_health([settings.state_aggregator], secret=settings.internal_secret)
    try:
        bridge = Bridge(settings, instance)
    except ConfigError as exc:  # a TLS file that is not a certificate or key
        print(f"mqtt-bridge: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(CONFIG_ERROR_EXIT) from exc
    del instance  # the bridge keeps what it needs of it (see Bridge.__init__)
    bridge.run_forever()


if __name__ == "__main__":
    main()
