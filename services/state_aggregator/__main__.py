"""``python -m services.state_aggregator``: check the configuration, then become the gunicorn
master (see ``shared.serve``: the app is loaded in the worker only)."""

from shared.processes import STATE_AGGREGATOR
from shared.serve import Spec, run


def prepare() -> Spec:
    # Imported here: the gunicorn master runs this module too and must not hold it.
    from shared.config import load_config

    settings, _ = load_config(STATE_AGGREGATOR.name)
    return Spec(bind=f"{settings.service_host}:{settings.state_aggregator_port}",
                port_setting="STATE_AGGREGATOR_PORT", threads=16)


if __name__ == "__main__":
    run(STATE_AGGREGATOR, prepare)
