"""``python -m connector``: run the MQTT bridge for ``INSTANCE_NAME``."""

from shared.serve import load_config, wait_for_health

from .bridge import Bridge


def main() -> None:
    settings, instance = load_config("mqtt-bridge")
    wait_for_health([settings.state_aggregator])
    Bridge(settings, instance).run_forever()


if __name__ == "__main__":
    main()
