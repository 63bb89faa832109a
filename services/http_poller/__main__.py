"""``python -m services.http_poller``: check the configuration, wait for the aggregator, then
become the gunicorn master (see ``shared.serve``: the app is loaded in the worker only)."""

from shared.config import load_config, wait_for_health
from shared.processes import HTTP_POLLER
from shared.serve import serve


def main() -> None:
    settings, _ = load_config(HTTP_POLLER.name)
    wait_for_health([settings.state_aggregator])
    serve(HTTP_POLLER, bind=f"{settings.service_host}:{settings.http_poller_port}")


if __name__ == "__main__":
    main()
