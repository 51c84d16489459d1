"""Specification of the Dataproc Serverless backend (handlers/backends/dataproc.py) against the emulator.

Each test reads GIVEN / WHEN / THEN and asserts what reached the emulator (its request log and the
batches it holds), not which function was called. One emulator serves the module; every test starts
from a reset.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from handlers.backends import registry
from handlers.backends.contract import DeployContext, JobRef, LaunchRequest, RunState
from handlers.backends.dataproc import (
    DISCOVERY_REVISION,
    DataprocBatches,
    batch_id,
    check_options,
)
from handlers.core.errors import AlreadyExists, BackendRejected, BackendUnavailable, ConfigError, NotFound
from handlers.model.config import Pipeline, build_config
from handlers.route.identity import RunKey
from local.emulators.base import ServerHandle
from local.emulators.dataproc import serve
from local.kits.dataproc import DataprocHarness, parameters_of
from tests.support.emulator_client import advance, control, emulator_fixture, recorded_requests

ROOT = Path(__file__).resolve().parent.parent
PROJECT = "demo-project"
REGION = "europe-west1"
MAIN = "gs://jobs-bucket/etl/daily.py"

emulator = emulator_fixture(serve)


@pytest.fixture(autouse=True)
def _fresh(emulator: ServerHandle) -> None:
    control(emulator, "POST", "reset")
    register(emulator)


@pytest.fixture
def backend(emulator: ServerHandle) -> DataprocBatches:
    return DataprocBatches(session=requests.Session(), endpoint=emulator.url)


def register(emulator: ServerHandle, main: str = MAIN, **behavior: Any) -> None:
    behavior = {"pending_seconds": 1, "run_seconds": 3, "cancel_seconds": 2, **behavior}
    control(emulator, "POST", "mains", {"main": main, "behavior": behavior})


def pipeline(name: str = "daily-etl", project: str = PROJECT, **options: Any) -> Pipeline:
    opts = options or {"pyspark": {"main": MAIN}}
    return Pipeline(
        name=name,
        backend="dataproc",
        project=project,
        region=REGION,
        labels={"team": "data"},
        options=opts,
    )


def launch_request(
    p: Pipeline | None = None,
    identity: str = "gs://landing/in.csv#1",
    parameters: dict[str, str] | None = None,
) -> LaunchRequest:
    p = p or pipeline()
    key = str(RunKey.of("landing", identity))
    return LaunchRequest(
        run_key=key,
        job_name=RunKey.parse(key).job_name(p.name),
        pipeline=p,
        parameters={"input": "gs://landing/in.csv", "day": "2026-12-06"}
        if parameters is None
        else parameters,
        labels={"pipeline-trigger": "landing", "run-key-hash": key.rsplit("-", 1)[1]},
    )


def creates(emulator: ServerHandle) -> list[dict[str, Any]]:
    return [
        r for r in recorded_requests(emulator) if r["method"] == "POST" and r["path"].endswith("/batches")
    ]


def batches(emulator: ServerHandle) -> list[dict[str, Any]]:
    return list(control(emulator, "GET", "batches")["batches"])


# ------------------------------------------------------------------------------------------ config


def test_the_module_names_the_discovery_revision_it_follows_and_imports_no_http_library() -> None:
    from googleapiclient.discovery_cache import get_static_doc

    assert json.loads(get_static_doc("dataproc", "v1"))["revision"] == DISCOVERY_REVISION
    code = (
        "import sys, handlers.backends.dataproc; "
        "print([m for m in ('requests', 'google.auth', 'googleapiclient') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_check_options_accepts_each_workload_shape() -> None:
    assert check_options({"pyspark": {"main": MAIN, "args": ["a"], "python_files": ["gs://b/lib.zip"]}}) == []
    assert check_options({"spark": {"main_class": "com.x.Main", "jar_files": ["gs://b/app.jar"]}}) == []
    assert check_options({"spark": {"main_jar": "gs://b/app.jar"}}) == []
    assert check_options({"spark_r": {"main": "gs://b/report.R"}}) == []
    assert check_options({"spark_sql": {"query_file": "gs://b/q.sql", "variables": {"d": "1"}}}) == []
    full = {
        "pyspark": {"main": MAIN},
        "runtime": {
            "version": "2.2",
            "properties": {"spark.executor.cores": "4"},
            "container_image": "eu.gcr.io/x/y",
        },
        "environment": {
            "service_account": "etl@demo-project.iam.gserviceaccount.com",
            "subnetwork": "projects/p/regions/europe-west1/subnetworks/s",
            "network_tags": ["etl"],
            "kms_key": "projects/p/locations/europe-west1/keyRings/r/cryptoKeys/k",
            "ttl": "4h",
            "staging_bucket": "etl-staging",
        },
    }
    assert check_options(full) == []


def test_check_options_lists_every_problem_and_names_unknown_keys() -> None:
    # GIVEN options with many mistakes at once
    problems = check_options(
        {
            "pyspark": {"main": "gs://b/job.jar", "args": "--x", "extra": 1},
            "spark": {"main_class": "a.B", "main_jar": "gs://b/a.jar"},
            "runtime": {"version": 2, "properties": {"a": 1}, "image": "x"},
            "environment": {"ttl": "5m", "staging_bucket": "gs://b", "machine": "n2"},
        }
    )
    text = "\n".join(problems)
    # THEN each is listed, naming its field
    for expected in (
        "give exactly one batch workload",
        "pyspark.extra: unknown field",
        "pyspark.args: must be a list of strings",
        "pyspark.main: must be a .py file",
        "spark: give exactly one of main_class or main_jar",
        "runtime.image: unknown field",
        "runtime.version: must be a non-empty string",
        "runtime.properties: must be a mapping of strings",
        "environment.machine: unknown field",
        "environment.ttl: must be between 10m and 14d",
        "environment.staging_bucket: must be a bucket name",
    ):
        assert expected in text, expected
    assert any(p.startswith("pyspark | spark") for p in check_options({}))
    assert "pyspark.main: is required" in check_options({"pyspark": {"args": []}})


def test_a_dataproc_pipeline_in_the_routing_config_validates_its_fields() -> None:
    settings = {"project": PROJECT, "region": REGION, "ledger": {"bucket": "ledger"}}
    good = {"backend": "dataproc", "pyspark": {"main": MAIN}, "environment": {"ttl": "2h"}}
    broken = {"backend": "dataproc", "pyspark": {"main": "nope"}, "template": "gs://x"}
    with pytest.raises(ConfigError) as caught:
        build_config({"settings": settings, "pipelines": {"etl": good, "broken": broken}})
    problems = "\n".join(caught.value.problems)
    assert "pipeline 'broken': pyspark.main:" in problems and "template" in problems
    assert "'etl'" not in problems
    cfg = build_config({"settings": settings, "pipelines": {"etl": good}})
    assert dict(cfg.pipelines["etl"].options) == {"pyspark": {"main": MAIN}, "environment": {"ttl": "2h"}}


def test_the_registry_builds_the_backend_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATAPROC_API_ENDPOINT", "http://127.0.0.1:9/")
    backend = registry.spec("dataproc").build()
    assert isinstance(backend, DataprocBatches) and backend.endpoint == "http://127.0.0.1:9"
    assert backend.find_semantics.exact and backend.find_semantics.settle_seconds == 0
    assert "DATAPROC_API_ENDPOINT" in registry.endpoint_envs()


# ---------------------------------------------------------------------------------------- batch id


def test_the_batch_id_is_the_job_name_cut_to_63_keeping_the_run_hash() -> None:
    key = str(RunKey.of("landing", "gs://landing/x#1"))
    digest = key.rsplit("-", 1)[1]
    short = RunKey.parse(key).job_name("daily-etl")
    assert batch_id(short) == short == f"daily-etl-{digest}"
    long = RunKey.parse(key).job_name(
        "a-very-long-pipeline-name-that-goes-on-and-on-and-on-for-ever-and-ever"
    )
    assert len(long) > 63
    cut = batch_id(long)
    assert len(cut) <= 63 and cut.endswith(f"-{digest}") and cut.startswith("a-very-long")
    assert "--" not in cut and batch_id(long) == cut  # deterministic


# ------------------------------------------------------------------------------------------ launch


def test_launch_creates_the_batch_with_parameters_as_sorted_args_and_the_run_labels(
    emulator: ServerHandle, backend: DataprocBatches
) -> None:
    # GIVEN a PySpark pipeline with its own args, runtime and environment
    p = pipeline(
        pyspark={"main": MAIN, "args": ["--mode=full"], "python_files": ["gs://jobs-bucket/lib.zip"]},
        runtime={"version": "2.2", "properties": {"spark.executor.instances": "4"}},
        environment={"service_account": "etl@demo-project.iam.gserviceaccount.com", "ttl": "2h"},
    )
    request = launch_request(p, parameters={"input": "gs://landing/in.csv", "day": "2026-12-06"})
    # WHEN the run is launched
    ref = backend.launch(request)
    # THEN one create reached the emulator, under the derived batch id and a stable request id
    (sent,) = creates(emulator)
    bid = batch_id(request.job_name)
    assert sent["path"] == f"/v1/projects/{PROJECT}/locations/{REGION}/batches"
    assert sent["query"]["batchId"] == bid and re.fullmatch(r"[0-9a-f]{32}", sent["query"]["requestId"])
    # AND the body carries the configured args, then the parameters as --name=value in name order
    assert sent["body"] == {
        "pysparkBatch": {
            "mainPythonFileUri": MAIN,
            "args": ["--mode=full", "--day=2026-12-06", "--input=gs://landing/in.csv"],
            "pythonFileUris": ["gs://jobs-bucket/lib.zip"],
        },
        "runtimeConfig": {"version": "2.2", "properties": {"spark.executor.instances": "4"}},
        "environmentConfig": {
            "executionConfig": {"serviceAccount": "etl@demo-project.iam.gserviceaccount.com", "ttl": "7200s"}
        },
        "labels": {
            "team": "data",
            "pipeline-trigger": "landing",
            "run-key-hash": request.labels["run-key-hash"],
        },
    }
    assert sent["status"] == 200
    # AND the reference names the batch, its operation and its console page
    (held,) = batches(emulator)
    assert ref.job_id == bid and ref.extra["operation"] == held["batch"]["operation"]
    assert ref.url == f"https://console.cloud.google.com/dataproc/batches/{REGION}/{bid}?project={PROJECT}"


def test_a_spark_sql_batch_receives_parameters_as_query_variables(
    emulator: ServerHandle, backend: DataprocBatches
) -> None:
    register(emulator, "gs://b/q.sql")
    p = pipeline(spark_sql={"query_file": "gs://b/q.sql", "variables": {"env": "prod"}})
    backend.launch(launch_request(p, parameters={"day": "2026-12-06"}))
    (sent,) = creates(emulator)
    assert sent["body"]["sparkSqlBatch"] == {
        "queryFileUri": "gs://b/q.sql",
        "queryVariables": {"env": "prod", "day": "2026-12-06"},
    }


def test_a_spark_batch_by_main_class_keeps_its_jars(emulator: ServerHandle, backend: DataprocBatches) -> None:
    register(emulator, "com.example.Etl")
    p = pipeline(spark={"main_class": "com.example.Etl", "jar_files": ["gs://b/etl.jar"]})
    backend.launch(launch_request(p, parameters={"a": "1"}))
    (sent,) = creates(emulator)
    assert sent["body"]["sparkBatch"] == {
        "mainClass": "com.example.Etl",
        "jarFileUris": ["gs://b/etl.jar"],
        "args": ["--a=1"],
    }


def test_a_second_launch_is_already_exists_and_find_returns_the_same_batch(
    emulator: ServerHandle, backend: DataprocBatches
) -> None:
    # GIVEN a launched run whose batch has even finished
    request = launch_request()
    first = backend.launch(request)
    advance(emulator, 60)
    # WHEN the same run is launched again (a redelivered event whose run lost its ledger record)
    with pytest.raises(AlreadyExists) as caught:
        backend.launch(request)
    # THEN the emulator answered 409 ALREADY_EXISTS to a create under the same batch id ...
    assert caught.value.status == 409 and caught.value.reason == "ALREADY_EXISTS"
    first_create, second_create = creates(emulator)
    assert first_create["query"]["batchId"] == second_create["query"]["batchId"] == first.job_id
    assert first_create["query"]["requestId"] != second_create["query"]["requestId"]
    # ... and find returns the same batch, with the operation to cancel it
    found = backend.find(request)
    assert found is not None and found.job_id == first.job_id
    assert found.extra["operation"] == first.extra["operation"]
    assert len(batches(emulator)) == 1


def test_after_a_lost_create_answer_find_returns_the_batch_and_a_retry_is_already_exists(
    emulator: ServerHandle, backend: DataprocBatches
) -> None:
    # GIVEN a create that happened but whose answer was lost (retryable)
    control(emulator, "POST", "faults", {"operation": "batches.create", "status": 503, "after_effect": True})
    request = launch_request()
    with pytest.raises(BackendUnavailable):
        backend.launch(request)
    # WHEN the launch service looks before relaunching THEN find sees the batch at once (settle 0)
    found = backend.find(request)
    assert found is not None and found.job_id == batch_id(request.job_name)
    # AND a relaunch would be refused, so there is only ever one batch
    with pytest.raises(AlreadyExists):
        backend.launch(request)
    assert [r["status"] for r in creates(emulator)] == [503, 409]
    assert [b["batch"]["operation"] for b in batches(emulator)] == [found.extra["operation"]]


def test_find_is_none_without_a_batch_and_respects_exclude(backend: DataprocBatches) -> None:
    request = launch_request()
    assert backend.find(request) is None
    ref = backend.launch(request)
    assert backend.find(request, exclude=frozenset({ref.job_id})) is None


def test_a_refused_body_is_a_permanent_rejection(emulator: ServerHandle, backend: DataprocBatches) -> None:
    # GIVEN labels that break Dataproc's label rules
    request = launch_request()
    bad = LaunchRequest(
        request.run_key, request.job_name, request.pipeline, request.parameters, labels={"Bad Key": "x"}
    )
    with pytest.raises(BackendRejected) as caught:
        backend.launch(bad)
    assert caught.value.status == 400 and caught.value.reason == "INVALID_ARGUMENT"


# ------------------------------------------------------------------------------------------ status


def test_status_follows_the_batch_to_success_with_its_times(
    emulator: ServerHandle, backend: DataprocBatches
) -> None:
    ref = backend.launch(launch_request())
    pending = backend.status(ref)
    assert pending.state is RunState.PENDING and pending.raw_state == "PENDING" and pending.end_time is None
    advance(emulator, 1.5)
    running = backend.status(ref)
    assert running.state is RunState.RUNNING and running.start_time is not None
    assert running.start_time > pending.start_time  # created, then started
    advance(emulator, 5)
    done = backend.status(ref)
    assert done.state is RunState.SUCCEEDED and done.reason is None
    assert done.start_time == running.start_time and done.end_time == done.state_time
    assert done.end_time is not None and done.end_time > done.start_time


def test_a_failed_batch_carries_its_state_message(emulator: ServerHandle, backend: DataprocBatches) -> None:
    register(emulator, outcome="FAILED", state_message="Table sales_raw does not exist")
    ref = backend.launch(launch_request())
    advance(emulator, 10)
    status = backend.status(ref)
    assert status.state is RunState.FAILED and status.raw_state == "FAILED"
    assert status.reason == "Table sales_raw does not exist" and status.end_time is not None


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ("STATE_UNSPECIFIED", RunState.PENDING),
        ("PENDING", RunState.PENDING),
        ("RUNNING", RunState.RUNNING),
        ("CANCELLING", RunState.RUNNING),
        ("CANCELLED", RunState.CANCELLED),
        ("SUCCEEDED", RunState.SUCCEEDED),
        ("FAILED", RunState.FAILED),
        ("SOMETHING_NEW", RunState.PENDING),
    ],
)
def test_every_batch_state_maps_to_a_run_state(raw: str, state: RunState) -> None:
    # GIVEN a service answering a batch in this state (a stub session: the emulator never says STATE_UNSPECIFIED)
    class Answer:
        status_code = 200
        content = b"{}"

        def json(self) -> dict[str, Any]:
            return {"state": raw, "stateMessage": "why", "stateTime": "2026-12-06T10:00:00.123Z"}

    class Session:
        def request(self, *args: Any, **kwargs: Any) -> Answer:
            return Answer()

    status = DataprocBatches(session=Session(), endpoint="http://127.0.0.1:1").status(
        JobRef("dataproc", "b-0001", project=PROJECT, region=REGION)
    )
    assert status.state is state and status.raw_state == raw
    assert status.reason == ("why" if state is RunState.FAILED else None)
    assert (status.end_time is not None) is state.terminal


def test_status_of_a_missing_batch_is_not_found(backend: DataprocBatches) -> None:
    with pytest.raises(NotFound):
        backend.status(JobRef("dataproc", "gone-0001", project=PROJECT, region=REGION))


# ------------------------------------------------------------------------------------------ cancel


def test_cancel_posts_the_operation_cancel_and_the_batch_ends_cancelled(
    emulator: ServerHandle, backend: DataprocBatches
) -> None:
    ref = backend.launch(launch_request())
    advance(emulator, 1.5)
    backend.cancel(ref)
    (sent,) = [r for r in recorded_requests(emulator) if r["path"].endswith(":cancel")]
    assert sent["path"] == f"/v1/{ref.extra['operation']}:cancel" and sent["status"] == 200
    assert backend.status(ref).raw_state == "CANCELLING"
    advance(emulator, 5)
    assert backend.status(ref).state is RunState.CANCELLED


def test_cancel_without_a_recorded_operation_reads_it_from_the_batch(
    emulator: ServerHandle, backend: DataprocBatches
) -> None:
    ref = backend.launch(launch_request())
    bare = JobRef("dataproc", ref.job_id, project=PROJECT, region=REGION)
    backend.cancel(bare)
    advance(emulator, 5)
    assert backend.status(ref).state is RunState.CANCELLED


def test_cancelling_a_finished_batch_is_done_not_an_error(
    emulator: ServerHandle, backend: DataprocBatches
) -> None:
    ref = backend.launch(launch_request())
    advance(emulator, 60)
    backend.cancel(ref)  # FAILED_PRECONDITION: nothing left to stop
    (sent,) = [r for r in recorded_requests(emulator) if r["path"].endswith(":cancel")]
    assert sent["status"] == 400
    assert backend.status(ref).state is RunState.SUCCEEDED


def test_other_cancel_refusals_still_raise(emulator: ServerHandle, backend: DataprocBatches) -> None:
    ref = backend.launch(launch_request())
    control(emulator, "POST", "faults", {"operation": "operations.cancel", "status": 403})
    with pytest.raises(BackendRejected) as caught:
        backend.cancel(ref)
    assert caught.value.reason == "PERMISSION_DENIED"


# ------------------------------------------------------------------------------------------ deploy


def test_the_deploy_declaration_grants_the_narrowest_roles() -> None:
    spec = registry.spec("dataproc")
    assert spec.deploy.apis == ("dataproc.googleapis.com",) and spec.job_noun == "batch"
    ctx = DeployContext(project="ops-project", project_number="123")
    pipelines = [
        pipeline("a", project="ops-project"),
        pipeline(
            "b",
            project="data-project",
            spark={"main_jar": "gs://jars/etl.jar"},
            environment={"service_account": "etl@data-project.iam.gserviceaccount.com"},
        ),
    ]
    grants = {(g.role, g.kind, g.resource, g.project) for g in spec.deploy.grants(pipelines, ctx)}
    assert grants == {
        ("roles/dataproc.serverlessEditor", "project", "data-project", ""),
        ("roles/dataproc.serverlessEditor", "project", "ops-project", ""),
        (
            "roles/iam.serviceAccountUser",
            "service-account",
            "123-compute@developer.gserviceaccount.com",
            "ops-project",
        ),
        (
            "roles/iam.serviceAccountUser",
            "service-account",
            "etl@data-project.iam.gserviceaccount.com",
            "data-project",
        ),
    }
    assert spec.deploy.problems(pipelines, ctx) == []
    # a pipeline in another project without an execution account is a problem
    lonely = pipeline("c", project="data-project")
    (problem,) = spec.deploy.problems([lonely], ctx)
    assert "'c'" in problem and "environment.service_account" in problem


# ------------------------------------------------------------------------------------------ harness


def test_the_harness_reads_parameters_back_from_the_driver_args(emulator: ServerHandle) -> None:
    harness = DataprocHarness(emulator)
    options = harness.pipeline_options("contract")
    assert (
        options["backend"] == "dataproc"
        and check_options({k: v for k, v in options.items() if k != "backend"}) == []
    )
    assert parameters_of(["--a=1", "x", "--b=c=d"]) == {"a": "1", "b": "c=d"}
