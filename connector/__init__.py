"""The MQTT bridge: speaks the IoT2mqtt v1 contract for one instance. The only code that
touches paho (through ``shared.mqtt``)."""
