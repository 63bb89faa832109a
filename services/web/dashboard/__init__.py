"""The dashboard on the LAN port (issue 13): server-rendered pages of the devices, the hub and
master control, kept live by Server-Sent Events from the aggregator's change log. ``install``
adds it to the web program's app; the feed starts in the gunicorn worker only."""

from __future__ import annotations

import logging

from flask import Flask

from shared.rest import RestClient
from shared.settings import Settings

from . import manage, probes, sensor  # noqa: F401  (their routes join the blueprint)
from .auth import Keys
from .feed import Feed
from .routes import Dashboard, bp

log = logging.getLogger(__name__)
# Threads no live view may take: the probe and master API always have these.
API_THREADS = 2


def build_dashboard(settings: Settings, aggregator: RestClient) -> Dashboard:
    key = settings.master_api_key.get_secret_value() if settings.master_api_key else None
    streams = min(settings.dashboard_streams, max(1, settings.web_threads - API_THREADS))
    if streams < settings.dashboard_streams:
        log.warning("DASHBOARD_STREAMS=%d leaves the LAN API too few of WEB_THREADS=%d; "
                    "using %d", settings.dashboard_streams, settings.web_threads, streams)
    # One client for the feed's long poll and the pages: a RestClient keeps one connection per
    # thread, so the 20 s waits of the feed's thread never hold up a page.
    return Dashboard(feed=Feed(aggregator), keys=Keys(key, auth_required=settings.dashboard_auth),
                     aggregator=aggregator, run_dir=settings.hub_run_dir,
                     streams=streams,
                     command_timeout_max=settings.command_timeout_max)


def install(app: Flask, dashboard: Dashboard | None) -> None:
    """Register the pages; without a ``dashboard`` they answer 503 (an app built for tests of the
    probe API alone)."""
    if dashboard is not None:
        dashboard.keys.configure(app)
        app.extensions["dashboard"] = dashboard
    app.register_blueprint(bp)


__all__ = ["Dashboard", "build_dashboard", "install"]
