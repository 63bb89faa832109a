"""``python -m services.serial_handler``: serve the serial handler under gunicorn."""

from shared.config import load_config, wait_for_health
from shared.serve import serve

from .app import create_app


def main() -> None:
    settings, _ = load_config("serial-handler")
    wait_for_health([settings.state_aggregator])
    serve(create_app, bind=f"{settings.service_host}:{settings.serial_handler_port}",
          name="serial-handler")


if __name__ == "__main__":
    main()
