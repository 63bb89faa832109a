"""``python -m services.state_aggregator``: serve the aggregator under gunicorn."""

from shared.config import load_config
from shared.serve import serve

from .app import create_app


def main() -> None:
    settings, _ = load_config("state-aggregator")
    serve(create_app, bind=f"{settings.service_host}:{settings.state_aggregator_port}",
          name="state-aggregator", threads=16)


if __name__ == "__main__":
    main()
