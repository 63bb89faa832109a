"""Home Assistant MQTT discovery without MQTT: the payload builder, its device-class tables and
the retained-topic ledger. ``connector/features/discovery.py`` publishes what they produce."""
