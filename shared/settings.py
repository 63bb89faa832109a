"""Process settings from the environment (the IoT2mqtt variables plus our own), one pydantic
model for every process. ``load_settings`` turns a bad value into a ``ConfigError`` that names
the variable."""

from __future__ import annotations

import os
import re
import time
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError
from shared.internal import load_secret
from shared.processes import COMMAND_TIMEOUT_MAX_S
from shared.topics import validate_base_topic, validate_id

RATE_LIMIT_RE = re.compile(r"\s*[1-9][0-9]*\s*(/|per)\s*([1-9][0-9]*\s*)?"
                           r"(second|minute|hour|day)s?\s*", re.IGNORECASE)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    # --- instance ------------------------------------------------------------------------------
    instance_name: str = "demo"
    instances_dir: Path = Path("instances")
    data_dir: Path = Path("data")
    mode: Literal["production", "development"] = "production"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] | None = None
    tz: str = "UTC"
    update_interval: float | None = Field(default=None, gt=0)
    cache_ttl: float | None = Field(default=None, ge=0)

    # --- MQTT ---------------------------------------------------------------------------------
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int | None = Field(default=None, ge=1, le=65535)  # see ``broker_port``
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    # TLS to the broker: its CA (else the system's), a client certificate and key for brokers
    # that want one, and no verification at all only when asked.
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_tls_insecure: bool = False
    mqtt_base_topic: str = "IoT2mqtt"
    mqtt_client_prefix: str = "sensor-hub"
    mqtt_qos: Literal[0, 1, 2] = 1
    mqtt_retain: bool = True
    mqtt_keepalive: int = Field(default=60, ge=5, le=65535)
    # state/{property} topics: when the value changed (and all on (re)connect, rebirth and for
    # a new device), for every reading, or never.
    mqtt_property_topics: Literal["changed", "all", "off"] = "changed"
    # Their QoS: 0 by default. They repeat what the state topic (MQTT_QOS) carries, and a QoS 1
    # message costs paho about twice the CPU of a QoS 0 one (the PUBACK's decoding and
    # bookkeeping): two of every three messages of a reading are property topics.
    mqtt_property_qos: Literal[0, 1, 2] = 0
    # Seconds; a command asking for a longer ``timeout`` is answered ``rejected``.
    command_timeout_max: float = Field(default=COMMAND_TIMEOUT_MAX_S, gt=0, le=3600)

    # --- the processes' local REST endpoints ----------------------------------------------------
    service_host: str = "127.0.0.1"
    serial_handler_port: int = Field(default=5001, ge=1, le=65535)
    http_poller_port: int = Field(default=5002, ge=1, le=65535)
    state_aggregator_port: int = Field(default=5003, ge=1, le=65535)
    serial_handler_url: str | None = None
    http_poller_url: str | None = None
    state_aggregator_url: str | None = None
    hub_run_dir: Path = Path("/tmp/sensor-hub")  # noqa: S108  (supervisord socket and status files)

    # --- HTTP poller and the LAN-facing probe API -------------------------------------------------
    poll_interval: float = Field(default=5.0, gt=0)
    poll_workers: int = Field(default=32, ge=1, le=512)
    host: str = "0.0.0.0"
    port: int = Field(default=8088, ge=1, le=65535)
    public_base: str | None = None
    server_token: SecretStr | None = None
    csv_file: Path = Path("temperature_log.csv")
    probe_interval_ms: int = Field(default=10_000, ge=500, le=86_400_000)  # given to probes
    probe_discovery: bool = True  # browse mDNS for probes; off where multicast cannot pass
    mdns_interfaces: str | None = None  # "all" (default) or comma-separated addresses
    # --- the web program (the LAN face on HOST:PORT) and run-time registration ------------------
    web_threads: int = Field(default=8, ge=1, le=256)  # requests served at once
    web_connections: int = Field(default=256, ge=1, le=100_000)  # open LAN connections at most
    web_request_timeout: float = Field(default=10.0, gt=0, le=600)  # a request must arrive within
    max_devices: int = Field(default=1000, ge=1, le=1_000_000)  # devices registered at run time
    # Per-client request budgets on the LAN port (``limits`` notation): pushing readings and
    # sensor check-ins; management (and the dashboard's login and forms).
    rate_limit_ingest: str = "1200/minute"
    rate_limit_management: str = "120/minute"

    # --- Home Assistant MQTT discovery ----------------------------------------------------------
    ha_discovery_prefix: str = "homeassistant"
    # entity: one config per entity (every release); device: one per device (2024.11+); off
    ha_discovery_mode: Literal["entity", "device", "off"] = "entity"
    ha_support_url: str | None = Field(default=None, pattern=r"^https?://")  # origin.support_url

    @field_validator("instance_name")
    @classmethod
    def _instance_id(cls, v: str) -> str:
        return validate_id(v, "INSTANCE_NAME")

    @field_validator("mqtt_base_topic")
    @classmethod
    def _base_topic(cls, v: str) -> str:
        return validate_base_topic(v)

    @field_validator("ha_discovery_prefix")
    @classmethod
    def _ha_prefix(cls, v: str) -> str:
        return validate_base_topic(v)

    @field_validator("rate_limit_ingest", "rate_limit_management")
    @classmethod
    def _rate_limit(cls, v: str) -> str:
        # A subset of the ``limits`` notation, checked without importing it (0.2 s and 1.5 MB in
        # every process; only the web program uses it).
        if not RATE_LIMIT_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a rate limit like '1200/minute' or '20 per second'")
        return v

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v: object) -> object:
        return v.upper() if isinstance(v, str) and v else (v or None)

    @field_validator("mqtt_username", "mqtt_password", "public_base", "server_token",
                     "mdns_interfaces", "ha_support_url", "mqtt_ca_file", "mqtt_cert_file",
                     "mqtt_key_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @model_validator(mode="after")
    def _tls_coherent(self) -> Settings:
        """TLS files without ``MQTT_TLS`` would be ignored without a word, and the broker
        reached in plain text: say so at start instead. A file that is not there either."""
        files = {"MQTT_CA_FILE": self.mqtt_ca_file, "MQTT_CERT_FILE": self.mqtt_cert_file,
                 "MQTT_KEY_FILE": self.mqtt_key_file}
        if not self.mqtt_tls:
            given = [name for name, path in files.items() if path is not None]
            if self.mqtt_tls_insecure:
                given.append("MQTT_TLS_INSECURE")
            if given:
                raise ValueError(f"{', '.join(given)} given but MQTT_TLS is not true")
            return self
        if self.mqtt_key_file is not None and self.mqtt_cert_file is None:
            raise ValueError("MQTT_KEY_FILE given without MQTT_CERT_FILE")
        for name, path in files.items():
            if path is not None and not path.is_file():
                raise ValueError(f"{name}: {path} is not a file")
        return self

    @property
    def broker_port(self) -> int:
        """``MQTT_PORT``, else the usual port: 8883 with TLS, 1883 without."""
        return self.mqtt_port or (8883 if self.mqtt_tls else 1883)

    @cached_property
    def effective_log_level(self) -> str:
        return self.log_level or ("DEBUG" if self.mode == "development" else "INFO")

    def _url(self, given: str | None, port: int) -> str:
        return (given or f"http://{self.service_host}:{port}").rstrip("/")

    @cached_property
    def serial_handler(self) -> str:
        return self._url(self.serial_handler_url, self.serial_handler_port)

    @cached_property
    def http_poller(self) -> str:
        return self._url(self.http_poller_url, self.http_poller_port)

    @cached_property
    def state_aggregator(self) -> str:
        return self._url(self.state_aggregator_url, self.state_aggregator_port)

    @cached_property
    def internal_secret(self) -> str:
        """The secret the internal REST asks for (``shared.internal``), made when missing;
        ``ConfigError`` when its file is not private to this user."""
        return load_secret(self.hub_run_dir)

    @property
    def instance_file(self) -> Path:
        return self.instances_dir / f"{self.instance_name}.json"

    # --- the aggregator's change log in memory (issue 14): bounded by count and by bytes ----------
    changelog_max: int = Field(default=100_000, ge=1000)  # changes kept at most
    changelog_max_mb: float = Field(default=16.0, ge=1)  # MB of their JSON at most

    # --- master control (sensors that phone home; issue 9) ----------------------------------------
    # Management routes need X-API-Key = MASTER_API_KEY; unset, they answer 503, never open.
    master_api_key: SecretStr | None = None
    master_check_in_interval: float = Field(default=60.0, gt=0, le=86400)
    master_max_commands: int = Field(default=100, ge=1, le=10_000)  # undelivered, per sensor
    master_command_ttl: float = Field(default=3600.0, gt=0)  # seconds, when a command names none
    master_db: Path = Path("master.db")  # under DATA_DIR unless absolute
    # Sensor tokens (LAN registration): their life, and how long the previous ones stay good
    # after a refresh or a new registration.
    sensor_token_ttl: float = Field(default=7 * 86400.0, ge=60, le=366 * 86400)
    sensor_token_overlap: float = Field(default=600.0, ge=0, le=86400)

    @field_validator("master_api_key", mode="before")
    @classmethod
    def _empty_key_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @property
    def master_db_path(self) -> Path:
        return self.data_dir / self.master_db

    # --- readings history (issue 11) --------------------------------------------------------------
    history_enabled: bool = True
    history_db: Path = Path("history.db")  # under DATA_DIR unless absolute
    history_max_mb: float = Field(default=0, ge=0)  # 0: no limit of its own, only the disk's
    # Percent of DATA_DIR's filesystem; past it the history is thinned evenly across time.
    disk_usage_threshold: float = Field(default=80.0, gt=0, le=100)
    history_check_interval: float = Field(default=300.0, gt=0, le=86400)  # seconds
    history_queue: int = Field(default=100_000, ge=100)  # readings waiting for the disk, at most

    # postgresql://user:password@host:port/dbname: the history lives on that server instead of
    # HISTORY_DB (docs: README "Readings history").
    database_url: SecretStr | None = None
    # Forwarding to a central store: unsynced readings go to POST {FORWARD_URL}/readings/bulk.
    forward_url: str | None = None
    forward_token: SecretStr | None = None
    forward_batch: int = Field(default=360, ge=1, le=1000)  # a sensor-hub takes 1,000 at most
    forward_retry_max: float = Field(default=60.0, gt=0, le=3600)  # seconds between retries, at most

    @property
    def history_db_path(self) -> Path:
        return self.data_dir / self.history_db

    @property
    def history_location(self) -> Path | str:
        """Where the history lives: the PostgreSQL URL when ``DATABASE_URL`` names one, else
        the SQLite file."""
        return self.database_url.get_secret_value() if self.database_url else self.history_db_path

    @field_validator("database_url", "forward_url", "forward_token", mode="before")
    @classmethod
    def _empty_url_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL (unset: the history is the SQLite "
                             "file HISTORY_DB under DATA_DIR)")
        return v

    @field_validator("forward_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.startswith(("http://", "https://")):
                raise ValueError("must be an http:// or https:// URL, e.g. "
                                 "http://central:8088/api for another sensor-hub")
            v = v.rstrip("/")
        return v

    # --- the durable change log (issue 11: nothing is lost) --------------------------------------
    outbox_enabled: bool = True
    outbox_db: Path = Path("outbox.db")  # under DATA_DIR unless absolute
    outbox_max_mb: float = Field(default=256.0, gt=0)  # unpublished changes kept, at most
    outbox_min_free_mb: float = Field(default=64.0, ge=0)  # free disk below which it thins
    outbox_check_interval: float = Field(default=2.0, gt=0, le=3600)  # seconds
    # Published changes kept for the dashboard's reconnecting browsers (their Last-Event-ID).
    outbox_replay: int = Field(default=100_000, ge=0, le=10_000_000)

    @property
    def outbox_db_path(self) -> Path:
        return self.data_dir / self.outbox_db

    # --- the dashboard on the LAN port (issue 13) ---------------------------------------------------
    dashboard_auth: bool = False  # true: reading the dashboard needs the management key too
    # Live (SSE) streams at once; each holds one of the WEB_THREADS while open, so this stays
    # below them and the LAN API keeps its threads (past it: 503 and the page retries later).
    dashboard_streams: int = Field(default=4, ge=1, le=1000)


def load_settings() -> Settings:
    """Settings from the environment; a bad variable raises ``ConfigError`` naming it."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" if err["loc"]
            else err["msg"].removeprefix("Value error, ") for err in exc.errors()
        )
        raise ConfigError(f"invalid environment: {problems}") from exc
    # TZ is honoured for log timestamps and the simulators' daily cycle; the wire stays UTC.
    os.environ["TZ"] = settings.tz
    time.tzset()
    return settings
