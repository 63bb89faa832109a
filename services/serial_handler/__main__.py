"""``python -m services.serial_handler``: check the configuration, wait for the aggregator, then
become the gunicorn master (see ``shared.serve``: the app is loaded in the worker only)."""

from shared.processes import SERIAL_HANDLER
from shared.serve import Spec, run


def prepare() -> Spec:
    # Imported here: the gunicorn master runs this module too and must not hold them.
    from shared.config import load_config, wait_for_health

    settings, _ = load_config(SERIAL_HANDLER.name)
    wait_for_health([settings.state_aggregator], secret=settings.internal_secret)
    return Spec(bind=f"{settings.service_host}:{settings.serial_handler_port}",
                port_setting="SERIAL_HANDLER_PORT")


if __name__ == "__main__":
    run(SERIAL_HANDLER, prepare)
