"""``python -m services.http_poller``: serve the HTTP poller under gunicorn."""

from shared.config import load_config, wait_for_health
from shared.serve import serve

from .app import create_app


def main() -> None:
    settings, _ = load_config("http-poller")
    wait_for_health([settings.state_aggregator])
    serve(create_app, bind=f"{settings.service_host}:{settings.http_poller_port}",
          name="http-poller")


if __name__ == "__main__":
    main()
