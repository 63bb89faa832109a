"""``python -m services.http_poller``: check the configuration, wait for the aggregator, then
become the gunicorn master (see ``shared.serve``: the app is loaded in the worker only)."""

from shared.processes import HTTP_POLLER
from shared.serve import Spec, run


def prepare() -> Spec:
    # Imported here: the gunicorn master runs this module too and must not hold them.
    from shared.config import load_config, wait_for_health

    settings, _ = load_config(HTTP_POLLER.name)
    wait_for_health([settings.state_aggregator], secret=settings.internal_secret)
    return Spec(bind=f"{settings.service_host}:{settings.http_poller_port}",
                port_setting="HTTP_POLLER_PORT")


if __name__ == "__main__":
    run(HTTP_POLLER, prepare)
