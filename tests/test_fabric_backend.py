"""Specification of the Fabric backend (handlers/backends/fabric/jobs.py) against the local Fabric emulator.

GIVEN / WHEN / THEN, asserting what reached the emulator (request bodies, token grants, instances
created) rather than which function was called. Pipelines are Fabric items registered in the
emulator; credentials are fake and passed as an explicit env mapping (see FabricHarness).
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from handlers.backends import registry
from handlers.backends.contract import JobRef, LaunchRequest, RunState
from handlers.backends.fabric.entra import EntraRejected, TokenProvider
from handlers.backends.fabric.jobs import DEDUPED_REASON, Fabric, check_options, fabric_error
from handlers.core import logs, retry
from handlers.core.errors import AlreadyExists, BackendRejected, BackendUnavailable, ConfigError, NotFound
from handlers.model.config import Pipeline, build_config
from local.emulators.base import ServerHandle
from local.emulators.fabric import serve
from local.kits.fabric import FabricHarness
from tests.support.emulator_client import emulator_fixture

WS = "0f1e2d3c-4b5a-4697-8877-665544332211"
ITEM = "d0d0d0d0-1111-4222-8333-444444444444"


emulator = emulator_fixture(serve)


@pytest.fixture
def fabric(emulator: ServerHandle) -> Iterator[FabricHarness]:
    harness = FabricHarness(emulator)
    harness.reset()
    harness.control("settings", {"token_lifetime_seconds": 3600, "dedupe": True, "page_size": 50})
    yield harness
    harness.reset()


def pipeline(options: dict[str, Any], name: str = "sales") -> Pipeline:
    opts = {k: v for k, v in options.items() if k != "backend"}
    return Pipeline(name=name, backend="fabric", project="p", region="r", options=opts)


def request_for(
    p: Pipeline, run_key: str = "run-1", requested_at: dt.datetime | None = None, **parameters: str
) -> LaunchRequest:
    return LaunchRequest(
        run_key=run_key,
        job_name=f"{p.name}-{run_key}",
        pipeline=p,
        parameters=parameters,
        requested_at=requested_at or dt.datetime.now(dt.UTC),
    )


def run_bodies(fabric: FabricHarness) -> list[Any]:
    return [launch["body"] for launch in fabric.launches()]


def emulator_now(fabric: FabricHarness) -> dt.datetime:
    seconds = fabric.control("clock", method="GET")["epoch_seconds"]
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def register_pipeline_item(fabric: FabricHarness, item: str, **behavior: Any) -> dict[str, Any]:
    fabric.control(
        "items",
        {
            "workspace": fabric.workspace,
            "item": item,
            "type": "DataPipeline",
            "behavior": {"not_started_seconds": 1, "run_seconds": 3, **behavior},
        },
    )
    return {"workspace": fabric.workspace, "item": item, "job_type": "Pipeline"}


# ------------------------------------------------------------------------------------------ config


def test_a_dataflow_needs_only_its_workspace_and_item() -> None:
    assert check_options({"workspace": WS, "item": ITEM}) == []


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"item": ITEM}, "workspace: is required"),
        ({"workspace": WS, "item": ""}, "item: is required: the Fabric item"),
        ({"workspace": WS, "item": ITEM, "item_type": "Report"}, "item_type: must be one of"),
        ({"workspace": WS, "item": ITEM, "definition": "/abs/path"}, "definition: must be a folder path"),
        (
            {"workspace": WS, "item": ITEM, "auth": "service_principal"},
            "auth: service_principal cannot run a Dataflow",
        ),
        (
            {"workspace": WS, "item": ITEM, "job_type": "Refresh", "auth": "service_principal"},
            "auth: service_principal",
        ),
        (
            {"workspace": WS, "item": ITEM, "auth": "password"},
            "auth: must be one of delegated, service_principal",
        ),
        (
            {"workspace": WS, "item": ITEM, "job_type": "Pipeline", "execute_option": "SkipApplyChanges"},
            "execute_option: only a Dataflow Gen2 run",
        ),
        ({"workspace": WS, "item": ITEM, "execute_option": "Always"}, "execute_option: must be one of"),
        (
            {"workspace": WS, "item": ITEM, "credentials": "fabric-sales"},
            "credentials: must be an env var name prefix",
        ),
        ({"workspace": WS, "item": ITEM, "job_type": "run notebook"}, "job_type: must be a Fabric job type"),
    ],
)
def test_each_config_mistake_is_named(options: dict[str, Any], field: str) -> None:
    problems = check_options(options)
    assert any(p.startswith(field) for p in problems), problems


def test_a_fabric_pipeline_loads_from_the_routing_config_and_mistakes_are_reported() -> None:
    doc = {
        "settings": {"project": "p", "region": "europe-west1", "ledger": {"bucket": "ledger"}},
        "pipelines": {
            "sales": {
                "backend": "fabric",
                "workspace": WS,
                "item": ITEM,
                "execute_option": "ApplyChangesIfNeeded",
                "credentials": "FABRIC_SALES",
                "parameters": {"Region": "EU"},
            }
        },
        "triggers": {"landing": {"storage": {"bucket": "in"}, "pipeline": "sales"}},
    }
    cfg = build_config(doc)
    assert cfg.pipelines["sales"].options["credentials"] == "FABRIC_SALES"
    bad = copy.deepcopy(doc)
    bad["pipelines"]["sales"] |= {"auth": "service_principal", "workspaze": WS}
    with pytest.raises(ConfigError) as caught:
        build_config(bad)
    text = "\n".join(caught.value.problems)
    assert "pipeline 'sales': auth: service_principal cannot run a Dataflow Gen2" in text
    assert "unknown field 'workspaze'" in text


def test_the_registry_builds_a_fabric_backend_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FABRIC_API_ENDPOINT", "http://127.0.0.1:9/")
    backend = registry.spec("fabric").build()
    assert isinstance(backend, Fabric) and backend.endpoint == "http://127.0.0.1:9"
    assert Fabric(endpoint=None).endpoint == "http://127.0.0.1:9"
    monkeypatch.delenv("FABRIC_API_ENDPOINT")
    assert Fabric().endpoint == "https://api.fabric.microsoft.com"


# ------------------------------------------------------------------------------------------ launch


def test_a_dataflow_run_sends_its_parameters_as_execution_data(fabric: FabricHarness) -> None:
    # GIVEN a Dataflow Gen2 pipeline that applies pending changes first
    p = pipeline({**fabric.pipeline_options("sales"), "execute_option": "ApplyChangesIfNeeded"})
    # WHEN a run with two parameters is launched
    ref = fabric.backend().launch(request_for(p, Region="EU", Day="2026-03-13"))
    # THEN the emulator received the spec's Execute body, and the ref is the instance of the Location
    assert run_bodies(fabric) == [
        {
            "executionData": {
                "executeOption": "ApplyChangesIfNeeded",
                "parameters": [
                    {"parameterName": "Region", "type": "Automatic", "value": "EU"},
                    {"parameterName": "Day", "type": "Automatic", "value": "2026-03-13"},
                ],
            }
        }
    ]
    [instance] = fabric.instances()
    assert ref.backend == "fabric" and ref.job_id == instance["id"] and ref.job_name == "sales-run-1"
    assert ref.extra["location"].endswith(f"/jobs/instances/{instance['id']}")
    assert dict(ref.extra) | {"location": ""} == {
        "workspace": fabric.workspace,
        "item": fabric.item_id("sales"),
        "job_type": "Execute",
        "location": "",
        "auth": "delegated",
        "credentials": "FABRIC",
    }
    assert instance["principal"]["app_only"] is False  # a delegated (user) token ran it
    assert JobRef.from_json(json.loads(json.dumps(ref.to_json()))) == ref  # the ledger can store it


def test_a_run_without_parameters_sends_an_empty_body(fabric: FabricHarness) -> None:
    fabric.backend().launch(request_for(pipeline(fabric.pipeline_options("sales"))))
    assert run_bodies(fabric) == [{}]


def test_a_pipeline_run_uses_a_service_principal_and_a_parameter_object(fabric: FabricHarness) -> None:
    p = pipeline(register_pipeline_item(fabric, "b1b1b1b1-2222-4333-8444-555555555555"))
    fabric.backend().launch(request_for(p, day="2026-03-13"))
    # today's spec shape: the top-level Parameter list of RunOnDemandItemJobRequest
    assert run_bodies(fabric) == [{"parameters": [{"name": "day", "type": "Text", "value": "2026-03-13"}]}]
    assert fabric.instances()[0]["parameters"] == {"day": "2026-03-13"}
    assert fabric.instances()[0]["principal"]["app_only"] is True


def test_a_notebook_run_sends_typed_parameters(fabric: FabricHarness) -> None:
    item = "c2c2c2c2-3333-4444-8555-666666666666"
    fabric.control("items", {"workspace": fabric.workspace, "item": item, "type": "Notebook"})
    # GIVEN no job_type: a Notebook item runs RunNotebook
    p = pipeline({"workspace": fabric.workspace, "item": item, "item_type": "Notebook"})
    fabric.backend().launch(request_for(p, day="2026-03-13"))
    assert run_bodies(fabric) == [{"parameters": [{"name": "day", "type": "Text", "value": "2026-03-13"}]}]
    assert fabric.instances()[0]["jobType"] == "RunNotebook"
    assert fabric.instances()[0]["parameters"] == {"day": "2026-03-13"}


# ------------------------------------------------------------------------------------------ status


def test_a_run_goes_pending_running_succeeded_with_fabric_times(fabric: FabricHarness) -> None:
    backend = fabric.backend()
    ref = backend.launch(request_for(pipeline(fabric.pipeline_options("sales"))))
    seen = []
    for step in (0, 1.5, 3):
        fabric.advance(step)
        status = backend.status(ref)
        seen.append((status.state, status.raw_state))
    assert seen == [
        (RunState.PENDING, "NotStarted"),
        (RunState.RUNNING, "InProgress"),
        (RunState.SUCCEEDED, "Completed"),
    ]
    assert status.start_time is not None and status.end_time is not None
    assert status.end_time - status.start_time == dt.timedelta(seconds=4)
    assert status.reason is None


def test_a_failed_run_reports_fabric_failure_reason(fabric: FabricHarness) -> None:
    # GIVEN a dataflow whose runs fail
    fabric.set_outcome("sales", succeed=False, reason="Mashup evaluation failed: column Region not found")
    backend = fabric.backend()
    ref = backend.launch(
        request_for(pipeline({"workspace": fabric.workspace, "item": fabric.item_id("sales")}))
    )
    fabric.advance(5)
    status = backend.status(ref)
    assert status.state is RunState.FAILED
    assert status.reason == "JobInstanceFailed: Mashup evaluation failed: column Region not found"


def test_a_deduped_run_is_cancelled_with_the_documented_reason(fabric: FabricHarness) -> None:
    backend = fabric.backend()
    p = pipeline(fabric.pipeline_options("sales"))
    first = backend.launch(request_for(p, "run-1"))
    second = backend.launch(request_for(p, "run-2"))
    status = backend.status(second)
    assert (status.state, status.raw_state, status.reason) == (RunState.CANCELLED, "Deduped", DEDUPED_REASON)
    assert status.state.terminal and status.end_time is not None
    assert backend.status(first).state is RunState.PENDING


def test_an_unknown_status_value_is_not_terminal(fabric: FabricHarness) -> None:
    from handlers.backends.fabric.jobs import normalize_state

    assert normalize_state("Paused") is RunState.PENDING and not normalize_state("Paused").terminal


# ------------------------------------------------------------------------------------------ cancel


def test_cancel_stops_a_running_instance_and_ignores_a_finished_one(fabric: FabricHarness) -> None:
    backend = fabric.backend()
    p = pipeline(fabric.pipeline_options("sales"))
    ref = backend.launch(request_for(p))
    fabric.advance(1.5)
    backend.cancel(ref)
    assert backend.status(ref).state is RunState.CANCELLED
    backend.cancel(ref, drain=True)  # already finished: 400 JobAlreadyCompleted is not an error
    cancels = [r for r in fabric.requests_received() if r["path"].endswith("/cancel")]
    assert [r["status"] for r in cancels] == [202, 400]


# ------------------------------------------------------------------------------------- error policy


def test_throttling_is_retried_after_at_least_retry_after(fabric: FabricHarness) -> None:
    backend = fabric.backend()
    request = request_for(pipeline(fabric.pipeline_options("sales")))
    fabric.inject("launch", 429, retry_after=0.2)
    with pytest.raises(BackendUnavailable) as caught:
        backend.launch(request)
    assert caught.value.retry_after == pytest.approx(0.2)
    fabric.inject("launch", 429, retry_after=0.2)
    started = time.monotonic()
    ref = retry.call(lambda: backend.launch(request), budget_seconds=5, initial=0.01, maximum=1)
    waited = time.monotonic() - started
    assert waited >= 0.2
    assert [launch["status"] for launch in fabric.launches()] == [429, 429, 202]
    assert [i["id"] for i in fabric.instances()] == [ref.job_id]


def test_a_lost_launch_answer_is_found_again_and_never_launched_twice(fabric: FabricHarness) -> None:
    # GIVEN the run request reaches Fabric but its answer is lost
    backend = fabric.backend()
    request = request_for(pipeline(fabric.pipeline_options("sales")), requested_at=emulator_now(fabric))
    fabric.inject("launch", 503, after_effect=True)
    uncertain = False

    def attempt() -> JobRef:  # what handlers/launch/service.py does: after a transient error, look first
        nonlocal uncertain
        if uncertain and (found := backend.find(request)) is not None:
            return found
        try:
            return backend.launch(request)
        except BackendUnavailable:
            uncertain = True
            raise

    # WHEN the launch is retried
    ref = retry.call(attempt, budget_seconds=5, initial=0.01, maximum=0.05)
    # THEN the one instance Fabric started is adopted, and no second run was requested
    [instance] = fabric.instances()
    assert ref.job_id == instance["id"]
    assert [launch["status"] for launch in fabric.launches()] == [503]
    assert fabric.runs_started() == 1


def test_find_only_matches_instances_since_the_first_claim(fabric: FabricHarness) -> None:
    p = pipeline(fabric.pipeline_options("sales"))
    other_process = fabric.backend()
    old = other_process.launch(request_for(p, "earlier-run"))
    fabric.advance(120)
    claimed = emulator_now(fabric)
    backend = fabric.backend()
    # nothing started since this run's claim (the old run is 2 minutes older)
    assert backend.find(request_for(p, "run-2", requested_at=claimed)) is None
    # an instance started after the claim (say by a launch whose answer was lost) is found
    fabric.inject("launch", 503, after_effect=True)
    with pytest.raises(BackendUnavailable):
        other_process.launch(request_for(p, "run-2", requested_at=claimed))
    found = backend.find(request_for(p, "run-2", requested_at=claimed))
    assert found is not None and found.job_id != old.job_id
    assert found.extra["workspace"] == fabric.workspace and found.extra["job_type"] == "Execute"


def test_find_never_adopts_an_instance_this_process_launched_for_another_run(fabric: FabricHarness) -> None:
    p = pipeline(fabric.pipeline_options("sales"))
    backend = fabric.backend()
    mine = backend.launch(request_for(p, "run-1"))
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    assert backend.find(request_for(p, "run-2", requested_at=long_ago)) is None
    assert backend.find(request_for(p, "run-1", requested_at=long_ago)) == mine


def test_find_follows_continuation_pages(fabric: FabricHarness) -> None:
    fabric.control("settings", {"page_size": 2, "dedupe": False})
    p = pipeline(fabric.pipeline_options("sales"))
    since = emulator_now(fabric)
    launcher = fabric.backend()
    for key in ("a", "b", "c", "d", "e"):
        launcher.launch(request_for(p, key))
    newest = fabric.instances()[-1]["id"]
    found = fabric.backend().find(request_for(p, "f", requested_at=since))
    assert found is not None and found.job_id == newest
    lists = [
        r
        for r in fabric.requests_received()
        if r["method"] == "GET" and r["path"].endswith("/jobs/instances")
    ]
    assert len(lists) == 3 and lists[1]["query"].get("continuationToken")


def test_a_listing_page_failing_for_a_moment_is_retried_on_its_own_within_its_budget(
    fabric: FabricHarness,
) -> None:
    fabric.control("settings", {"page_size": 2, "dedupe": False})
    p = pipeline(fabric.pipeline_options("sales"))
    since = emulator_now(fabric)
    launcher = fabric.backend()
    for key in ("a", "b", "c"):
        launcher.launch(request_for(p, key))
    newest = fabric.instances()[-1]["id"]
    # WHEN the listing answers 503 twice before it answers
    fabric.inject("find", 503, times=2)
    found = fabric.backend().find(request_for(p, "d", requested_at=since))
    # THEN the page was asked for again, and the find saw every page
    assert found is not None and found.job_id == newest
    # AND a listing still failing when the page's budget is spent is a retryable error, not "not found"
    fabric.inject("find", 503, times=50)
    hasty = Fabric(
        session=requests.Session(), endpoint=fabric.url, tokens=launcher._tokens, page_retry_seconds=0.3
    )
    with pytest.raises(BackendUnavailable):
        hasty.find(request_for(p, "d", requested_at=since))


def test_without_a_claim_time_find_only_adopts_an_active_instance(fabric: FabricHarness) -> None:
    p = pipeline(fabric.pipeline_options("sales"))
    fabric.backend().launch(request_for(p, "run-1"))
    undated = LaunchRequest(run_key="run-2", job_name="sales-run-2", pipeline=p, parameters={})
    assert fabric.backend().find(undated) is not None
    fabric.advance(10)
    assert fabric.backend().find(undated) is None  # never an old finished run


def test_an_expired_token_is_refreshed_once_and_the_call_retried(fabric: FabricHarness) -> None:
    backend = fabric.backend()
    ref = backend.launch(request_for(pipeline(fabric.pipeline_options("sales"))))
    # WHEN every token expires (revoked, or the clock passed expiry) before the next poll
    assert fabric.expire_credentials() is True
    status = backend.status(ref)
    # THEN the poll failed once with 401, one new token was fetched, and the retry succeeded
    assert status.state is RunState.PENDING
    received = fabric.requests_received()
    grants = [r for r in received if r["path"].endswith("/oauth2/v2.0/token")]
    polls = [r["status"] for r in received if r["method"] == "GET" and "/jobs/instances/" in r["path"]]
    assert len(grants) == 2 and polls == [401, 200]


def test_a_token_refused_twice_is_reported_not_looped(fabric: FabricHarness) -> None:
    fabric.control("settings", {"token_lifetime_seconds": 0})
    with pytest.raises(BackendRejected) as caught:
        fabric.backend().launch(request_for(pipeline(fabric.pipeline_options("sales"))))
    assert caught.value.status == 401 and caught.value.reason == "TokenExpired"
    # the first call (the dataflow's parameters, read before any run) was refused twice, then it stopped
    assert [r["status"] for r in fabric.requests_received() if r["path"].endswith("/parameters")] == [
        401,
        401,
    ]
    assert fabric.launches() == [] and fabric.runs_started() == 0


def test_a_wrong_client_secret_is_permanent_and_names_the_env_var_not_the_secret(
    fabric: FabricHarness,
) -> None:
    p = pipeline(register_pipeline_item(fabric, "b1b1b1b1-2222-4333-8444-555555555555"))
    wrong = "wrong-client-secret-000"
    tokens = TokenProvider(token_endpoint=fabric.url, env={**fabric.env, "FABRIC_CLIENT_SECRET": wrong})
    stream = io.StringIO()
    logs.set_stream(stream)
    try:
        with pytest.raises(EntraRejected) as caught:
            Fabric(endpoint=fabric.url, tokens=tokens).launch(request_for(p))
    finally:
        logs.set_stream(None)
    error = caught.value
    assert not error.retryable and error.reason == "invalid_client"
    assert "FABRIC_CLIENT_SECRET" in error.message and wrong not in str(error.context())
    assert wrong not in stream.getvalue()
    assert fabric.launches() == []  # nothing reached Fabric


def test_a_service_principal_is_refused_on_a_dataflow_execute(fabric: FabricHarness) -> None:
    options = {**fabric.pipeline_options("sales"), "auth": "service_principal"}
    assert any("service_principal cannot run a Dataflow" in p for p in check_options(options))
    # even if a config slipped through, Fabric refuses the app-only token on Execute
    with pytest.raises(BackendRejected) as caught:
        fabric.backend().launch(request_for(pipeline(options)))
    assert caught.value.status == 403 and caught.value.reason == "PrincipalTypeNotSupported"
    assert not isinstance(caught.value, AlreadyExists) and fabric.runs_started() == 0


def test_an_unknown_item_is_not_found_and_a_wrong_job_type_is_rejected(fabric: FabricHarness) -> None:
    backend = fabric.backend()
    with pytest.raises(NotFound):
        backend.launch(
            request_for(
                pipeline({"workspace": fabric.workspace, "item": "99999999-9999-4999-8999-999999999999"})
            )
        )
    fabric.pipeline_options("sales")
    wrong = pipeline({"workspace": fabric.workspace, "item": fabric.item_id("sales"), "job_type": "Pipeline"})
    with pytest.raises(BackendRejected) as caught:
        backend.launch(request_for(wrong))
    assert caught.value.reason == "InvalidJobType"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            400,
            {"errorCode": "SomethingTransient", "message": "try again", "isRetriable": True},
            BackendUnavailable,
        ),
        (400, {"errorCode": "ItemNotFound", "message": "gone"}, NotFound),
        (429, {"errorCode": "TooManyRequestsForJobs", "message": "slow down"}, BackendUnavailable),
        (403, {"errorCode": "InsufficientPrivileges", "message": "no"}, BackendRejected),
        (400, {"errorCode": "InvalidRequest", "message": "bad"}, BackendRejected),
    ],
)
def test_errors_are_classified_by_error_code_and_is_retriable(
    status: int, body: dict[str, Any], expected: type[Exception]
) -> None:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    response.headers["Retry-After"] = "7"
    with pytest.raises(expected) as caught:
        fabric_error(response, what="fabric test")
    if expected is BackendUnavailable:
        assert caught.value.retry_after == 7
    if expected is BackendRejected:
        assert caught.value.reason == body["errorCode"]
