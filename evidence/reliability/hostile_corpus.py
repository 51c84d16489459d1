"""The hostile-upstream corpus: bad answers a backend, the Entra token endpoint or the metadata server
may give, each with the class of outcome the project must turn it into.

An :class:`Answer` is one HTTP answer (status, headers, body, delay, redirect). Bodies may hold
``{echo}``: the server replaces it with the secret the request carried (the bearer token, or the
client secret / refresh token posted to the token endpoint) in the answer's ``echo`` form (raw,
prefix, suffix, URL-encoded, base64, JSON-escaped). The decision table (docs/RELIABILITY.md)::

    class        answers                                                     allowed outcomes
    retryable    5xx, 429, 408, HTML 502, timeouts, trickled or huge bodies  retryable
    permanent    400/401/403/409, 3xx redirects (never followed)             permanent
    missing      404                                                         permanent, or ok (find: none)
    malformed    2xx that is not JSON, or JSON of the wrong shape or types   retryable, or ok (tolerated)
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

RETRYABLE, PERMANENT, MISSING, MALFORMED = "retryable", "permanent", "missing", "malformed"
ALLOWED: dict[str, frozenset[str]] = {
    RETRYABLE: frozenset({"retryable"}),
    PERMANENT: frozenset({"permanent"}),
    MISSING: frozenset({"permanent", "ok"}),
    MALFORMED: frozenset({"retryable", "ok"}),
}
ECHO_FORMS = ("raw", "prefix", "suffix", "urlencoded", "base64", "json")
HUGE_BYTES = 9 * 1024 * 1024  # over the 8 MiB the client reads


@dataclass(frozen=True)
class Answer:
    name: str
    klass: str
    status: int = 200
    body: str = ""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    echo: str = "raw"
    delay: float = 0.0  # seconds before answering (longer than the client's read timeout: a hang)
    trickle: bool = False  # send the body one byte at a time, slowly
    huge: bool = False  # a body of HUGE_BYTES
    redirect: bool = False  # Location: the "elsewhere" server


def echo_form(secret: str, form: str) -> str:
    """``secret`` as an upstream might echo it back."""
    if form == "prefix":
        return secret[: max(8, len(secret) // 2)]
    if form == "suffix":
        return secret[-max(8, len(secret) // 2) :]
    if form == "urlencoded":
        return quote(secret, safe="")
    if form == "base64":
        return base64.b64encode(secret.encode()).decode()
    if form == "json":
        return json.dumps(secret)[1:-1]
    return secret


# Field names the backends, the token endpoint and the metadata server read: the fuzzer's vocabulary.
KEYS = (
    "id", "name", "job", "jobs", "currentState", "state", "status", "runs", "runid", "batches", "value",
    "error", "message", "errorCode", "access_token", "expires_in", "refresh_token", "createTime",
    "startTime", "endTime", "metadata", "properties", "failureReason", "nextPageToken", "continuationUri",
    "location", "projectId", "done", "response", "batch", "uuid", "stateMessage", "jobMessages", "token_type",
)  # fmt: skip


def _value(rng: random.Random, depth: int) -> Any:
    kinds = (
        ["str", "int", "null", "bool", "list", "dict", "echo"]
        if depth < 3
        else ["str", "int", "null", "echo"]
    )
    kind = rng.choice(kinds)
    if kind == "str":
        return rng.choice(
            ["", "RUNNING", "JOB_STATE_DONE", "Completed", "x" * rng.randint(1, 40), "2024-13-45T99:99"]
        )
    if kind == "int":
        return rng.choice([0, -1, 7, 2**63, 3.5])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "echo":
        return "{echo}"
    if kind == "list":
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def _fuzz_body(rng: random.Random) -> str:
    root = rng.choice(["dict", "dict", "dict", "list", "str", "num", "null"])
    if root == "dict":
        doc: Any = {rng.choice(KEYS): _value(rng, 1) for _ in range(rng.randint(0, 6))}
    elif root == "list":
        doc = [_value(rng, 1) for _ in range(rng.randint(0, 3))]
    elif root == "str":
        doc = "{echo}"
    elif root == "num":
        doc = 42
    else:
        doc = None
    return json.dumps(doc)


def fixed() -> list[Answer]:
    """The hand-written classes, each once."""
    html = "<html><head><title>502 Bad Gateway</title></head><body>upstream {echo} failed</body></html>"
    google_err = '{"error": {"code": %d, "message": "refused for {echo}", "status": "INVALID_ARGUMENT"}}'
    answers = [
        Answer("500-json", RETRYABLE, 500, '{"error": {"code": 500, "message": "internal {echo}"}}'),
        Answer("502-html", RETRYABLE, 502, html, "text/html"),
        Answer("503-retry-after-garbage", RETRYABLE, 503, "", "text/plain", {"Retry-After": "soon-ish"}),
        Answer(
            "429-retry-after-date",
            RETRYABLE,
            429,
            "{}",
            headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"},
        ),
        Answer("408-empty", RETRYABLE, 408, ""),
        Answer("hang", RETRYABLE, 200, "{}", delay=2.0),
        Answer("trickle", RETRYABLE, 200, '{"id": "' + "a" * 64 + '"}', trickle=True),
        Answer("huge-200", RETRYABLE, 200, "", huge=True),
        Answer("huge-500", RETRYABLE, 500, "", huge=True),
        Answer("400-google", PERMANENT, 400, google_err % 400),
        Answer("400-no-message", PERMANENT, 400, '{"error": {}}'),
        Answer("400-typed-wrong", PERMANENT, 400, '{"error": {"message": 5, "status": ["x"]}}'),
        Answer("401-empty", PERMANENT, 401, ""),
        Answer("403-html", PERMANENT, 403, html, "text/html"),
        Answer("409-fabric", PERMANENT, 409, '{"errorCode": "Conflict", "message": "{echo}"}'),
        Answer("400-oauth-no-description", PERMANENT, 400, '{"error": "invalid_grant"}'),
        Answer(
            "400-oauth-empty-description",
            PERMANENT,
            400,
            '{"error": "invalid_grant", "error_description": ""}',
        ),
        Answer(
            "400-oauth-echo", PERMANENT, 400, '{"error": "invalid_client", "error_description": "bad {echo}"}'
        ),
        Answer("302-elsewhere", PERMANENT, 302, "", redirect=True),
        Answer("307-elsewhere", PERMANENT, 307, "", redirect=True),
        Answer("404-empty", MISSING, 404, ""),
        Answer("200-html", MALFORMED, 200, html, "text/html"),
        Answer("200-empty", MALFORMED, 200, ""),
        Answer("200-not-json", MALFORMED, 200, "{echo} ok", "text/plain"),
        Answer("200-wrong-content-type", MALFORMED, 200, '{"id": "{echo}"}', "text/html"),
        Answer("200-list", MALFORMED, 200, '["{echo}"]'),
        Answer("200-null", MALFORMED, 200, "null"),
    ]
    for form in ECHO_FORMS:  # every echo form, in an error text and inside the JSON fields of a 2xx
        answers.append(Answer(f"400-echo-{form}", PERMANENT, 400, google_err % 400, echo=form))
        answers.append(Answer(f"503-echo-{form}", RETRYABLE, 503, "{echo}", "text/plain", echo=form))
        body = json.dumps(
            {
                "id": "{echo}",
                "name": "{echo}",
                "job": {"id": "{echo}", "name": "n", "currentState": "JOB_STATE_FAILED"},
                "state": "Failed",
                "status": "Failed",
                "failureReason": {"message": "{echo}"},
                "stateMessage": "{echo}",
                "access_token": "{echo}",
                "message": "{echo}",
            }
        )
        answers.append(Answer(f"200-fields-echo-{form}", MALFORMED, 200, body, echo=form))
    return answers


def generate(fuzz: int, seed: int) -> list[Answer]:
    """The fixed classes, then ``fuzz`` seeded answers (2xx of random shape, 4xx/5xx of random
    bodies), each with a random echo form."""
    rng = random.Random(seed)
    answers = fixed()
    for n in range(1, fuzz + 1):
        status = rng.choice([200, 200, 200, 201, 400, 403, 409, 500, 503])
        klass = MALFORMED if status < 300 else PERMANENT if status < 500 else RETRYABLE
        answers.append(
            Answer(
                f"fuzz-{n}-{status}",
                klass,
                status,
                _fuzz_body(rng),
                rng.choice(["application/json", "text/plain", "text/html", ""]),
                echo=rng.choice(ECHO_FORMS),
            )
        )
    return answers
