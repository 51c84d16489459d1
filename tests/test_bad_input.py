"""Specification: bad input never crashes a function, never launches with wrong parameters, is
always logged with a reason, and never leaks a secret.

Two parts:

- hand-written regression cases for what the generated corpus found (each names the bug);
- the CI slice of the generated corpus (``reliability/badinput.py``): a few hundred hypothesis
  cases with a fixed seed through functions-framework against fake-gcs, the Pub/Sub, Dataflow and
  Fabric emulators, every oracle asserted, plus self-tests showing each oracle can fire.
"""

from __future__ import annotations

import io
import json

from handlers import logs


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
