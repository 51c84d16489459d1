"""Specification: bad input never crashes a function, never launches with wrong parameters, is
always logged with a reason, and never leaks a secret.

Two parts:

- hand-written regression cases for what the generated corpus found (each names the bug);
- the CI slice of the generated corpus (``evidence/reliability/badinput.py``): a few hundred hypothesis
  cases with a fixed seed through functions-framework against fake-gcs, the Pub/Sub, Dataflow and
  Fabric emulators, every oracle asserted, plus self-tests showing each oracle can fire.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from evidence.reliability import badinput_corpus as corpus
from handlers.core import logs
from handlers.core.times import now

ROOT = Path(__file__).resolve().parents[1]


def capture_logs() -> tuple[io.TextIOWrapper, io.BytesIO]:
    """A stream that encodes like a real stdout: strict UTF-8."""
    raw = io.BytesIO()
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True), raw


# ---------------------------------------------------------------------------------------------
# Regression cases
# ---------------------------------------------------------------------------------------------
def test_a_log_line_with_a_lone_surrogate_is_written_as_json_escapes():
    # Found by the corpus: an event id "x\ud800" made every log line of its delivery raise
    # UnicodeEncodeError on a UTF-8 stdout, so the function answered 500 and the event looped.
    stream, raw = capture_logs()
    logs.set_stream(stream)
    try:
        with logs.bind(event_id="evt-\ud800"):
            logs.info("malformed storage event: acknowledged", name="incoming/\udfff.txt", owner="café")
    finally:
        logs.set_stream(None)
    (line,) = raw.getvalue().decode("utf-8").splitlines()
    entry = json.loads(line)
    assert entry["message"] == "malformed storage event: acknowledged"
    assert entry["name"] == "incoming/\udfff.txt" and entry["owner"] == "café"
    assert entry["logging.googleapis.com/labels"]["event_id"] == "evt-\ud800"


@pytest.fixture
def pipelines(world, dataflow, monkeypatch):
    """Storage, Pub/Sub, completion and fan-in triggers on the Dataflow emulator: a ``deliver``."""
    opts = dataflow.pipeline_options("ingest")
    config = world.write_config(
        {
            "ingest": {
                **opts,
                "parameters": {
                    "inputFile": "gs://{bucket}/{name}",
                    "owner": "{metadata.owner|nobody}",
                    "stem": "{stem}",
                },
            },
            "orders": {
                **dataflow.pipeline_options("orders"),
                "parameters": {"orderId": "{data.order.id}", "region": "{attributes.region|none}"},
            },
            "raw": {**dataflow.pipeline_options("raw"), "parameters": {"source": "{data}"}},
            "chained": {
                **dataflow.pipeline_options("chained"),
                "parameters": {"upstream": "{upstream.run_key}", "source": "{upstream.parameters.name|none}"},
            },
            "joined": {**dataflow.pipeline_options("joined"), "parameters": {"key": "{join_key}"}},
        },
        {
            "landing": {"storage": {"bucket": "landing", "prefix": "incoming/"}, "pipeline": "ingest"},
            "orders": {"pubsub": {"topic": "orders"}, "pipeline": "orders"},
            "raw": {"pubsub": {"topic": "raw"}, "pipeline": "raw"},
            "after-ingest": {"completion": {"upstream": "ingest"}, "pipeline": "chained"},
            "join": {
                "completion": {"upstream": ["ingest", "orders"], "join_key": "{upstream.run_key}"},
                "pipeline": "joined",
            },
        },
    )
    return make_deliver(monkeypatch, config)


def make_deliver(monkeypatch, config: Path):
    """``deliver(target, attrs, data)``: a raw structured CloudEvent to main.py's ``target`` with
    ``config``; returns ``(status, log entries)``."""
    import functions_framework

    from handlers.launch.runtime import reset_default

    monkeypatch.setenv("PIPELINES_CONFIG", str(config))
    reset_default()
    apps: dict[str, object] = {}

    def deliver(target: str, attrs: dict, data: object) -> tuple[int, list[dict]]:
        if target not in apps:
            apps[target] = functions_framework.create_app(
                target, str(ROOT / "main.py"), "cloudevent"
            ).test_client()
        headers, body = corpus.structured({"id": "bi-1", "time": corpus._rfc3339(now(), 0), **attrs}, data)
        stream, raw = capture_logs()
        logs.set_stream(stream)
        try:
            status = apps[target].post("/", data=body, headers=headers).status_code
        finally:
            logs.set_stream(None)
        return status, [json.loads(line) for line in raw.getvalue().decode().splitlines()]

    return deliver


def storage_event(name: object = "incoming/a.txt", **fields: object) -> tuple[dict, dict]:
    attrs = {
        "type": corpus.STORAGE_FINALIZED,
        "source": "//storage.googleapis.com/projects/_/buckets/landing",
        "subject": "objects/incoming/a.txt",
    }
    data = {"bucket": "landing", "name": name, "generation": "17", "size": "3", "contentType": "text/plain"}
    data.update(fields)
    return attrs, data


def malformed(entries: list[dict], field: str) -> bool:
    return any("malformed" in e["message"] and e.get("field") == field for e in entries)


@pytest.mark.parametrize(
    "fields,field",
    [
        # was rendered as owner="None": a wrong parameter
        ({"metadata": {"owner": None}}, "metadata.owner"),
        ({"metadata": {"owner": ["finance"]}}, "metadata.owner"),
        # was an AttributeError in routing (int has no .split): HTTP 500 and a redelivery loop
        ({"contentType": 5}, "contentType"),
        # was falsy, so the subject's name was used silently
        ({"name": {}}, "name"),
        ({"md5Hash": ["x"]}, "md5Hash"),
    ],
)
def test_a_wrongly_typed_text_field_is_a_malformed_event_never_a_launch(pipelines, dataflow, fields, field):
    attrs, data = storage_event(**fields)
    status, entries = pipelines("on_object_finalized", attrs, data)
    assert status == 200 and malformed(entries, field), entries
    assert dataflow.launches() == []


def test_text_that_is_not_valid_unicode_is_a_malformed_event(pipelines, dataflow):
    # A JSON "\ud800" escape in an object name decodes to a lone surrogate: the ledger write and
    # the run key hash raised UnicodeEncodeError (HTTP 500, redelivered until max_event_age).
    attrs, data = storage_event(name="incoming/\ud800.txt")
    status, entries = pipelines("on_object_finalized", attrs, data)
    assert status == 200 and malformed(entries, "name"), entries
    status, entries = pipelines("on_object_finalized", {**attrs, "id": "x\udfff"}, storage_event()[1])
    assert status == 200 and malformed(entries, "id"), entries
    assert dataflow.launches() == []


def test_a_message_attribute_that_is_not_a_string_is_malformed(pipelines, dataflow):
    # Pub/Sub attributes are strings; {"region": null} was rendered as region="None".
    message = {
        "messageId": "m-1",
        "data": base64.b64encode(b'{"order": {"id": "o-1"}}').decode(),
        "attributes": {"region": None},
    }
    attrs = {"type": corpus.PUBSUB_PUBLISHED, "source": corpus.topic_source("orders")}
    status, entries = pipelines("on_message", attrs, {"message": message})
    assert status == 200 and malformed(entries, "message.attributes.region"), entries
    assert dataflow.launches() == []


@pytest.mark.parametrize("garbage", ["1_000", "\uff11\uff12", "\u0661\u0662", "0x1F", "1e3", " ", "1.5"])
def test_a_generation_that_is_not_decimal_digits_is_malformed_not_another_number(garbage):
    # int() read "1_000" as 1000 and full-width or Arabic-Indic digits as numbers: a garbage
    # generation became another run identity and a different {generation} parameter.
    from handlers.core.errors import EventError
    from handlers.model.events import to_int

    with pytest.raises(EventError) as err:
        to_int(garbage, "generation")
    assert err.value.field == "generation"


@pytest.mark.parametrize("text,value", [("17", 17), (" 17\n", 17), ("+17", 17), ("-3", -3), (17.0, 17)])
def test_numbers_as_strings_or_integral_floats_are_still_read(text, value):
    from handlers.model.events import to_int

    assert to_int(text, "generation") == value


@pytest.mark.parametrize(
    "payload",
    [
        b"[" * 100_000 + b"]" * 100_000,  # was a RecursionError: HTTP 500, redelivered
        b'{"order": {"id": "\\ud800-1"}}',  # a lone surrogate: was a UnicodeEncodeError at the ledger
    ],
)
def test_message_data_nested_too_deep_or_not_valid_unicode_is_not_json(pipelines, dataflow, payload):
    message = {"messageId": "m-2", "data": base64.b64encode(payload).decode(), "attributes": {}}
    attrs = {"type": corpus.PUBSUB_PUBLISHED, "source": corpus.topic_source("orders")}
    status, entries = pipelines("on_message", attrs, {"message": message})
    assert status == 200, entries
    failed = [e for e in entries if e["message"].startswith("parameters could not be rendered")]
    assert failed and "{data.order.id}" in failed[0]["error_message"]
    assert dataflow.launches() == []


@pytest.mark.parametrize(
    "name,dirname,basename",
    [
        ("incoming//x.txt", "incoming/", "x.txt"),  # posixpath.dirname gave "incoming": another prefix
        ("/x.txt", "", "x.txt"),  # and "/" here
        ("a/b/", "a/b", ""),
        ("x.txt", "", "x.txt"),
        ("a/../b.txt", "a/..", "b.txt"),
    ],
)
def test_dirname_is_everything_before_the_last_slash_as_written(name, dirname, basename):
    from handlers.model.events import StorageObject

    obj = StorageObject(bucket="b", name=name, generation=1)
    assert (obj.dirname, obj.basename) == (dirname, basename)
    assert (f"{obj.dirname}/" if "/" in name else "") + obj.basename == name


def test_a_payload_that_is_not_utf8_gives_data_no_value_instead_of_replacement_characters(
    pipelines, dataflow
):
    # {data} was event.data.decode(errors="replace"): b"caf\xe9" launched with source="caf\ufffd".
    message = {"messageId": "m-3", "data": base64.b64encode(b"caf\xe9 \xff").decode(), "attributes": {}}
    attrs = {"type": corpus.PUBSUB_PUBLISHED, "source": corpus.topic_source("raw")}
    status, entries = pipelines("on_message", attrs, {"message": message})
    assert status == 200
    failed = [e for e in entries if e["message"].startswith("parameters could not be rendered")]
    assert failed and "{data}" in failed[0]["error_message"], entries
    assert dataflow.launches() == []
    message = {"messageId": "m-4", "data": base64.b64encode("café\n\x00 ok".encode()).decode()}
    status, _ = pipelines("on_message", attrs, {"message": message})
    assert status == 200
    assert [launch["parameters"] for launch in dataflow.launches()] == [{"source": "café\n\x00 ok"}]


@pytest.mark.parametrize(
    "labels",
    [
        ["pipeline-trigger", "landing"],  # was AttributeError: 'list' object has no attribute 'get' (500)
        "pipeline-trigger=landing",
        {"pipeline-trigger": "landing", "run-key-hash": "a" * 5000},  # a ledger name GCS refuses
        {"pipeline-trigger": "../../ledger", "run-key-hash": "0123456789abcdef0123"},
        {"pipeline-trigger": "landing\n", "run-key-hash": "0123456789abcdef0123"},
        {"pipeline-trigger": ["landing"], "run-key-hash": 5},
    ],
)
def test_status_events_whose_labels_this_project_did_not_write_are_ignored(pipelines, labels):
    job = {"id": "2026-01-01_00_00_00-1", "name": "x", "currentState": "JOB_STATE_DONE", "labels": labels}
    attrs = {"type": corpus.STATUS_CHANGED, "source": "//dataflow.googleapis.com/projects/p/locations/r"}
    status, entries = pipelines("on_job_status", attrs, {"payload": job})
    assert status == 200
    assert [e["message"] for e in entries] == ["job was not launched by this project: ignored"]


def completion_message(**data: object) -> dict:
    body = {
        "specversion": "1.0",
        "type": corpus.RUN_COMPLETED,
        "id": "c-1",
        "time": "2026-01-01T00:00:00Z",
        "data": {"run_key": "landing-1", "pipeline": "ingest", "state": "SUCCEEDED", **data},
    }
    payload = json.dumps(body).encode()
    return {
        "message": {
            "messageId": "m-c1",
            "data": base64.b64encode(payload).decode(),
            "attributes": {"event_type": "run.completed"},
        }
    }


@pytest.mark.parametrize("started_at", ["yesterday", 17, "2026-13-45T00:00:00Z"])
def test_a_completion_whose_times_cannot_be_read_is_acknowledged_with_a_reason(
    world, pipelines, dataflow, started_at
):
    # The upstream lookups parse data.started_at when the trigger renders its parameters (and the
    # fan-in its join key); the EventError escaped dispatch: HTTP 500, redelivered until too old.
    attrs = {"type": corpus.PUBSUB_PUBLISHED, "source": corpus.topic_source(world.completion_topic)}
    status, entries = pipelines("on_message", attrs, completion_message(started_at=started_at))
    assert status == 200, entries
    failures = [e for e in entries if e["severity"] == "ERROR"]
    assert failures and all(
        e["error"] == "EventError" and repr(started_at) in e["error_message"] for e in failures
    )
    assert dataflow.launches() == []


@pytest.fixture
def rest(world, dataflow, monkeypatch):
    """The api function with one launchable pipeline; ``call`` returns ``(response, log entries)``."""
    import functions_framework

    from handlers.launch.runtime import reset_default

    config = world.write_config(
        {
            "backfill": {
                **dataflow.pipeline_options("backfill"),
                "inputs": {"day": {"pattern": "[0-9]{4}-[0-9]{2}-[0-9]{2}"}, "source": {"required": False}},
                "parameters": {"day": "{input.day}", "source": "{input.source|none}"},
            }
        },
        {},
    )
    monkeypatch.setenv("PIPELINES_CONFIG", str(config))
    reset_default()
    client = functions_framework.create_app("api", str(ROOT / "main.py"), "http").test_client()

    def call(method: str, path: str, body: bytes = b"", **headers: str) -> tuple[object, list[dict]]:
        stream, raw = capture_logs()
        logs.set_stream(stream)
        try:
            response = client.open(path, method=method, data=body, headers=headers)
        finally:
            logs.set_stream(None)
        return response, [json.loads(line) for line in raw.getvalue().decode().splitlines()]

    return call


@pytest.mark.parametrize(
    "method,path,body,headers,status",
    [
        ("POST", "/runs", b"{nope", {"Idempotency-Key": "k"}, 400),
        (
            "POST",
            "/runs",
            b'{"pipeline": "backfill", "parameters": {"day": "x"}}',
            {"Idempotency-Key": "k"},
            400,
        ),
        ("POST", "/runs", b'{"pipeline": "nope"}', {"Idempotency-Key": "k"}, 404),
        ("POST", "/runs", b'{"pipeline": "backfill", "parameters": {"day": "2026-01-01"}}', {}, 400),
        ("DELETE", "/pipelines", b"", {}, 405),
        ("GET", "/runs/api-00000000000000000000", b"", {}, 404),
        ("GET", "/etc/passwd", b"", {}, 404),
    ],
)
def test_every_refused_api_request_is_logged_with_its_reason(rest, method, path, body, headers, status):
    # The API answered 4xx bodies but wrote no log line: a refused request left no trace.
    response, entries = rest(method, path, body, **headers)
    assert response.status_code == status
    (entry,) = [e for e in entries if e["message"] == "API request refused"]
    assert entry["severity"] == "WARNING" and entry["status"] == status
    assert entry["method"] == method and entry["error_message"] == response.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "body,problem",
    [
        # RecursionError from json.loads: HTTP 500
        (
            b'{"pipeline": "backfill", "parameters": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
            "nested too deeply",
        ),
        # accepted by Python's parser: launched with source="inf" / "nan"
        (
            b'{"pipeline": "backfill", "parameters": {"day": "2026-01-01", "source": Infinity}}',
            "not valid JSON",
        ),
        (b'{"pipeline": "backfill", "parameters": {"day": "2026-01-01", "source": NaN}}', "not valid JSON"),
        # a lone surrogate reached the ledger write: UnicodeEncodeError, HTTP 500
        (
            b'{"pipeline": "backfill", "parameters": {"day": "2026-01-01", "source": "\\ud800"}}',
            "not valid Unicode",
        ),
    ],
)
def test_bodies_that_are_not_strict_json_or_not_valid_unicode_are_400(rest, dataflow, body, problem):
    response, entries = rest(
        "POST", "/runs", body, **{"Idempotency-Key": "k", "Content-Type": "application/json"}
    )
    assert response.status_code == 400, response.get_data()[:200]
    (detail,) = response.get_json()["error"]["details"]
    assert problem in detail["problem"]
    assert any(e["message"] == "API request refused" for e in entries)
    assert dataflow.launches() == []


# ---- config ------------------------------------------------------------------------------------
def small_config(storage: dict | None = None, attributes: dict | None = None) -> dict:
    return {
        "settings": {"project": "p", "region": "r", "ledger": {"bucket": "b"}},
        "pipelines": {
            "load": {"backend": "dataflow", "template": "gs://t/load", "parameters": {"a": "{name}"}},
            "msg": {"backend": "dataflow", "template": "gs://t/msg", "parameters": {"a": "{topic}"}},
        },
        "triggers": {
            "files": {"storage": {"bucket": "in", **(storage or {})}, "pipeline": "load"},
            "messages": {"pubsub": {"topic": "t", "attributes": attributes or {}}, "pipeline": "msg"},
        },
    }


def route_probe_events(config) -> None:
    import datetime as dt

    from handlers.model.events import MessageEvent, ObjectEvent, StorageObject
    from handlers.route import match as routing

    when = dt.datetime.now(dt.UTC)
    for name in ("2026/a.csv", "x"):
        obj = StorageObject(bucket="in", name=name, generation=1, size=1, content_type="text/csv")
        routing.match_object(config, ObjectEvent("e", when, obj))
    routing.match_message(config, MessageEvent("e", when, "p", "t", "1", b"{}", {"source": "2026-x"}))


@pytest.mark.parametrize(
    "storage,attributes",
    [
        ({"prefix": 2026}, {}),  # YAML reads 2026 as a number: startswith(int) raised TypeError per event
        ({"suffix": True}, {}),
        ({}, {"source": {"prefix": 2026}}),
        ({}, {"source": {"suffix": 5, "regex": 20}}),
    ],
)
def test_scalar_match_values_are_text_so_an_accepted_config_routes_every_event(storage, attributes):
    from handlers.model.config import build_config

    route_probe_events(build_config(small_config(storage, attributes)))


@pytest.mark.parametrize(
    "storage,attributes,where",
    [
        ({"prefix": ["2026/"]}, {}, "trigger 'files'.storage.prefix"),
        ({"glob": "[z-a].csv"}, {}, "trigger 'files'.storage.glob"),  # was re.error out of the loader
        ({"glob": ["*.csv"]}, {}, "trigger 'files'.storage.glob"),  # was str(list) as a glob
        ({"regex": ["a"]}, {}, "trigger 'files'.storage.regex"),
        ({"content_type": [["text/csv"]]}, {}, "trigger 'files'.storage.content_type"),
        ({}, {"source": {"prefix": ["a"]}}, "trigger 'messages'.pubsub.attributes.source.prefix"),
        ({}, {"source": {"equals": {"a": 1}}}, "trigger 'messages'.pubsub.attributes.source.equals"),
    ],
)
def test_match_values_that_are_not_text_are_config_problems(storage, attributes, where):
    from handlers.core.errors import ConfigError
    from handlers.model.config import build_config

    with pytest.raises(ConfigError) as err:
        build_config(small_config(storage, attributes))
    assert any(p.startswith(where + ":") for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("text", ["[" * 5_000 + "]" * 5_000, "{a: " * 5_000 + "1" + "}" * 5_000])
def test_a_config_nested_deeper_than_the_yaml_parser_goes_is_a_config_error(tmp_path, text):
    # yaml.safe_load raised RecursionError, which is not a ConfigError: `validate` crashed.
    from handlers.core.errors import ConfigError
    from handlers.model.config import load_config

    path = tmp_path / "deep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.problems == ["not a usable config: nested too deeply"]


def mutated(path: tuple, value: object) -> dict:
    doc = small_config()
    doc["pipelines"]["load"]["inputs"] = {"day": {"pattern": "[0-9]+"}}
    node = doc
    for step in path[:-1]:
        node = node.setdefault(step, {})
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    "path,value,where",
    [
        (
            ("settings", "max_event_age"),
            float("nan"),
            "settings.max_event_age",
        ),  # NaN: nothing is ever too old
        (("settings", "ledger", "lease"), float("inf"), "settings.ledger.lease"),
        (("settings", "ledger", "bucket"), ["a"], "settings.ledger.bucket"),  # was the bucket "['a']"
        (("settings", "completion_topic"), {"a": 1}, "settings.completion_topic"),
        (("pipelines", "load", "region"), ["r"], "pipeline 'load'.region"),
        (("pipelines", "load", "inputs", "day", "pattern"), ["a", "b"], "pipeline 'load'.inputs.day.pattern"),
        (  # "$" let the trailing newline through
            ("pipelines", "load\n"),
            {
                "backend": "dataflow",
                "template": "gs://t/x",
                "inputs": {"a": {}},
                "parameters": {"a": "{input.a}"},
            },
            "pipeline 'load\n'",
        ),
    ],
)
def test_settings_the_validator_let_through_are_listed_problems(path, value, where):
    from handlers.core.errors import ConfigError
    from handlers.model.config import build_config

    with pytest.raises(ConfigError) as err:
        build_config(mutated(path, value))
    assert any(p.startswith(where + ":") for p in err.value.problems), err.value.problems


def test_a_null_ledger_prefix_means_the_default_prefix():
    from handlers.model.config import build_config

    assert (
        build_config(mutated(("settings", "ledger", "prefix"), None)).settings.ledger_prefix
        == "pipeline-ledger/"
    )


# ---------------------------------------------------------------------------------------------
# Bugs this suite found in completion, chaining and launch (reported, then fixed there)
# ---------------------------------------------------------------------------------------------
def test_regression_a_completion_whose_job_is_not_an_object_is_acknowledged(world, pipelines, dataflow):
    attrs = {"type": corpus.PUBSUB_PUBLISHED, "source": corpus.topic_source(world.completion_topic)}
    status, _ = pipelines("on_message", attrs, completion_message(job=["job-1"]))
    assert status == 200


def test_regression_a_completion_whose_parameters_are_not_an_object_is_acknowledged(
    world, pipelines, dataflow
):
    attrs = {"type": corpus.PUBSUB_PUBLISHED, "source": corpus.topic_source(world.completion_topic)}
    status, _ = pipelines("on_message", attrs, completion_message(parameters=["name"]))
    assert status == 200


def test_regression_a_completion_in_a_state_nobody_waits_for_is_logged(world, dataflow, monkeypatch):
    config = world.write_config(
        {
            "ingest": {**dataflow.pipeline_options("ingest"), "parameters": {"name": "{name}"}},
            "chained": {
                **dataflow.pipeline_options("chained"),
                "parameters": {"upstream": "{upstream.run_key}"},
            },
        },
        {
            "landing": {"storage": {"bucket": "landing"}, "pipeline": "ingest"},
            "after-ingest": {"completion": {"upstream": "ingest"}, "pipeline": "chained"},  # SUCCEEDED only
        },
    )
    deliver = make_deliver(monkeypatch, config)
    attrs = {"type": corpus.PUBSUB_PUBLISHED, "source": corpus.topic_source(world.completion_topic)}
    status, entries = deliver("on_message", attrs, completion_message(state="CANCELLED"))
    assert status == 200 and dataflow.launches() == []
    assert entries, "acknowledged without a log line"


def test_regression_a_launch_failed_completion_has_no_negative_duration(world, dataflow):
    # LaunchService._record_unlaunchable stamps ended_at with its clock, then Ledger.create stamps
    # created_at with a later now(): the completion's duration is ended - created < 0 whenever a
    # millisecond passes in between (a clock 1 ms behind makes that deterministic here).
    import datetime as dt

    import jsonschema

    from handlers.core.times import now as ledger_now
    from handlers.follow.completion import build_event
    from handlers.launch.service import LaunchService
    from tests.support.world import SCHEMA

    config = world.config(
        {"ingest": {**dataflow.pipeline_options("ingest"), "parameters": {"owner": "{metadata.owner}"}}},
        {"landing": {"storage": {"bucket": "landing"}, "pipeline": "ingest"}},
    )
    runtime = world.runtime(config)
    from handlers.model.events import ObjectEvent, StorageObject

    event = ObjectEvent("e-1", ledger_now(), StorageObject(bucket="landing", name="a.txt", generation=1))
    service = LaunchService(runtime, clock=lambda: ledger_now() - dt.timedelta(milliseconds=1))
    outcome = service.start(config.triggers["landing"], event)
    assert outcome.result == "failed"  # {metadata.owner} has no value
    run = runtime.ledger.get(outcome.run_key)
    jsonschema.validate(build_event(run, config.settings.project), SCHEMA)


# ---------------------------------------------------------------------------------------------
# The CI slice of the generated corpus, and the oracles' self-tests
# ---------------------------------------------------------------------------------------------
SLICE_CASES = 350  # 25 rounds of the category schedule
SLICE_SEED = 20261122


@pytest.fixture(scope="module")
def suite(pubsub_emulator, gcs_server, dataflow_emulator, fabric_emulator, tmp_path_factory):
    """One bad-input run on the session's emulators (its own ledger bucket and completion topic)."""
    from evidence.reliability.badinput import BadInputRun, Services
    from handlers.core import clients
    from handlers.launch.runtime import reset_default

    services = Services(pubsub_emulator.host, gcs_server.url, dataflow_emulator, fabric_emulator)
    run = BadInputRun(services, tmp_path_factory.mktemp("badinput"))
    with pytest.MonkeyPatch.context() as mp:
        for name, value in run.environment().items():
            mp.setenv(name, value)
        run.prepare()
        yield run
    clients.reset()
    reset_default()


def test_the_generated_corpus_slice_meets_every_oracle(suite):
    from evidence.reliability.badinput import execute, figures

    cases = corpus.generate(SLICE_CASES, SLICE_SEED, completion_topic=suite.completion_topic)
    assert len(cases) == SLICE_CASES
    results, drain = execute(suite, cases)
    fig = figures(results, drain, seed=SLICE_SEED, seconds=0)
    failures = "\n".join(json.dumps(f, ensure_ascii=True)[:600] for f in fig["failures"])
    assert fig["failed_cases"] == 0, f"{fig['violation_kinds']}\n{failures}"
    assert fig["secret_leaks"] == 0, fig["leaks"]
    assert fig["drain"]["sweep_errors"] == [] and fig["drain"]["active_runs_left"] == 0
    assert fig["drain"]["completion_schema_violations"] == []
    # The slice covers every category, launches for real, and reads back what it wrote.
    assert set(fig["per_category"]) == set(corpus.CATEGORIES)
    assert fig["launched_correctly"] >= 50
    assert fig["per_category"]["rest"]["rest_4xx"] >= 20
    assert fig["drain"]["completion_events"] >= 50 and fig["drain"]["ledger_objects_read"] >= 50


# ---- each oracle can fire ---------------------------------------------------------------------
def test_the_secret_oracle_finds_a_planted_leak(suite, monkeypatch):
    import os

    from evidence.reliability.badinput import DrainReport
    from handlers.model.events import ObjectEvent

    original = ObjectEvent.summary
    monkeypatch.setattr(
        ObjectEvent, "summary", lambda self: {**original(self), "note": os.environ["FABRIC_REFRESH_TOKEN"]}
    )
    result = suite.run_case(corpus.example_storage_case(900_001, now(), "incoming/leak.txt"))
    assert result.launches  # the run is recorded with the planted summary
    report = DrainReport()
    suite.read_back(report)
    assert "ledger object: FABRIC_REFRESH_TOKEN found" in report.leaks
    from evidence.reliability.badinput import find_secrets

    assert find_secrets([b'{"x": "a\\"b"}'], {"quoted": 'a"b'}) == ["quoted found"]  # JSON-escaped too


def test_the_launch_oracle_catches_a_mangled_name(suite, monkeypatch):
    from handlers.model import events

    original = events.object_lookup

    def truncating(event):
        lookup = original(event)
        return lambda path: lookup(path)[:20] if path == "name" else lookup(path)

    monkeypatch.setattr(events, "object_lookup", truncating)
    result = suite.run_case(corpus.example_storage_case(900_002, now(), "incoming/" + "\u202e" * 30 + ".txt"))
    assert (
        result.launch_verdict == "wrong" and "launched with parameters no oracle allows" in result.violations
    )


def test_the_launch_oracle_catches_a_launch_for_a_non_matching_event(suite, monkeypatch):
    from handlers.route import match as routing

    monkeypatch.setattr(routing, "object_reasons", lambda trigger, event: [])  # everything matches
    result = suite.run_case(corpus.example_storage_case(900_003, now(), "elsewhere/x.csv"))
    assert result.launch_verdict == "wrong"


def test_the_exception_oracle_catches_an_unhandled_error_and_a_retry(suite, monkeypatch):
    from handlers.core.errors import LedgerUnavailable
    from handlers.route import plan

    def boom(config, event):
        raise ValueError("planted")

    monkeypatch.setattr(plan, "match_message", boom)
    result = suite.run_case(corpus.example_message_case(900_004, now(), "o-1"))
    assert result.outcome == "unhandled" and result.statuses == [500]
    assert any("ValueError: planted" in e for e in result.exceptions)

    def transient(config, event):
        raise LedgerUnavailable("planted")

    monkeypatch.setattr(plan, "match_message", transient)
    result = suite.run_case(corpus.example_message_case(900_005, now(), "o-2"))
    assert result.outcome == "retried" and result.failed


def test_the_reason_oracle_catches_a_silent_acknowledgement(suite, monkeypatch):
    from handlers.entry import functions as dispatch

    monkeypatch.setattr(dispatch, "handle_object_finalized", lambda cloud_event, runtime: [])
    result = suite.run_case(corpus.example_storage_case(900_006, now(), "incoming/quiet.txt"))
    assert not result.logged_reason and result.launch_verdict == "missing"


def test_the_rest_oracle_catches_an_error_body_that_breaks_the_contract(suite, monkeypatch):
    from handlers.entry import api

    monkeypatch.setattr(api.ApiError, "body", lambda self: {"error": {"code": self.code}})
    case = corpus.example_rest_case(900_007, day="yesterday")
    case.deliveries[0].statuses = frozenset({400})
    case.launches = corpus.NONE
    result = suite.run_case(case)
    assert any("breaks the OpenAPI contract" in v for v in result.violations)


def test_the_config_oracle_catches_an_unlisted_problem_and_a_crash(suite, monkeypatch):
    from handlers.core.errors import ConfigError
    from handlers.model import config

    def vague(raw, source="<config>"):
        raise ConfigError(["something is wrong"], source=source)

    monkeypatch.setattr(config, "build_config", vague)
    result = suite.run_case(corpus.example_config_case(900_008))
    assert result.violations == ["problem not listed: 'settings.ledger.bucket'"]

    def crash(raw, source="<config>"):
        raise KeyError("planted")

    monkeypatch.setattr(config, "build_config", crash)
    result = suite.run_case(corpus.example_config_case(900_009))
    assert result.outcome == "unhandled"


@pytest.mark.parametrize(
    "path,value,where",
    [
        (
            ("pipelines", "load", "backend"),
            ["dataflow"],
            "pipeline 'load'.backend",
        ),  # was TypeError: unhashable
        (("pipelines", "load", "backend"), {"name": "dataflow"}, "pipeline 'load'.backend"),
    ],
)
def test_a_backend_that_is_not_text_is_a_config_problem_not_a_type_error(path, value, where):
    from handlers.core.errors import ConfigError
    from handlers.model.config import build_config

    with pytest.raises(ConfigError) as err:
        build_config(mutated(path, value))
    assert any(p.startswith(where + ":") for p in err.value.problems), err.value.problems


def test_a_fan_in_join_key_that_is_not_text_is_a_config_problem():
    from handlers.core.errors import ConfigError
    from handlers.model.config import build_config

    doc = corpus.suite_config_for_mutation()
    doc["triggers"]["join-both"]["completion"]["join_key"] = ["{upstream.parameters.day}"]  # was str(list)
    with pytest.raises(ConfigError) as err:
        build_config(doc)
    assert any(p.startswith("trigger 'join-both'.completion.join_key:") for p in err.value.problems)
