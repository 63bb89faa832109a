"""``python -m services.http_poller``: serve the HTTP poller under gunicorn."""

from shared.serve import load_config, serve, wait_for_health

from .app import create_app


def main() -> None:
    settings, _ = load_config("http-poller")
    wait_for_health([settings.state_aggregator])
    serve(create_app, bind=f"{settings.service_host}:{settings.http_poller_port}",
          name="http-poller")


if __name__ == "__main__":
    main()
