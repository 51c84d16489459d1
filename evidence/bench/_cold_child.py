"""One cold start, in a fresh process: build the function through functions-framework (which imports
its source file), deliver one request, report wall time and peak RSS as one JSON line.

    python evidence/bench/_cold_child.py SOURCE TARGET SIGNATURE REQUEST_JSON

Nothing is imported before the clock starts but the standard library's json/sys/time. Peak RSS is
the kernel's high-water mark of this process image (``VmHWM``): ``getrusage``'s ``ru_maxrss`` would
carry the parent's peak over ``fork``/``exec`` and report the launcher's size, not ours.
"""

import json
import sys
import time


def peak_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    source, target, signature, request_file = sys.argv[1:5]
    with open(request_file) as fh:
        request = json.load(fh)
    started = time.perf_counter()
    import functions_framework

    app = functions_framework.create_app(target, source, signature)
    client = app.test_client()
    answer = client.open(
        request.get("path", "/"),
        method=request.get("method", "POST"),
        headers=request["headers"],
        data=request["body"].encode(),
    )
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "status": answer.status_code,
                "ms": round(elapsed * 1000, 1),
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
