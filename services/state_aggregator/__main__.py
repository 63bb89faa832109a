"""``python -m services.state_aggregator``: check the configuration, then become the gunicorn
master (see ``shared.serve``: the app is loaded in the worker only)."""

from shared.config import load_config
from shared.processes import STATE_AGGREGATOR
from shared.serve import serve


def main() -> None:
    settings, _ = load_config(STATE_AGGREGATOR.name)
    serve(STATE_AGGREGATOR, bind=f"{settings.service_host}:{settings.state_aggregator_port}",
          threads=16)


if __name__ == "__main__":
    main()
