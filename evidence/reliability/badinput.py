"""The bad-input suite: a generated corpus of malformed and hostile inputs against the real functions.

    python -m evidence.reliability.badinput --cases 2000 --seed 7     # the full corpus, results/badinput.{json,md}

Every case (see :mod:`reliability.badinput_corpus`) goes through functions-framework in-process
(``create_app(target, "main.py", signature).test_client()``) with a routing config whose ledger is
on fake-gcs-server, the Dataflow and Fabric emulators as backends and the Pub/Sub emulator for
completions: real services on loopback. Per case the oracles are:

- **no unhandled exception**: an HTTP 500 is allowed only for a retryable error (none is expected:
  no service fails here, so any 500 on bad input is reported, as ``retried`` or ``unhandled``);
- **the outcome the policy gives**: acknowledged (200) for every event, the REST statuses the
  OpenAPI contract gives with a JSON error body that validates against it;
- **no launch with wrong parameters**: the launch requests the backends received during the case
  must be exactly one of the launch sets the corpus oracle computed from what it generated;
- **a logged reason**: every delivery wrote at least one JSON log line (successful reads excepted),
  and every line is JSON with ``severity`` and ``message``;
- **no secret anywhere**: canary values are planted in the Fabric credential variables
  (``FABRIC_CLIENT_SECRET``, ``FABRIC_REFRESH_TOKEN``) and in the Fabric emulator's client
  registration only; with the tokens the emulator issued they are searched for in every log line,
  every REST answer, every ledger object (read back from fake-gcs) and every published event;
- config cases: the validator raises nothing but ``ConfigError``, names every planted problem, and
  a config it accepts routes probe events without raising anything but ``ParameterError``.

After the cases, the emulator clocks move on and the ``check_runs`` sweep runs until the ledger has
no active run, so every run's completion event is published, checked against the committed JSON
Schema and searched for secrets.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import io
import json
import logging
import os
import re
import secrets
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evidence.reliability import badinput_corpus as corpus
from evidence.reliability.badinput_corpus import Case, Delivery, Launch

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "main.py"
SUITE = "badinput"
EVENT_FUNCTIONS = ("on_object_finalized", "on_message", "on_job_status", "check_runs")


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
@dataclass
class CaseResult:
    case: Case
    outcome: str  # acknowledged | retried | unhandled | launched | rest_4xx | rest_2xx | config_refused | config_accepted
    statuses: list[int] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    unhandled: int = 0
    retried: int = 0
    launches: list[Launch] = field(default_factory=list)
    launch_verdict: str = "ok"  # ok | wrong | missing
    logged_reason: bool = True
    leaks: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return bool(self.violations)

    def report(self) -> dict[str, Any]:
        return {
            "case": self.case.describe(),
            "known_bug": self.case.known,
            "statuses": self.statuses,
            "exceptions": self.exceptions[:3],
            "launches": [[launch.target, dict(launch.parameters)] for launch in self.launches][:3],
            "expected": [[[x.target, dict(x.parameters)] for x in option] for option in self.case.launches][
                :3
            ],
            "violations": self.violations,
        }


@dataclass
class DrainReport:
    sweeps: int = 0
    active_left: int = 0
    sweep_errors: list[str] = field(default_factory=list)
    completions: int = 0
    schema_violations: list[str] = field(default_factory=list)
    known_schema_violations: list[str] = field(default_factory=list)  # completion-negative-duration
    ledger_objects: int = 0
    leaks: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Services
# ---------------------------------------------------------------------------------------------
@dataclass
class Services:
    """The real local services a run talks to (owned by the caller)."""

    pubsub_host: str
    gcs_url: str
    dataflow: Any  # a local.emulators.base.ServerHandle
    fabric: Any


@contextlib.contextmanager
def started_services(work_dir: Path | None = None) -> Iterator[Services]:
    """The Pub/Sub emulator, fake-gcs-server and the Dataflow and Fabric emulators, assembled by
    :class:`local.world.LocalWorld` (the run registers its own fixtures: canary credentials)."""
    from local.world import LocalWorld

    with LocalWorld(work_dir) as world:
        pubsub, gcs = world.start_pubsub(), world.start_gcs()
        emulators = world.start_backends(["dataflow", "fabric"])
        yield Services(pubsub.host, gcs.url, emulators["dataflow"], emulators["fabric"])


def _control(handle: Any, method: str, path: str, body: Any = None) -> Any:
    import requests

    r = requests.request(method, f"{handle.url}/_emulator/{path}", json=body, timeout=10)
    r.raise_for_status()
    return r.json() if r.content else None


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
class _Capture:
    """Log lines written through handlers.core.logs, encoded as strict UTF-8 like a real stdout."""

    def __init__(self) -> None:
        self.raw = io.BytesIO()
        self.stream = io.TextIOWrapper(self.raw, encoding="utf-8", errors="strict", write_through=True)

    def lines(self) -> list[str]:
        self.stream.flush()
        return [line for line in self.raw.getvalue().decode("utf-8").split("\n") if line]


class BadInputRun:
    """One run of the corpus against one set of services."""

    def __init__(self, services: Services, workdir: Path, *, name: str | None = None) -> None:
        self.services = services
        self.workdir = workdir
        self.name = name or "bi" + uuid.uuid4().hex[:8]
        self.ledger_bucket = f"{self.name}-ledger"
        self.completion_topic = f"{self.name}-completions"
        self.completion_sub = f"{self.name}-completions-all"
        self.config_path = workdir / "badinput-pipelines.yaml"
        self.canaries = {
            "FABRIC_CLIENT_SECRET": "canary-secret-" + secrets.token_hex(12),
            "FABRIC_REFRESH_TOKEN": "canary-refresh-" + secrets.token_hex(12),
        }
        self.apps: dict[str, Any] = {}
        self.exceptions: list[BaseException] = []
        self._df_cursor = 0
        self._fabric_cursor = 0
        self.all_log_lines: list[str] = []
        self.answers: list[bytes] = []  # REST answers, searched for secrets
        self.openapi: dict[str, Any] = {}

    # -- set up ----------------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        """The variables the functions read (the caller sets them: os.environ or monkeypatch)."""
        return {
            "PIPELINES_CONFIG": str(self.config_path),
            "GOOGLE_CLOUD_PROJECT": corpus.PROJECT,
            "STORAGE_EMULATOR_HOST": self.services.gcs_url,
            "PUBSUB_EMULATOR_HOST": self.services.pubsub_host,
            "DATAFLOW_API_ENDPOINT": self.services.dataflow.url,
            "FABRIC_API_ENDPOINT": self.services.fabric.url,
            "FABRIC_TOKEN_ENDPOINT": self.services.fabric.url,
            "PIPELINES_ANONYMOUS_AUTH": "true",
            "PIPELINES_HTTP_TIMEOUT": "5,20",
            "FABRIC_TENANT_ID": corpus.FABRIC_TENANT,
            "FABRIC_CLIENT_ID": corpus.FABRIC_CLIENT,
            **self.canaries,
        }

    def prepare(self) -> None:
        """Buckets, topic, subscription, emulator registrations, config file, the function apps.
        Call after :meth:`environment` is in force."""
        import functions_framework
        import yaml
        from flask import got_request_exception

        from handlers.core import clients
        from handlers.launch.runtime import reset_default
        from local.services import (
            ensure_bucket,
            ensure_pull_subscription,
            ensure_topic,
            storage_client,
        )

        self.workdir.mkdir(parents=True, exist_ok=True)
        gcs = storage_client(self.services.gcs_url)
        ensure_bucket(gcs, self.ledger_bucket)
        host = self.services.pubsub_host
        ensure_topic(corpus.PROJECT, self.completion_topic, emulator_host=host)
        ensure_pull_subscription(
            corpus.PROJECT, self.completion_topic, self.completion_sub, emulator_host=host
        )
        for pipeline, (path, flex) in corpus.DATAFLOW_PIPELINES.items():
            _control(
                self.services.dataflow,
                "POST",
                "templates",
                {
                    "gcsPath": path,
                    "kind": "flex" if flex else "classic",
                    "name": pipeline,
                    "parameters": [
                        {"name": n, "label": n, "helpText": n, "isOptional": True}
                        for n in corpus.TEMPLATE_PARAMETERS[pipeline]
                    ],
                    "behavior": {"pending_seconds": 1, "run_seconds": 3, "outcome": "DONE"},
                },
            )
        _control(
            self.services.fabric,
            "POST",
            "clients",
            {
                "tenant": corpus.FABRIC_TENANT,
                "client_id": corpus.FABRIC_CLIENT,
                "client_secret": self.canaries["FABRIC_CLIENT_SECRET"],
                "refresh_tokens": [self.canaries["FABRIC_REFRESH_TOKEN"]],
            },
        )
        _control(
            self.services.fabric,
            "POST",
            "items",
            {
                "workspace": corpus.FABRIC_WORKSPACE,
                "item": corpus.FABRIC_ITEM,
                "type": "Dataflow",
                "displayName": "report",
                "behavior": {
                    "not_started_seconds": 1,
                    "run_seconds": 3,
                    "outcome": "Completed",
                    "dedupe": False,
                    # the dataflow's public parameters: a launch checks its parameters against them
                    "parameters": ["Source", "Day"],
                },
            },
        )
        self.config_path.write_text(
            yaml.safe_dump(corpus.config_doc(self.ledger_bucket, self.completion_topic), sort_keys=False)
        )
        clients.reset()
        reset_default()
        for target in (*EVENT_FUNCTIONS, "api"):
            signature = "http" if target == "api" else "cloudevent"
            app = functions_framework.create_app(target, str(MAIN), signature)
            app.logger.setLevel(logging.CRITICAL)  # the exception is captured below, not printed
            got_request_exception.connect(self._on_exception, app)
            self.apps[target] = app.test_client()
        self._df_cursor = len(self.services.dataflow.app_state.requests.list())
        self._fabric_cursor = len(self.services.fabric.app_state.requests.list())
        self.openapi = yaml.safe_load((ROOT / "handlers" / "schemas" / "api.openapi.yaml").read_text())

    def _on_exception(self, sender: Any, exception: BaseException, **extra: Any) -> None:
        self.exceptions.append(exception)

    # -- one case --------------------------------------------------------------------------------
    def run_case(self, case: Case) -> CaseResult:
        started = time.perf_counter()
        if case.config_text is not None:
            result = self._run_config_case(case)
        else:
            result = self._run_delivery_case(case)
        result.seconds = time.perf_counter() - started
        return result

    def _run_delivery_case(self, case: Case) -> CaseResult:
        from handlers.core import logs
        from handlers.core.errors import RetryableError

        result = CaseResult(case, "acknowledged")
        if case.ledger_runs:
            self._seed_ledger(case.ledger_runs)
        previous: dict[str, Any] | None = None
        for delivery in case.deliveries:
            capture = _Capture()
            logs.set_stream(capture.stream)
            self.exceptions.clear()
            try:
                status, body = self._deliver(delivery, previous)
            finally:
                logs.set_stream(None)
            lines = capture.lines()
            self.all_log_lines.extend(lines)
            result.statuses.append(status)
            for exc in self.exceptions:
                name = f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:200]}"
                result.exceptions.append(name)
                if isinstance(exc, RetryableError):
                    result.retried += 1
                else:
                    result.unhandled += 1
            if status >= 500 and not self.exceptions:
                result.unhandled += 1
                result.exceptions.append(f"HTTP {status} without a captured exception")
            if status not in delivery.statuses:
                result.violations.append(f"status {status}, the policy allows {sorted(delivery.statuses)}")
            if delivery.framework_404 and status == 404 and body.lstrip().startswith(b"<"):
                continue  # functions-framework refused the path; the function never ran
            self._check_logs(delivery, status, lines, result)
            if delivery.function == "api":
                self.answers.append(body)
                previous = self._check_answer(delivery, status, body, result)
        launches = self._new_launches()
        result.launches = launches
        actual = tuple(sorted(launches, key=_launch_key))
        options = [tuple(sorted(option, key=_launch_key)) for option in case.launches]
        if actual not in options:
            result.launch_verdict = "missing" if not actual else "wrong"
            result.violations.append(
                "launched nothing, expected a launch"
                if not actual
                else "launched with parameters no oracle allows"
            )
        if result.unhandled:
            result.violations.append(f"{result.unhandled} unhandled exception(s)")
        if result.retried:
            result.violations.append(f"{result.retried} retryable failure(s) on bad input (HTTP 500)")
        result.outcome = self._outcome(case, result)
        return result

    def _seed_ledger(self, runs: list[dict[str, Any]]) -> None:
        """Write the finished upstream runs a completion case announces, as the ledger holds them."""
        from local.services import storage_client

        bucket = storage_client(self.services.gcs_url).bucket(self.ledger_bucket)
        for run in runs:
            blob = bucket.blob(f"ledger/runs/{run['run_key']}.json")
            blob.upload_from_string(json.dumps(run), content_type="application/json", if_generation_match=0)

    @staticmethod
    def _outcome(case: Case, result: CaseResult) -> str:
        if result.unhandled:
            return "unhandled"
        if result.retried:
            return "retried"
        if case.category == "rest":
            first = result.statuses[0] if result.statuses else 0
            if 400 <= first < 500:
                return "rest_4xx"
            return "launched" if result.launches and result.launch_verdict == "ok" else "rest_2xx"
        if result.launches and result.launch_verdict == "ok":
            return "launched"
        return "acknowledged"

    def _deliver(self, delivery: Delivery, previous: Mapping[str, Any] | None) -> tuple[int, bytes]:
        client = self.apps[delivery.function]
        path = delivery.path
        if delivery.follow is not None:
            run_key = (previous or {}).get("run_key") or "missing"
            path = f"/runs/{run_key}{delivery.follow}"
        headers = {k: v for k, v in delivery.headers.items() if v != "" or k != "Content-Type"}
        response = client.open(path, method=delivery.method, data=delivery.body, headers=headers)
        return response.status_code, response.get_data()

    def _check_logs(self, delivery: Delivery, status: int, lines: list[str], result: CaseResult) -> None:
        reasons = 0
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                result.violations.append(f"log line is not JSON: {line[:120]!r}")
                continue
            if not isinstance(entry, dict) or not entry.get("severity") or not entry.get("message"):
                result.violations.append(f"log line without severity/message: {line[:120]!r}")
                continue
            reasons += 1
        if reasons == 0 and not (delivery.read_only and 200 <= status < 300):
            result.logged_reason = False
            result.violations.append(
                f"{delivery.function} {delivery.method} answered {status} without a logged reason"
            )

    def _check_answer(
        self, delivery: Delivery, status: int, body: bytes, result: CaseResult
    ) -> dict[str, Any] | None:
        """REST answers are JSON and validate against the OpenAPI document."""
        import jsonschema

        if delivery.method == "HEAD" or status >= 500:
            return None
        try:
            doc = json.loads(body)
        except ValueError:
            result.violations.append(f"answer {status} is not JSON: {body[:80]!r}")
            return None
        schema = self._schema_for(delivery, status)
        if schema is not None:
            try:
                jsonschema.validate(doc, {"components": self.openapi["components"], **schema})
            except jsonschema.ValidationError as exc:
                result.violations.append(f"answer {status} breaks the OpenAPI contract: {exc.message[:160]}")
        if status >= 400 and not (isinstance(doc, dict) and (doc.get("error") or {}).get("message")):
            result.violations.append(f"error answer {status} has no message")
        return doc if isinstance(doc, dict) else None

    def _schema_for(self, delivery: Delivery, status: int) -> dict[str, Any] | None:
        components = self.openapi["components"]
        if status >= 400:
            return dict(components["schemas"]["Error"])
        path = delivery.path if delivery.follow is None else "/runs/{runKey}" + delivery.follow
        names = {
            ("/runs", 202): "StartRunResponse",
            ("/pipelines", 200): "PipelineList",
            ("/runs/{runKey}", 200): "RunStatus",
            ("/runs/{runKey}:cancel", 202): "CancelResponse",
        }
        name = names.get((path.split("?", 1)[0].rstrip("/") or "/", status))
        return dict(components["schemas"][name]) if name else None

    def _new_launches(self) -> list[Launch]:
        """Launch requests the backends received since the previous call."""
        out: list[Launch] = []
        entries = self.services.dataflow.app_state.requests.list()
        for entry in entries[self._df_cursor :]:
            body = entry.get("body") if isinstance(entry.get("body"), dict) else {}
            if entry["method"] != "POST":
                continue
            if entry["path"].endswith("/flexTemplates:launch"):
                lp = body.get("launchParameter") or {}
                out.append(_launch(f"dataflow:{lp.get('containerSpecGcsPath')}", lp.get("parameters")))
            elif entry["path"].endswith("/templates:launch"):
                out.append(
                    _launch(f"dataflow:{(entry.get('query') or {}).get('gcsPath')}", body.get("parameters"))
                )
        self._df_cursor = len(entries)
        entries = self.services.fabric.app_state.requests.list()
        for entry in entries[self._fabric_cursor :]:
            match = re.search(r"/(?:items|dataflows)/([^/]+)/jobs/(?:[^/]+/)?instances$", entry["path"])
            if entry["method"] != "POST" or not match:
                continue
            body = entry.get("body") if isinstance(entry.get("body"), dict) else {}
            raw = (body.get("executionData") or {}).get("parameters") or []
            params = {p.get("parameterName"): p.get("value") for p in raw if isinstance(p, dict)}
            out.append(_launch(f"fabric:{match.group(1)}", params))
        self._fabric_cursor = len(entries)
        return out

    # -- config cases ----------------------------------------------------------------------------
    def _run_config_case(self, case: Case) -> CaseResult:
        from handlers.core.errors import ConfigError
        from handlers.model.config import load_config

        result = CaseResult(case, "config_accepted")
        path = self.workdir / "config-case.yaml"
        path.write_text(case.config_text or "", encoding="utf-8")
        try:
            config = load_config(path)
        except ConfigError as exc:
            result.outcome = "config_refused"
            problems = exc.problems
            if not problems or not all(isinstance(p, str) and p.strip() for p in problems):
                result.violations.append("ConfigError without a problem list")
            for marker in case.config_markers:
                if not any(marker in p for p in problems):
                    result.violations.append(f"problem not listed: {marker!r}")
            return result
        except Exception as exc:
            result.outcome = "unhandled"
            result.unhandled = 1
            result.exceptions.append(f"{type(exc).__module__}.{type(exc).__name__}: {str(exc)[:200]}")
            result.violations.append("the validator raised something else than ConfigError")
            return result
        if case.config_valid is False:
            result.violations.append(f"accepted a config with planted problems {list(case.config_markers)}")
        for failure in probe_config(config):
            result.unhandled += 1
            result.exceptions.append(failure)
        if result.unhandled:
            result.outcome = "unhandled"
            result.violations.append("an accepted config fails at run time")
        return result

    # -- the end of the run ----------------------------------------------------------------------
    def drain(self, max_sweeps: int = 20) -> DrainReport:
        """Finish every run (emulator clocks forward, sweeps), then read back everything written."""
        report = DrainReport()
        self.finish_runs(report, max_sweeps)
        self.read_back(report)
        return report

    def finish_runs(self, report: DrainReport, max_sweeps: int = 20) -> None:
        """Move the emulator clocks on and sweep until the ledger has no active run."""
        from handlers.core import logs
        from local.services import storage_client

        _control(self.services.dataflow, "POST", "clock", {"advance_seconds": 600})
        _control(self.services.fabric, "POST", "clock", {"advance_seconds": 600})
        gcs = storage_client(self.services.gcs_url)
        bucket = gcs.bucket(self.ledger_bucket)
        for _ in range(max_sweeps):
            active = list(gcs.list_blobs(bucket, prefix="ledger/active/"))
            if not active:
                break
            capture = _Capture()
            logs.set_stream(capture.stream)
            self.exceptions.clear()
            try:
                headers, body = corpus.structured(
                    {
                        "type": corpus.PUBSUB_PUBLISHED,
                        "source": corpus.topic_source("sweep"),
                        "id": uuid.uuid4().hex,
                    },
                    {"message": {"data": base64.b64encode(b"tick").decode(), "messageId": uuid.uuid4().hex}},
                )
                status = self.apps["check_runs"].post("/", data=body, headers=headers).status_code
            finally:
                logs.set_stream(None)
            self.all_log_lines.extend(capture.lines())
            report.sweeps += 1
            if status != 200:
                report.sweep_errors.append(
                    f"sweep answered {status}: "
                    + "; ".join(f"{type(e).__name__}: {str(e)[:200]}" for e in self.exceptions)
                )
        report.active_left = len(list(gcs.list_blobs(bucket, prefix="ledger/active/")))

    def read_back(self, report: DrainReport) -> None:
        """Pull every published event (schema check), read every ledger object, search for secrets."""
        import jsonschema

        from local.services import pull_all, storage_client

        gcs = storage_client(self.services.gcs_url)
        bucket = gcs.bucket(self.ledger_bucket)
        schema = json.loads((ROOT / "handlers" / "schemas" / "run-completed.v1.json").read_text())
        published: list[bytes] = []
        while True:
            batch = pull_all(
                corpus.PROJECT,
                self.completion_sub,
                max_messages=500,
                timeout=1.0,
                min_messages=0,
                emulator_host=self.services.pubsub_host,
            )
            if not batch:
                break
            for message in batch:
                published.append(message["data"] + json.dumps(message["attributes"]).encode())
                try:
                    event = json.loads(message["data"])
                    if event.get("type") == corpus.RUN_COMPLETED:
                        jsonschema.validate(event, schema)
                except jsonschema.ValidationError as exc:
                    where = "/".join(str(p) for p in exc.absolute_path)
                    if (
                        where == "data/duration_seconds"
                        and isinstance(exc.instance, float)
                        and exc.instance < 0
                    ):
                        report.known_schema_violations.append(
                            f"{message['message_id']}: {where} = {exc.instance}"
                        )
                    else:
                        report.schema_violations.append(
                            f"{message['message_id']}: {where}: {exc.message[:200]}"
                        )
                except ValueError as exc:
                    report.schema_violations.append(f"{message['message_id']}: not JSON: {exc}")
        report.completions = len(published)
        ledger_objects = [blob.download_as_bytes() for blob in gcs.list_blobs(bucket)]
        report.ledger_objects = len(ledger_objects)
        secret_values = self.secret_values()
        for where, blobs in (
            ("log", [line.encode() for line in self.all_log_lines]),
            ("REST answer", self.answers),
            ("ledger object", ledger_objects),
            ("published event", published),
        ):
            report.leaks.extend(f"{where}: {hit}" for hit in find_secrets(blobs, secret_values))

    def secret_values(self) -> dict[str, str]:
        """The canaries plus every token the Fabric emulator issued or rotated."""
        values = dict(self.canaries)
        state = self.services.fabric.app_state
        with state.lock:
            for i, token in enumerate(list(state.tokens)):
                values[f"issued access token {i}"] = token
            for client in state.clients.values():
                for i, refresh in enumerate(sorted(client.refresh_tokens)):
                    values.setdefault(f"refresh token {client.client_id}/{i}", refresh)
        return values


def _launch(target: str, parameters: Any) -> Launch:
    params = parameters if isinstance(parameters, Mapping) else {}
    return Launch(
        target, tuple(sorted((str(k), v if isinstance(v, str) else repr(v)) for k, v in params.items()))
    )


def _launch_key(launch: Launch) -> str:
    return json.dumps([launch.target, launch.parameters])


def find_secrets(blobs: Sequence[bytes], values: Mapping[str, str]) -> list[str]:
    """``"<what> found"`` for every secret value present in any blob (raw, JSON-escaped or base64)."""
    hits: list[str] = []
    for what, value in values.items():
        forms = {
            value.encode(),
            json.dumps(value)[1:-1].encode(),
            base64.b64encode(value.encode()).rstrip(b"="),
        }
        for blob in blobs:
            if any(form in blob for form in forms):
                hits.append(f"{what} found")
                break
    return hits


# ---------------------------------------------------------------------------------------------
# An accepted config must route events without failing
# ---------------------------------------------------------------------------------------------
def probe_config(config: Any) -> list[str]:
    """Plan a few events per trigger (the decision path: route, identity, render); anything but
    ParameterError is a failure."""
    from handlers.core.errors import ParameterError
    from handlers.model.completions import Completion
    from handlers.model.events import MessageEvent, ObjectEvent, StorageObject
    from handlers.route.plan import plan_completion, plan_message, plan_object

    now = dt.datetime.now(dt.UTC)
    failures: list[str] = []

    def attempt(what: str, fn: Any) -> None:
        try:
            fn()
        except ParameterError:
            pass
        except Exception as exc:
            failures.append(f"{what}: {type(exc).__name__}: {str(exc)[:160]}")

    for trigger in config.triggers.values():
        if trigger.storage is not None:
            for name in ("a.txt", "in/x.csv", "incoming/a/b.txt", "x\n{name}%#?.json", ".."):
                obj = StorageObject(
                    bucket=trigger.storage.bucket,
                    name=name,
                    generation=1,
                    size=10,
                    content_type="text/csv",
                    metadata={"owner": "o"},
                )
                event = ObjectEvent("probe", now, obj)
                attempt(f"storage {trigger.name}", lambda e=event: plan_object(config, e))
        if trigger.pubsub is not None:
            paths = [c.path for c in (*trigger.pubsub.attributes, *trigger.pubsub.data)]
            for data in (b"", b"{}", json.dumps({p: "x" for p in paths}).encode(), b"not json"):
                for attributes in ({}, {p: "x" for p in paths}):
                    message = MessageEvent(
                        "probe", now, corpus.PROJECT, trigger.pubsub.topic, "1", data, attributes, now
                    )
                    attempt(f"pubsub {trigger.name}", lambda m=message: plan_message(config, m))
        if trigger.completion is not None and not trigger.completion.is_fan_in:
            pipeline = config.pipelines.get(trigger.pipeline)
            if pipeline is None:
                continue
            for upstream in trigger.completion.upstream:
                comp = Completion(
                    "probe",
                    now,
                    {
                        "run_key": "r-1",
                        "pipeline": upstream,
                        "state": "SUCCEEDED",
                        "parameters": {},
                        "outputs": {},
                    },
                )
                attempt(f"completion {trigger.name}", lambda c=comp: plan_completion(config, c))
    return failures


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
OUTCOMES = (
    "acknowledged",
    "launched",
    "retried",
    "unhandled",
    "rest_4xx",
    "rest_2xx",
    "config_refused",
    "config_accepted",
)


def figures(
    results: Sequence[CaseResult], drain: DrainReport | None, *, seed: int, seconds: float
) -> dict[str, Any]:
    """The suite's figures: per category and in total."""
    per_category: dict[str, dict[str, Any]] = {}
    for category in corpus.CATEGORIES:
        mine = [r for r in results if r.case.category == category]
        if not mine:
            continue
        counts = Counter(r.outcome for r in mine)
        per_category[category] = {
            "cases": len(mine),
            **{o: counts.get(o, 0) for o in OUTCOMES},
            "launched_correctly": sum(1 for r in mine if r.launches and r.launch_verdict == "ok"),
            "unhandled_exceptions": sum(r.unhandled for r in mine),
            "wrong_launches": sum(1 for r in mine if r.launch_verdict == "wrong"),
            "missing_launches": sum(1 for r in mine if r.launch_verdict == "missing"),
            "without_logged_reason": sum(1 for r in mine if not r.logged_reason),
            "failed_cases": sum(1 for r in mine if r.failed and not r.case.known),
            "known_bug_cases": sum(1 for r in mine if r.case.known),
        }
    slowest = max(results, key=lambda r: r.seconds) if results else None
    failed = [r for r in results if r.failed and not r.case.known]
    known = [r for r in results if r.case.known]
    leaks = list(drain.leaks) if drain else []
    return {
        "seed": seed,
        "cases": len(results),
        "seconds": round(seconds, 1),
        "per_category": per_category,
        "unhandled_exceptions": sum(r.unhandled for r in results if not r.case.known),
        "retried_on_bad_input": sum(r.retried for r in results if not r.case.known),
        "wrong_launches": sum(1 for r in results if r.launch_verdict == "wrong" and not r.case.known),
        "missing_launches": sum(1 for r in results if r.launch_verdict == "missing" and not r.case.known),
        "cases_without_logged_reason": sum(1 for r in results if not r.logged_reason and not r.case.known),
        "secret_leaks": len(leaks),
        "leaks": leaks[:20],
        "failed_cases": len(failed),
        "known_bug_cases": {
            **{
                bug: sum(1 for r in known if r.case.known == bug)
                for bug in sorted({r.case.known for r in known if r.case.known})
            },
            **(
                {"completion-negative-duration": len(drain.known_schema_violations)}
                if drain and drain.known_schema_violations
                else {}
            ),
        },
        "launched_correctly": sum(1 for r in results if r.launches and r.launch_verdict == "ok"),
        "launches_by_target": dict(Counter(launch.target for r in results for launch in r.launches)),
        "slowest_case": {"case": slowest.case.describe()[:200], "seconds": round(slowest.seconds, 3)}
        if slowest
        else None,
        "median_case_ms": round(sorted(r.seconds for r in results)[len(results) // 2] * 1000, 1)
        if results
        else None,
        "drain": {
            "sweeps": drain.sweeps,
            "active_runs_left": drain.active_left,
            "sweep_errors": drain.sweep_errors[:10],
            "completion_events": drain.completions,
            "completion_schema_violations": drain.schema_violations[:10],
            "known_schema_violations": len(drain.known_schema_violations),
            "ledger_objects_read": drain.ledger_objects,
        }
        if drain
        else None,
        "violation_kinds": dict(
            Counter(_kind(v) for r in failed for v in dict.fromkeys(r.violations)).most_common()
        ),
        "failures": [r.report() for r in failed[:40]],
    }


def _kind(violation: str) -> str:
    """A violation without its specifics, to count alike ones together."""
    return re.sub(r"\d+", "N", violation.split(":", 1)[0])[:90]


def table(fig: Mapping[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for category, c in fig["per_category"].items():
        rows.append(
            {
                "category": category,
                "cases": c["cases"],
                "acknowledged": c["acknowledged"],
                "launched correctly": c["launched_correctly"],
                "REST 4xx": c["rest_4xx"],
                "REST 2xx": c["rest_2xx"],
                "config refused / accepted": f"{c['config_refused']} / {c['config_accepted']}"
                if category == "config"
                else "",
                "retried": c["retried"],
                "unhandled": c["unhandled_exceptions"],
                "wrong launches": c["wrong_launches"],
                "missing launches": c["missing_launches"],
                "no logged reason": c["without_logged_reason"],
                "known-bug cases": c["known_bug_cases"],
            }
        )
    return rows


def ok(fig: Mapping[str, Any]) -> bool:
    drain = fig.get("drain") or {}
    return (
        fig["failed_cases"] == 0
        and fig["secret_leaks"] == 0
        and not drain.get("sweep_errors")
        and not drain.get("completion_schema_violations")
        and not drain.get("active_runs_left")
    )


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------
def execute(
    run: BadInputRun, cases: Sequence[Case], *, progress: bool = False
) -> tuple[list[CaseResult], DrainReport]:
    results = []
    for i, case in enumerate(cases, 1):
        results.append(run.run_case(case))
        if progress and i % 100 == 0:
            bad = sum(1 for r in results if r.failed and not r.case.known)
            print(f"badinput: {i}/{len(cases)} cases, {bad} failing", file=sys.stderr)
    return results, run.drain()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m evidence.reliability.badinput", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--cases", type=int, default=2000, help="corpus size (default 2000)")
    parser.add_argument("--seed", type=int, default=7, help="hypothesis seed (default 7)")
    parser.add_argument("--out", type=Path, default=None, help="results folder (default results/)")
    parser.add_argument("--dump", type=Path, default=None, help="write every failing case here (JSON lines)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="badinput-") as tmp, started_services(Path(tmp)) as services:
        run = BadInputRun(services, Path(tmp) / "work")
        os.environ.update(run.environment())
        cases = corpus.generate(args.cases, args.seed, completion_topic=run.completion_topic)
        print(f"badinput: {len(cases)} cases generated (seed {args.seed})", file=sys.stderr)
        run.prepare()
        results, drain = execute(run, cases, progress=True)
    elapsed = time.perf_counter() - started
    fig = figures(results, drain, seed=args.seed, seconds=elapsed)
    if args.dump:
        with args.dump.open("w") as out:
            for r in results:
                if r.failed:
                    out.write(json.dumps(r.report(), ensure_ascii=True) + "\n")
    from evidence.bench.report import write

    notes = (
        "Oracles per case: no unhandled exception (HTTP 500 only for a retryable error; none is "
        "expected since no service fails), the policy's outcome (200 for events, the OpenAPI statuses "
        "and error bodies for REST), launches equal to the corpus oracle's parameters, a JSON log line "
        "with a reason per delivery, and no secret (canary Fabric credentials and every token the "
        "emulator issued) in logs, REST answers, ledger objects or published events. "
        f"Totals: {fig['unhandled_exceptions']} unhandled exceptions, {fig['wrong_launches']} wrong "
        f"launches, {fig['missing_launches']} missing launches, {fig['cases_without_logged_reason']} "
        f"cases without a logged reason, {fig['secret_leaks']} secret leaks, slowest case "
        f"{fig['slowest_case']['seconds'] if fig['slowest_case'] else '-'} s, "
        f"{fig['drain']['completion_events']} completion events checked, "
        f"{fig['drain']['ledger_objects_read']} ledger objects read back. Known-bug cases "
        f"(reported, in files this suite may not change): {fig['known_bug_cases'] or 'none'}."
    )
    write(
        SUITE,
        fig,
        command=f"python -m evidence.reliability.badinput --cases {args.cases} --seed {args.seed}",
        table=table(fig),
        title="Bad-input corpus",
        notes=notes,
        out_dir=args.out,
    )
    for failure in fig["failures"][:10]:
        print(json.dumps(failure, ensure_ascii=True)[:1500], file=sys.stderr)
    print(
        f"badinput: {fig['cases']} cases, {fig['failed_cases']} failing, {fig['secret_leaks']} leaks, "
        f"known bugs {fig['known_bug_cases']}",
        file=sys.stderr,
    )
    return 0 if ok(fig) else 1


if __name__ == "__main__":
    raise SystemExit(main())
