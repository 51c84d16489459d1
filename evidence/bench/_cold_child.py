"""One cold start, in a fresh process: build the function through functions-framework (which imports
its source file), deliver one request, report wall time, the time of each phase and peak RSS as one
JSON line.

    python evidence/bench/_cold_child.py SOURCE TARGET SIGNATURE REQUEST_JSON [--auth-phase] [--config-phase]

Phases (ms, each from the end of the previous one; they add up to ``ms``):

- ``functions_framework``: ``import functions_framework``;
- ``auth_libs``: with ``--auth-phase`` only (ours and the floor): the modules of google-auth's
  credential path (``google.auth``, its Compute Engine credentials, its ``requests`` transport).
  Both sides load exactly these during their first event anyway; loading them first, in a phase of
  their own, keeps the other phases comparable between ours and the floor (otherwise whichever side
  happens to import ``requests`` earlier pays for it in a different phase). The total is the same.
- ``import``: ``create_app``, which imports the source file (``main`` and what it imports);
- ``config``: with ``--config-phase`` only (our functions): ``cached_config()``, the load and
  validation the first event would otherwise do (cached, so the event does not repeat it);
- ``first_event``: the first request, end to end (for ours: the runtime, the credential path, the
  HTTP calls). With ``--auth-phase``, ``http_calls`` and ``http_ms`` count the requests sent and the
  time spent waiting for their answers (all of them are sent during the first event).

Every child also reports its garbage collections (``gc_collections``, ``gc_full``: full passes,
``gc_ms``). Nothing is imported before the clock starts but the standard library's gc/json/sys/time. Peak RSS is
the kernel's high-water mark of this process image (``VmHWM``): ``getrusage``'s ``ru_maxrss`` would
carry the parent's peak over ``fork``/``exec`` and report the launcher's size, not ours.
"""

import gc
import json
import sys
import time

GC = {"collections": 0, "full": 0, "seconds": 0.0}
_gc_started = [0.0]


def _time_gc(phase: str, info: dict[str, int]) -> None:
    """Count the garbage collector's passes and their time (a full pass walks every object the
    imports created: it shows up as a cost of whichever phase happens to trigger it)."""
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    GC["collections"] += 1
    GC["full"] += info.get("generation") == 2
    GC["seconds"] += time.perf_counter() - _gc_started[0]


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


HTTP = {"calls": 0, "seconds": 0.0}


def _time_http() -> None:
    """Count the requests this process sends and the time spent waiting for their answers (inside
    ``requests``' transport adapter: connect, send, the server's work, the answer's headers), so the
    first event's time splits into waiting on the (local) services and the rest."""
    from requests.adapters import HTTPAdapter

    send = HTTPAdapter.send

    def timed(self, request, **kwargs):
        started = time.perf_counter()
        try:
            return send(self, request, **kwargs)
        finally:
            HTTP["calls"] += 1
            HTTP["seconds"] += time.perf_counter() - started

    HTTPAdapter.send = timed  # type: ignore[method-assign,assignment]


def main() -> None:
    source, target, signature, request_file = sys.argv[1:5]
    auth_phase = "--auth-phase" in sys.argv[5:]
    config_phase = "--config-phase" in sys.argv[5:]
    with open(request_file) as fh:
        request = json.load(fh)
    gc.callbacks.append(_time_gc)
    marks = [("start", time.perf_counter())]
    import functions_framework

    marks.append(("functions_framework", time.perf_counter()))
    if auth_phase:
        import google.auth
        import google.auth.compute_engine
        import google.auth.transport.requests  # noqa: F401

        marks.append(("auth_libs", time.perf_counter()))
        _time_http()
    app = functions_framework.create_app(target, source, signature)
    marks.append(("import", time.perf_counter()))
    if config_phase:
        from handlers.model.config import cached_config

        cached_config()
        marks.append(("config", time.perf_counter()))
    client = app.test_client()
    answer = client.open(
        request.get("path", "/"),
        method=request.get("method", "POST"),
        headers=request["headers"],
        data=request["body"].encode(),
    )
    marks.append(("first_event", time.perf_counter()))
    phases = {name: round((t - marks[i][1]) * 1000, 2) for i, (name, t) in enumerate(marks[1:])}
    print(
        json.dumps(
            {
                "status": answer.status_code,
                "ms": round((marks[-1][1] - marks[0][1]) * 1000, 1),
                "phases": phases,
                "http_calls": HTTP["calls"],
                "http_ms": round(HTTP["seconds"] * 1000, 2),
                "gc_collections": GC["collections"],
                "gc_full": GC["full"],
                "gc_ms": round(GC["seconds"] * 1000, 2),
                "peak_rss_mb": peak_rss_mb(),
                "body": answer.get_data(as_text=True)[:300],
            }
        ),
        flush=True,
    )
    sys.stdout.flush()
    # Leave at once: background threads (e.g. a gRPC publisher's) must not hold the measurement up.
    import os

    os._exit(0)


if __name__ == "__main__":
    main()
