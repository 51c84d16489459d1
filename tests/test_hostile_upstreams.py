"""Specification: hostile upstreams (issue 11 item 4).

A loopback server answers from the hostile-upstream corpus (evidence/reliability/hostile_corpus.py):
every backend's launch, find, status and cancel, and the Entra token endpoint, meet each class of
bad answer; the outcome must be the decision the table allows, never an unhandled exception, and no
secret the process holds may come out in any form. End to end, a backend that echoes the bearer
token in its refusal leaves no trace of it in the ledger, the completion event, the REST answer,
the command line's output or the logs.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import functions_framework
import pytest

from evidence.reliability import hostile
from evidence.reliability.hostile_corpus import Answer
from handlers.core import logs
from handlers.entry import cli
from handlers.follow.tracking import Tracker
from handlers.launch.runtime import reset_default
from handlers.launch.service import LaunchService
from tests.support import events as ev

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ("dataflow", "datafusion", "fabric", "dataproc")


@pytest.mark.parametrize("target", [*BACKENDS, "entra"])
def test_every_answer_class_gets_its_decision_and_no_secret_comes_out(target):
    # WHEN every call of the target meets the fixed corpus (each class, every echo form) and 5 fuzzed answers
    report = hostile.run(fuzz=5, seed=11, targets=(target,))
    # THEN nothing is unhandled, each decision is the table's, nothing leaks, no redirect is followed
    assert report["failures"] == []
    assert report["unhandled"] == 0 and report["redirects_followed"] == 0
    # AND the corpus did reach each class of decision
    assert {"retryable", "permanent"} <= set(report["outcomes"])
    assert report["calls"] == report["corpus"] * len(hostile._ops(target))


def test_the_metadata_server_failing_in_any_way_is_a_retryable_credentials_error():
    # The metadata host is read by google-auth when it is imported: a fresh process.
    only = "503-echo-raw,302-elsewhere,200-html,400-google,hang"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "evidence.reliability.hostile",
            "--targets",
            "metadata",
            "--fuzz",
            "0",
            "--only",
            only,
            "--no-write",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["calls"] == 5 and summary["outcomes"] == {"retryable": 5}
    assert summary["redirects_followed"] == 0


@pytest.fixture
def echoing_server():
    state = hostile._State()
    elsewhere = hostile._serve(state, elsewhere_url=lambda: "", elsewhere=True)
    server = hostile._serve(state, elsewhere_url=lambda: f"http://127.0.0.1:{elsewhere.server_address[1]}")
    yield state, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    elsewhere.shutdown()


PIPELINES = {
    "dataflow": {"backend": "dataflow", "template": "gs://t/wordcount"},
    "datafusion": {"backend": "datafusion", "instance": "analytics", "app": "app"},
    "fabric": {
        "backend": "fabric",
        "workspace": "11111111-2222-3333-4444-555555555555",
        "item": "66666666-7777-8888-9999-000000000000",
    },
    "dataproc": {"backend": "dataproc", "pyspark": {"main": "gs://b/job.py"}},
}


@pytest.mark.parametrize(
    ("backend", "form"),
    [("dataflow", "raw"), ("datafusion", "urlencoded"), ("fabric", "suffix"), ("dataproc", "base64")],
)
def test_a_refusal_echoing_the_token_leaves_no_trace_in_ledger_event_api_cli_or_logs(
    world, echoing_server, monkeypatch, backend, form
):
    state, url = echoing_server
    # GIVEN a backend that refuses every launch with the bearer token it was sent in the message
    state.answer = Answer(
        "403-echo", "permanent", 403, '{"error": {"code": 403, "message": "denied for {echo}"}}', echo=form
    )
    pipelines = {"hostile": {**PIPELINES[backend], "parameters": {"input": "gs://{bucket}/{name}"}}}
    triggers = {"landing": {"storage": {"bucket": "landing"}, "pipeline": "hostile"}}
    config_path = world.write_config(pipelines, triggers)
    runtime = world.runtime(world.config(pipelines, triggers), **{backend: hostile._backend(backend, url)})
    stream = io.StringIO()
    logs.set_stream(stream)
    logs.forget_secrets()
    try:
        # WHEN an object event launches it, and the tracking sweep runs
        from handlers.model.events import parse_object_finalized

        outcome = LaunchService(runtime).start(
            runtime.config.triggers["landing"],
            parse_object_finalized(ev.storage_finalized("landing", "in/a.csv")),
        )
        Tracker(runtime).sweep()  # the tracking sweep announces the failed run
    finally:
        logs.set_stream(None)
    # THEN the run failed permanently, and says why
    run = runtime.ledger.get(outcome.run_key)
    assert run is not None and str(run.state) == "LAUNCH_FAILED"
    # AND no form of any secret is in the ledger's objects, the completion event or the logs
    ledger_text = "".join(b.download_as_text() for b in world.gcs.bucket(world.ledger_bucket).list_blobs())
    assert "403" in ledger_text
    completions = json.dumps(world.completions(expect=1, timeout=3))
    assert "LAUNCH_FAILED" in completions
    # AND the REST API's answer about the run, and the command line's listing, carry none either
    monkeypatch.setenv("PIPELINES_CONFIG", str(config_path))
    reset_default()
    client = functions_framework.create_app("api", str(ROOT / "main.py"), "http").test_client()
    answer = client.get(f"/runs/{outcome.run_key}")
    assert answer.status_code == 200
    out = io.StringIO()
    cli.main(["runs", "--config", str(config_path)], stdout=out, stderr=out)
    assert "LAUNCH_FAILED" in out.getvalue()
    for part in (ledger_text, completions, answer.get_data(as_text=True), out.getvalue(), stream.getvalue()):
        assert hostile.leaked(part) == [], part


def test_a_remembered_secret_is_masked_in_every_form_an_upstream_may_echo_it_in():
    import base64
    from urllib.parse import quote

    secret = "Qx7/Vb2+Nm9=Kc4Lp8Zr1Ws6"
    logs.forget_secrets()
    logs.remember_secret(secret)
    try:
        forms = {
            "raw": secret,
            "prefix": secret[:8],
            "suffix": secret[-8:],
            "middle": secret[5:17],
            "urlencoded": quote(secret, safe=""),
            "base64": base64.b64encode(secret.encode()).decode(),
            "json": json.dumps({"m": secret})[7:-2],
        }
        for name, form in forms.items():
            masked = logs.scrub(f"refused: {form} (try again)")
            assert masked == "refused: *** (try again)", name
        # a bearer value, a JWT and a Google access token are masked whoever they belong to
        assert logs.scrub("Authorization: Bearer abcdefgh12345678") == "Authorization: Bearer ***"
        assert logs.scrub("t=eyJhbGciOi.eyJzdWIiOi.sig-nature end") == "t=*** end"
        # seven characters in a row are not enough to be taken for the secret
        assert logs.scrub(f"id {secret[:7]}") == f"id {secret[:7]}"
    finally:
        logs.forget_secrets()
