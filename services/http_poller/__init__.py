"""The HTTP poller: polls HTTP sensors; later also finds, provisions and ingests ESP32 probes."""
