"""Cloud Functions entry points. Thin by design: wrap the event, call one service, return.

Each function is deployed on its own (``--entry-point``); the services import what they need on
first use, so a function loads only its own dependencies. Raising means "retry me" to the
platform: only retryable errors escape the services.
"""

from typing import Any

import functions_framework

from handlers.entry import functions as dispatch
from handlers.launch.runtime import default_runtime


@functions_framework.cloud_event
def on_object_finalized(cloud_event: Any) -> None:
    """Eventarc ``google.cloud.storage.object.v1.finalized``: launch the matching pipelines."""
    dispatch.handle_object_finalized(cloud_event, default_runtime())


@functions_framework.cloud_event
def on_message(cloud_event: Any) -> None:
    """Eventarc Pub/Sub ``messagePublished``: messages, storage notifications, completions."""
    dispatch.handle_message(cloud_event, default_runtime())


@functions_framework.cloud_event
def on_job_status(cloud_event: Any) -> None:
    """Eventarc ``google.cloud.dataflow.job.v1beta3.statusChanged``: complete a run at once."""
    dispatch.handle_job_status(cloud_event, default_runtime())


@functions_framework.cloud_event
def check_runs(cloud_event: Any) -> None:
    """Cloud Scheduler -> Pub/Sub, every minute: the sweep over active runs."""
    dispatch.handle_sweep(cloud_event, default_runtime())


@functions_framework.http
def api(request: Any) -> Any:
    """The REST trigger API: POST /runs, GET /runs/{key}, POST /runs/{key}:cancel, GET /pipelines."""
    from handlers.entry import api as rest

    return rest.handle(request, default_runtime())
