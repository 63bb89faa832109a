"""The library every sensor-hub process imports: settings, payload models, topics, logging,
the MQTT client wrapper, REST helpers and errors."""

__version__ = "0.1.0"
CONNECTOR_TYPE = "sensor-hub"
