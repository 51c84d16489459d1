"""Replays under faults and crashes: every object exactly one job and one completion.

    python -m evidence.reliability.replay --objects 300 --already 0.3 --kills 6 --rate 0.1 \\
        --kinds 429,503,timeout,reset,lost --seed 1 [--backends dataflow] [--no-write]

The rig of :mod:`evidence.reliability.faults` (real functions under functions-framework; the ledger
and the backend emulators behind fault proxies; the platform redelivering until acknowledged and
firing ``check_runs``). ``--objects`` objects are written to the landing bucket (straight to
fake-gcs-server: no live event comes from it); a fraction ``--already`` of them is delivered live to
``on_object_finalized`` first (a tenth of those twice), as a bucket's history would be. Then, with
``--rate`` faults of ``--kinds`` on every ledger and backend request (the bucket listing included):

- the real command line, ``python -m handlers replay --trigger landing-<backend> --bucket ...
  --prefix ...``, in its own process, with the functions' environment (through the proxies), is
  SIGKILLed ``--kills`` times in the middle of its work (once it launched a random few more jobs:
  between a launch and the next, often between a claim and its launch);
- then run again, unharmed, until it exits 0 (nothing failed), as an operator would.

With ``--source dead-letters`` the replay reads a dead-letter subscription instead of the bucket:
every object's storage notification (``OBJECT_FINALIZE``, JSON_API_V1, as Cloud Storage publishes
it) sits in a subscription of its own per trigger (a tenth of them twice, as a dead-letter topic can
hold one notification twice), and the command is ``python -m handlers replay --trigger ...
--subscription projects/P/subscriptions/dead-letters-<backend>``. A killed replay leaves the
messages it pulled leased until their ack deadline (10 s); the next replay starts after it, as the
docs tell an operator to (docs/cli.md, replay). Exactly once must hold although messages come back
whenever a lease runs out, including in the middle of a replay.

The verdict is read from the services only (:meth:`evidence.reliability.rig.Observed.verdict`): an
object is **lost** without a job, a finished run or a completion; **doubled** with a second job or
completion (completions counted once per Pub/Sub message id; a message the watch pulled twice is
reported apart). Results go to ``results/replay.*``; exit 0 only when nothing was lost or doubled.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from evidence.reliability.faults import LEDGER_MATCH
from evidence.reliability.rig import (
    BACKENDS,
    LANDING_BUCKET,
    CompletionWatch,
    Event,
    Platform,
    Rig,
    RigSettings,
    exactly_once,
    report_run,
    settle,
    sweeping,
)
from local.faultproxy import KINDS, even_rates, parse_kinds
from local.kits import kit
from local.services import LOCAL_PROJECT, publish, storage_client

ROOT = Path(__file__).resolve().parents[2]
# The fault suite's leases (a claim a killed replay left blocks its run for up to 20 s: the next
# replay reports it as a transient failure and the one after takes it over). The functions get a
# longer read timeout than the fault suite's (the sweep's publish to the Pub/Sub emulator can take
# seconds on a loaded machine: a publish that timed out yet went through is republished with the
# same completion id after the publish lease, which the verdict would count as a second completion);
# the replay command line keeps the short one, so an injected timeout costs it 2 s.
SETTINGS = RigSettings(http_timeout="1,6")
CLI_HTTP_TIMEOUT = "1,2"
STALL_SECONDS = 20.0
SOURCES = ("bucket", "dead-letters")
ACK_DEADLINE_SECONDS = 10.0  # the emulator's default for a subscription created without one


@dataclass(frozen=True)
class Options:
    objects: int = 300
    already: float = 0.3
    kills: int = 6
    rate: float = 0.1
    kinds: tuple[str, ...] = KINDS
    seed: int = 1
    max_seconds: float = 900.0
    max_replays: int = 30
    source: str = "bucket"  # or "dead-letters"
    settings: RigSettings = SETTINGS
    keep_dir: bool = False


def _write_objects(rig: Rig, names: list[str]) -> list[Event]:
    """The objects, written straight to fake-gcs-server; the events a live delivery of each would be."""
    bucket = storage_client(rig.gcs.url).bucket(LANDING_BUCKET)

    def put(name: str) -> Event:
        blob = bucket.blob(name)
        blob.upload_from_string(b"hello world\n", content_type="text/plain")
        return Event(
            event_id=str(random.getrandbits(60)),
            bucket=LANDING_BUCKET,
            name=name,
            generation=str(blob.generation),
            time=blob.updated.isoformat().replace("+00:00", "Z"),
        )

    with cf.ThreadPoolExecutor(8) as pool:
        return list(pool.map(put, names))


def _dead_letters(backend: str) -> str:
    return f"dead-letters-{backend}"


def _notification(event: Event) -> tuple[str, dict[str, str]]:
    """The storage notification Cloud Storage publishes for the object (JSON_API_V1)."""
    resource = {
        "kind": "storage#object",
        "bucket": event.bucket,
        "name": event.name,
        "generation": event.generation,
        "size": "12",
        "contentType": "text/plain",
        "timeCreated": event.time,
        "updated": event.time,
    }
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "JSON_API_V1",
        "bucketId": event.bucket,
        "objectId": event.name,
        "objectGeneration": event.generation,
        "notificationConfig": f"projects/_/buckets/{event.bucket}/notificationConfigs/1",
        "eventTime": event.time,
    }
    return json.dumps(resource), attributes


def _fill_dead_letters(rig: Rig, events: list[Event], rng: random.Random) -> int:
    """Each backend's objects' notifications in its own dead-letter subscription (a tenth twice)."""
    backends = sorted({e.backend for e in events})
    rig.world.create(
        topics=[_dead_letters(b) for b in backends],
        pull={_dead_letters(b): _dead_letters(b) for b in backends},
    )
    messages = [e for e in events for _ in range(2 if rng.random() < 0.1 else 1)]
    rng.shuffle(messages)

    def put(event: Event) -> None:
        data, attributes = _notification(event)
        publish(LOCAL_PROJECT, _dead_letters(event.backend), data, attributes, emulator_host=rig.pubsub.host)

    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, messages))
    return len(messages)


def _replay_command(rig: Rig, backend: str, source: str = "bucket") -> list[str]:
    where = (
        ["--bucket", LANDING_BUCKET, "--prefix", f"in/{backend}/"]
        if source == "bucket"
        else ["--subscription", f"projects/{LOCAL_PROJECT}/subscriptions/{_dead_letters(backend)}"]
    )
    return [
        sys.executable,
        "-m",
        "handlers",
        "replay",
        "--config",
        str(rig.config_path),
        "--trigger",
        f"landing-{backend}",
        *where,
        "--json",
    ]


def _jobs(rig: Rig, backend: str) -> int:
    return len(kit(backend).jobs(rig.emulators[backend].url))


def _replay(
    rig: Rig, command: list[str], backend: str, kill_after_jobs: int | None, log: Path
) -> dict[str, Any]:
    """Run the command line once; SIGKILL it once it has launched ``kill_after_jobs`` more jobs
    (``None``: let it end). A kill lands in the middle of the replay, between a launch and the next."""
    env = {**os.environ, **rig.function_env(), "PIPELINES_HTTP_TIMEOUT": CLI_HTTP_TIMEOUT}
    before = _jobs(rig, backend)
    with log.open("ab") as err:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err)
        if kill_after_jobs is not None:
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if _jobs(rig, backend) - before >= kill_after_jobs:
                    proc.kill()
                    proc.communicate()
                    return {"killed": True, "exit": -9, "jobs_before_kill": _jobs(rig, backend) - before}
                time.sleep(0.02)
        out, _ = proc.communicate(timeout=600)
    try:
        doc = json.loads(out or b"{}")
    except ValueError:
        doc = {}
    return {
        "killed": False,
        "exit": proc.returncode,
        "counts": doc.get("counts"),
        "resumed": doc.get("resumed"),
        "jobs_launched": _jobs(rig, backend) - before,
    }


def run(options: Options) -> dict[str, Any]:
    rng = random.Random(options.seed)
    random.seed(options.seed)
    started = time.monotonic()
    backends = options.settings.backends
    with Rig(options.settings, keep_dir=options.keep_dir) as rig:
        rig.start(seed=options.seed)
        names = [
            f"in/{backends[i % len(backends)]}/replay/{options.seed}/{i:05d}.txt"
            for i in range(options.objects)
        ]
        events = _write_objects(rig, names)
        live = [e for e in events if rng.random() < options.already]
        dead_letters = _fill_dead_letters(rig, events, rng) if options.source == "dead-letters" else 0
        platform = Platform(rig, deadline=started + options.max_seconds)
        watch = CompletionWatch(rig)
        wanted = {e.input_file for e in events}
        log = rig.work_dir / "replay-cli.log"
        attempts: list[dict[str, Any]] = []
        with sweeping(platform, every=1.0):
            with cf.ThreadPoolExecutor(8, thread_name_prefix="platform") as pool:
                twice = [e for e in live if rng.random() < 0.1]
                list(pool.map(platform.deliver, live + twice))
            live_done = time.monotonic()
            rates = even_rates(options.rate, options.kinds)
            for name, proxy in rig.proxies.items():
                proxy.set_faults(rates, match=LEDGER_MATCH if name == "ledger" else None)
            # a dead letter pulled by a replay that was killed comes back once its lease ran out
            # (one that ends hands back what it did not acknowledge): the next replay starts after
            lease_wait = ACK_DEADLINE_SECONDS + 1 if options.source == "dead-letters" else 0.0
            for backend in backends:
                command = _replay_command(rig, backend, options.source)
                to_launch = sum(1 for e in events if e.backend == backend) - len(live)
                step = max(1, to_launch // (options.kills + 2))
                for _ in range(options.kills):
                    after = rng.randint(1, step)
                    attempts.append({"backend": backend, **_replay(rig, command, backend, after, log)})
                    time.sleep(lease_wait)
                for _ in range(options.max_replays):
                    result = _replay(rig, command, backend, None, log)
                    attempts.append({"backend": backend, **result})
                    if result["exit"] == 0:
                        break
            replayed = time.monotonic()
            stalled = settle(
                wanted,
                watch.completed,
                lambda: rig.active_markers() == 0,
                deadline=started + options.max_seconds,
                stall_seconds=STALL_SECONDS,
            )
            settled = time.monotonic()
            time.sleep(3.0)  # keep sweeping: a late duplicate would show up now
        for proxy in rig.proxies.values():
            proxy.clear_faults()
        observed = rig.observe()
        messages = watch.poll()
        pulled = Counter(str(m["message_id"]) for m in messages)
        observed.completions = list({str(m["message_id"]): m for m in messages}.values())
        verdict = observed.verdict(events)
        live_inputs = {e.input_file for e in live}
        per_input: dict[str, list[dict[str, Any]]] = {}
        for m in observed.completions:
            data = m["event"].get("data") or {}
            per_input.setdefault(str((data.get("parameters") or {}).get("inputFile")), []).append(
                {"message_id": m["message_id"], "id": m["event"].get("id"), "attempts": data.get("attempts")}
            )
        doubled = [
            {"input": k, "delivered_live_first": k in live_inputs, "completions": v}
            for k, v in per_input.items()
            if len(v) > 1
        ]
        injected: Counter[str] = Counter()
        for proxy in rig.proxies.values():
            injected.update(proxy.counters()["injected"])
    final = [a for a in attempts if not a["killed"]]
    return {
        # exactly once, and each backend's last replay ran to the end with nothing failed
        "goal_met": exactly_once(verdict)
        and all({a["backend"]: a["exit"] for a in final}.get(b) == 0 for b in backends),
        **verdict,
        # the same Pub/Sub message pulled twice by the watch (its ack deadline passed): not a second
        # completion, reported apart (completions above are counted once per message id)
        "completion_messages_pulled_twice": sum(n - 1 for n in pulled.values() if n > 1),
        "objects_delivered_live_first": len(live),
        "source": options.source,
        "dead_letter_messages": dead_letters,
        "duplicate_completion_examples": doubled[:5],
        "duplicate_completions_of_live_objects": sum(1 for d in doubled if d["delivered_live_first"]),
        "replay_processes": len(attempts),
        "replay_processes_killed": sum(1 for a in attempts if a["killed"]),
        "replay_runs_to_the_end": len(final),
        "replay_attempts": attempts,
        "launched_by_replays": sum((a.get("counts") or {}).get("launched", 0) for a in final),
        "fault_rate": options.rate,
        "fault_kinds": list(options.kinds),
        "faults_injected": dict(injected),
        "faults_injected_total": sum(injected.values()),
        "seed": options.seed,
        "settings": {
            "lease": options.settings.lease,
            "publish_lease": options.settings.publish_lease,
            "functions_http_timeout": options.settings.http_timeout,
            "cli_http_timeout": CLI_HTTP_TIMEOUT,
            "backends": list(backends),
        },
        "live_seconds": round(live_done - started, 2),
        "replay_seconds": round(replayed - live_done, 2),
        "settle_seconds": round(settled - replayed, 2),
        "wall_seconds": round(time.monotonic() - started, 2),
        "stalled": stalled,
        **({"work_dir": str(rig.work_dir)} if options.keep_dir else {}),
    }


def write_results(
    figures: dict[str, Any], command: str, out_dir: Path | None = None, *, name: str = "replay"
) -> tuple[Path, Path]:
    from evidence.bench.report import write

    rows = [
        {"figure": "source", "value": figures.get("source", "bucket")},
        {"figure": "objects (distinct)", "value": figures["events"]},
        {"figure": "delivered live before the replay", "value": figures["objects_delivered_live_first"]},
        *(
            [{"figure": "dead-letter messages (some twice)", "value": figures["dead_letter_messages"]}]
            if figures.get("dead_letter_messages")
            else []
        ),
        {
            "figure": "replay processes (SIGKILLed / run to the end)",
            "value": f"{figures['replay_processes']} ({figures['replay_processes_killed']} / "
            f"{figures['replay_runs_to_the_end']})",
        },
        {"figure": "faults injected", "value": figures["faults_injected_total"]},
        {"figure": "**objects lost**", "value": figures["events_lost"]},
        {"figure": "**duplicate jobs**", "value": figures["duplicate_jobs"]},
        {"figure": "**duplicate completions**", "value": figures["duplicate_completions"]},
        {
            "figure": "jobs / completions / ledger runs",
            "value": f"{figures['jobs']} / {figures['completions']} / {figures['ledger_runs']}",
        },
        {"figure": "active markers left", "value": figures["active_markers_left"]},
        {"figure": "wall time (s)", "value": figures["wall_seconds"]},
    ]
    notes = (
        "Lost = an object without a job in the emulator, a finished run in the ledger, or a completion "
        "message. Duplicate = a second job or completion for one object. Judged from the backend "
        "emulators, the ledger bucket (read directly) and a subscription on the completion topic only."
    )
    return write(
        name,
        figures,
        command=command,
        table=rows,
        title="Replay under faults and crashes",
        notes=notes,
        out_dir=out_dir,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evidence.reliability.replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--already", type=float, default=0.3, help="fraction delivered live first")
    parser.add_argument("--kills", type=int, default=6, help="replay processes SIGKILLed per backend")
    parser.add_argument(
        "--rate", type=float, default=0.1, help="fault probability per ledger/backend request"
    )
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"subset of {','.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=900.0)
    parser.add_argument(
        "--backends", default="dataflow", help=f"comma-separated subset of {','.join(BACKENDS)}"
    )
    parser.add_argument(
        "--source",
        choices=SOURCES,
        default="bucket",
        help="replay the bucket, or every object's notification from a dead-letter subscription",
    )
    parser.add_argument("--no-write", action="store_true", help="print the figures only")
    parser.add_argument("--results", default="replay", help="name of the results files (results/NAME.*)")
    parser.add_argument("--keep", action="store_true", help="keep the rig's work dir (logs) and print it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    options = Options(
        objects=args.objects,
        already=args.already,
        kills=args.kills,
        rate=args.rate,
        kinds=tuple(parse_kinds(args.kinds)),
        seed=args.seed,
        max_seconds=args.max_seconds,
        source=args.source,
        keep_dir=args.keep,
        settings=replace(SETTINGS, backends=tuple(b.strip() for b in args.backends.split(",") if b.strip())),
    )
    figures = run(options)

    def written(figures: dict[str, Any], command: str) -> Any:
        return write_results(figures, command, name=args.results)

    return report_run(figures, "evidence.reliability.replay", argv, None if args.no_write else written)


if __name__ == "__main__":
    raise SystemExit(main())
