"""The local stack: the whole product on loopback, with no cloud account (the CLI of ``make demo``
and ``make up``).

    python -m local.stack demo [--timeout 90] [--keep-going] [--chain-backend auto]
    python -m local.stack up   [--config FILE] [--templates FILE] [--apps FILE] [--items FILE]

``demo`` starts every service, drops ``examples/demo/sample.txt`` in the landing bucket and prints
a live timeline of what really happens: the storage notification, the run claimed in the ledger,
the Dataflow job (the emulator's ``wordcount`` template really counts the words), its completion
event, the chained pipeline launched from that event, and its completion. It exits 0 once the
last pipeline of the chain published SUCCEEDED, non-zero with a one-line reason otherwise, and
always stops every process it started.

``up`` starts the same stack for a config of your own (default: the demo's), prints the
environment variables and commands to use it, streams the timeline of whatever happens, and stops
cleanly on Ctrl-C.

What runs (all on 127.0.0.1, free ports), assembled by :class:`local.world.LocalWorld`:

- Google's Pub/Sub emulator (Java) and fake-gcs-server, which publishes object notifications to a
  topic (:mod:`local.services`);
- the backend emulators in this process, through their kits (:mod:`local.kits`): Dataflow always,
  the others when the config uses them and this checkout has them; the Dataflow emulator pushes
  ``statusChanged`` events to ``on_job_status``;
- one functions-framework process per entry point of ``main.py`` (``on_message``,
  ``on_job_status``, ``check_runs``, ``on_object_finalized``; ``api`` when main.py has it), with
  ``PIPELINES_CONFIG`` pointing at a generated copy of the config and the emulator endpoints set;
- push subscriptions as Eventarc would deliver: storage notifications, trigger topics and the
  completion topic into ``on_message``, a sweep topic into ``check_runs`` (published every
  ``--sweep-every`` seconds, standing in for Cloud Scheduler's every minute).

This module is process control and the CLI; the config choice is :mod:`local.demo`, the timeline
:mod:`local.timeline`. See ``docs/local-stack.md``.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures as cf
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from handlers.backends import registry
from handlers.entry.cli.output import clean
from handlers.entry.manual import launchable
from local.demo import (
    CHAIN_PREFERENCE,
    DEMO_CONFIG,
    DEMO_FIXTURES,
    DEMO_OBJECT,
    DEMO_SAMPLE,
    Plan,
    StackError,
    emulator_available,
    example_message,
    example_object,
    make_plan,
    show_output,
    title,
    wait_for_chain,
)
from local.kits import kits_for, names
from local.kits.base import FixtureError
from local.services import (
    LOOPBACK,
    FakeGcs,
    FunctionServer,
    PubSubEmulator,
    ServiceError,
    find_fake_gcs_binary,
    find_pubsub_emulator,
    publish,
    storage_client,
)
from local.timeline import Observer, Timeline, TimelineEvent
from local.world import LocalWorld, no_proxy

ROOT = Path(__file__).resolve().parents[1]
NOTIFICATION_TOPIC = "gcs-notifications"
SWEEP_TOPIC = "pipeline-sweep"
WATCH_COMPLETIONS = "stack-watch-completions"
WATCH_NOTIFICATIONS = "stack-watch-notifications"
EVENT_FUNCTIONS = ("on_message", "on_job_status", "check_runs", "on_object_finalized")


class Interrupted(BaseException):
    """SIGINT/SIGTERM/SIGHUP arrived: unwind to the ``finally`` that stops everything."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def main_has_function(name: str) -> bool:
    """Whether main.py defines a top-level function ``name`` (the HTTP ``api`` is optional)."""
    try:
        tree = ast.parse((ROOT / "main.py").read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in tree.body)


@dataclass
class StackTimes:
    startup: float = 0.0
    shutdown: float = 0.0


@dataclass
class Stack:
    """The local world of the demo and ``up``: :meth:`start` assembles it for the plan (through
    :class:`~local.world.LocalWorld`), wires the push subscriptions and runs the sweeper;
    :meth:`close` stops it all (idempotent, no process left behind)."""

    plan: Plan
    work_dir: Path
    registrations: Mapping[str, Sequence[Path]] = field(default_factory=dict)
    sweep_every: float = 2.0
    client_env: dict[str, str] = field(default_factory=dict)
    times: StackTimes = field(default_factory=StackTimes)
    world: LocalWorld | None = None
    _sweeper: threading.Thread | None = None
    _stop_sweeping: threading.Event = field(default_factory=threading.Event)
    _closed: bool = False

    @property
    def logs_dir(self) -> Path:
        return self.work_dir / "logs"

    @property
    def pubsub(self) -> PubSubEmulator | None:
        return self.world.pubsub if self.world else None

    @property
    def gcs(self) -> FakeGcs | None:
        return self.world.gcs if self.world else None

    @property
    def functions(self) -> dict[str, FunctionServer]:
        return self.world.functions if self.world else {}

    @property
    def started_anything(self) -> bool:
        return bool(self.world and self.world.services)

    def backends(self) -> list[str]:
        """The backends to emulate: Dataflow always, the config's others when their emulator exists."""
        wanted = [
            b for b in names() if b == "dataflow" or (b in self.plan.backends and emulator_available(b))
        ]
        return list(kits_for(wanted))

    # -- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        started = time.monotonic()
        plan = self.plan
        find_pubsub_emulator()  # missing emulator or Java: a ServiceError saying what to install,
        find_fake_gcs_binary()  # before anything was started
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        world = self.world = LocalWorld(self.work_dir, project=plan.project)
        names_ = [*EVENT_FUNCTIONS, *(["api"] if main_has_function("api") else [])]
        pubsub_port, gcs_port, *function_ports = distinct_free_ports(2 + len(names_))
        pubsub_host = f"{LOOPBACK}:{pubsub_port}"
        gcs_url = f"http://{LOOPBACK}:{gcs_port}"
        ports = dict(zip(names_, function_ports, strict=True))
        url = {name: f"http://{LOOPBACK}:{port}" for name, port in ports.items()}

        # The emulators run in this process; the wordcount implementation reads and writes objects
        # through STORAGE_EMULATOR_HOST, so this process points at fake-gcs-server too.
        os.environ.update(
            {
                "STORAGE_EMULATOR_HOST": gcs_url,
                "PUBSUB_EMULATOR_HOST": pubsub_host,
                "GOOGLE_CLOUD_PROJECT": plan.project,
                "NO_PROXY": no_proxy(),  # loopback calls never go through a proxy
                "no_proxy": no_proxy(),
            }
        )
        try:
            world.start_backends(
                self.backends(),
                pipelines=plan.config.pipelines.values(),
                files=self.registrations,
                notify_url=url["on_job_status"] + "/",
            )
        except FixtureError as exc:
            raise StackError(str(exc)) from exc
        backend_env = world.backend_env()
        self.client_env = {
            "STORAGE_EMULATOR_HOST": gcs_url,
            "PUBSUB_EMULATOR_HOST": pubsub_host,
            "GOOGLE_CLOUD_PROJECT": plan.project,
            "PIPELINES_CONFIG": str(plan.source),
            "PIPELINES_ANONYMOUS_AUTH": "true",
            **{k: v for k, v in backend_env.items() if v},
        }
        function_env = {
            **backend_env,
            **self.client_env,
            "API_AUDIENCE": "",  # an inherited audience would make the local API ask curl for a Google token
            "NO_PROXY": no_proxy(),
            "no_proxy": no_proxy(),
        }
        servers = [world.add_function(name, function_env) for name in names_]

        # Slow starts in parallel: the JVM and one Python interpreter per function.
        pool = cf.ThreadPoolExecutor(max_workers=len(names_) + 1, thread_name_prefix="stack-start")
        try:
            pubsub = pool.submit(world.start_pubsub, pubsub_port)
            functions = [pool.submit(s.start, port=ports[s.target]) for s in servers]
            pubsub.result()
            self._create_pubsub_and_storage(gcs_port)
            for fut in functions:
                fut.result()
        finally:
            pool.shutdown(wait=True)  # no start may still be under way when close() runs
        self._subscribe(url)
        self._start_sweeper()
        self.times.startup = time.monotonic() - started

    def _create_pubsub_and_storage(self, gcs_port: int) -> None:
        assert self.world is not None
        plan = self.plan
        topics = {SWEEP_TOPIC, *plan.trigger_topics}
        pull = {WATCH_NOTIFICATIONS: NOTIFICATION_TOPIC}
        if plan.completion_topic:
            topics.add(plan.completion_topic)
            pull[WATCH_COMPLETIONS] = plan.completion_topic
        # Watch subscriptions exist before anything is published, so the timeline misses nothing.
        self.world.create(topics=sorted({NOTIFICATION_TOPIC, *topics}), pull=pull)
        only = plan.storage_buckets[0] if len(plan.storage_buckets) == 1 else None
        self.world.start_gcs(gcs_port, notify_topic=NOTIFICATION_TOPIC, bucket=only)
        self.world.create(buckets=plan.buckets)

    def _subscribe(self, url: Mapping[str, str]) -> None:
        assert self.world is not None
        project = self.plan.project
        routes = [(NOTIFICATION_TOPIC, "on_message"), (SWEEP_TOPIC, "check_runs")]
        routes += [(topic, "on_message") for topic in self.plan.trigger_topics]
        # backends that publish run status to Pub/Sub (Data Fusion): on_message completes the runs
        routes += [
            (t, "on_message") for t in self.world.enable_status_topics(self.plan.config.pipelines.values())
        ]
        if self.plan.completion_topic:
            routes.append((self.plan.completion_topic, "on_message"))
        # The path makes functions-framework give the CloudEvent the topic's source.
        self.world.create(
            push={
                f"stack-{topic}-to-{fn}": (topic, f"{url[fn]}/projects/{project}/topics/{topic}")
                for topic, fn in routes
            }
        )

    def _start_sweeper(self) -> None:
        assert self.pubsub is not None
        host, project = self.pubsub.host, self.plan.project

        def loop() -> None:
            while not self._stop_sweeping.wait(self.sweep_every):
                with contextlib.suppress(Exception):
                    publish(project, SWEEP_TOPIC, b'{"from": "local-stack"}', emulator_host=host)

        self._sweeper = threading.Thread(target=loop, name="stack-sweep", daemon=True)
        self._sweeper.start()

    # -- introspection -------------------------------------------------------------------------------
    def process_groups(self) -> list[dict[str, Any]]:
        """Every started process group and its live pids (for tests and ``--pids-file``)."""
        return self.world.process_groups() if self.world else []

    def describe(self) -> list[tuple[str, str]]:
        """(name, address) of every service, for the start-up summary."""
        rows: list[tuple[str, str]] = []
        if self.pubsub is not None:
            rows.append(("Pub/Sub emulator", self.pubsub.host))
        if self.gcs is not None:
            rows.append(("fake-gcs-server", self.gcs.url))
        for backend, handle in (self.world.emulators if self.world else {}).items():
            rows.append((f"{title(backend)} emulator", handle.url))
        for name, server in self.functions.items():
            rows.append((name, server.url))
        return rows

    # -- stop ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the sweeper, then the world; idempotent; StackError naming what would not stop."""
        if self._closed:
            return
        self._closed = True
        self._stop_sweeping.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=5)
        problems = self.world.close() if self.world else []
        self.times.shutdown = self.world.shutdown_seconds if self.world else 0.0
        if problems:
            raise StackError("shutdown: " + "; ".join(problems))


def observer_for(stack: Stack, timeline: Timeline) -> Observer:
    """An observer of every signal ``stack`` offers."""
    assert stack.pubsub is not None and stack.gcs is not None
    return Observer(
        timeline,
        project=stack.plan.project,
        pubsub_host=stack.pubsub.host,
        gcs_url=stack.gcs.url,
        config=stack.plan.config,
        functions=stack.functions,
        watch_completions=WATCH_COMPLETIONS if stack.plan.completion_topic else None,
        watch_notifications=WATCH_NOTIFICATIONS,
    )


def distinct_free_ports(count: int) -> list[int]:
    """``count`` different free loopback ports: all sockets are held open until every port is known
    (asking one at a time may hand out the same port twice)."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


# ================================================================================= demo and up


def _write_pids(path: Path | None, stack: Stack) -> None:
    if path is not None:
        path.write_text(json.dumps({"groups": stack.process_groups()}, indent=2))


def print_services(stack: Stack, out: TextIO) -> None:
    print(f"Local stack up in {stack.times.startup:.1f}s (logs: {stack.logs_dir}):", file=out)
    for name, address in stack.describe():
        print(f"  {name:<22} {address}", file=out)
    print(file=out, flush=True)


def print_client_env(stack: Stack, out: TextIO) -> None:
    """The variables and commands a client needs to use the running stack."""
    plan = stack.plan
    print("Use it from another shell:", file=out)
    keys = ("STORAGE_EMULATOR_HOST", "PUBSUB_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT",
            *registry.endpoint_envs(), "PIPELINES_CONFIG", "PIPELINES_ANONYMOUS_AUTH")  # fmt: skip
    # then the rest (a Fabric kit's fake app registration): the CLI's cancel and launch need them too
    keys += tuple(sorted(k for k in stack.client_env if k not in keys))
    for key in keys:
        if stack.client_env.get(key):
            print(f"  export {key}={shlex.quote(stack.client_env[key])}", file=out)
    for name, server in stack.functions.items():
        print(f"  export FUNCTION_{name.upper()}_URL={server.url}", file=out)
    q = json.dumps  # a JSON string is a Python string literal in double quotes
    trigger = next(iter(plan.config.triggers_of("storage")), None)
    if trigger and trigger.storage:
        name = example_object(trigger.storage.glob or trigger.storage.prefix or "")
        code = (
            "from google.cloud import storage; from google.auth.credentials import AnonymousCredentials; "
            f"storage.Client({q(plan.project)}, AnonymousCredentials()).bucket({q(trigger.storage.bucket)})"
            f'.blob({q(name)}).upload_from_string("hello local stack")'
        )
        print(
            "\nUpload a file; google-cloud-storage finds the emulator through STORAGE_EMULATOR_HOST:",
            file=out,
        )
        print(f"  {_python_command(code)}", file=out)
    ptrigger = next(iter(plan.config.triggers_of("pubsub")), None)
    topic = SWEEP_TOPIC
    body: dict[str, Any] = {}
    attrs: dict[str, str] = {}
    what = "to the sweep topic (check active runs now)"
    if ptrigger is not None and ptrigger.pubsub is not None:
        topic, what = ptrigger.pubsub.topic, f"a message for trigger {ptrigger.name}"
        body, attrs = example_message(plan.config, ptrigger)
    extra = f", **{q(attrs)}" if attrs else ""
    code = (
        "from google.cloud import pubsub_v1; "
        f"print(pubsub_v1.PublisherClient().publish({q(f'projects/{plan.project}/topics/{topic}')}, "
        f"{q(q(body))}.encode(){extra}).result())"
    )
    print(f"\nPublish {what}; google-cloud-pubsub finds the emulator through PUBSUB_EMULATOR_HOST:", file=out)
    print(f"  {_python_command(code)}", file=out)
    print(
        "\nThe command line reads the same variables (PIPELINES_ANONYMOUS_AUTH=true: no Google "
        "credentials, loopback only):",
        file=out,
    )
    print(f"  {shlex.quote(sys.executable)} -m handlers runs", file=out)
    if "api" in stack.functions:
        print_curl(stack, out)
    print(file=out, flush=True)


def print_curl(stack: Stack, out: TextIO) -> None:
    """Ready curl calls for the REST API: locally it needs no token (``API_AUDIENCE`` is unset;
    in the cloud the function's IAM is the lock)."""
    url = stack.functions["api"].url
    print("\nThe REST API (no token needed locally):", file=out)
    print(f"  curl -s {url}/pipelines", file=out)
    print(f"  curl -s {url}/runs/RUN_KEY        # a run key from `runs` above", file=out)
    pipeline = next((p for p in stack.plan.config.pipelines.values() if launchable(p)), None)
    if pipeline is not None:
        params: dict[str, str] = {}
        fill = []  # inputs whose pattern a made-up value would break: the reader fills them in
        for i in pipeline.inputs.values():
            if i.default is not None:
                params[i.name] = i.default
            elif i.required and i.pattern is not None:
                params[i.name] = i.name.upper()
                fill.append(f"{i.name.upper()} ({i.description or 'matching ' + i.pattern.pattern})")
            elif i.required:
                params[i.name] = "example"
        body = json.dumps({"pipeline": pipeline.name, "parameters": params})
        note = f"  # replace {', '.join(fill)} first" if fill else ""
        print(
            f"  curl -s -X POST {url}/runs -H 'Content-Type: application/json' "
            f"-H 'Idempotency-Key: try-1' -d {shlex.quote(body)}{note}",
            file=out,
        )


def _python_command(code: str) -> str:
    """``<this python> -c '<code>'``, quoted for a POSIX shell."""
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


@contextlib.contextmanager
def session(
    args: argparse.Namespace,
    out: TextIO,
    plan_for: Callable[[Path], Plan],
    introduce: Callable[[Plan], None],
    registrations: Mapping[str, Sequence[Path]],
) -> Iterator[Stack]:
    """A started stack for the ``with`` body; stopped afterwards however the body ends.

    The work directory (generated config, logs) is removed unless ``--keep-logs`` or a failure.
    """
    work_dir = Path(tempfile.mkdtemp(prefix="local-stack-"))
    stack: Stack | None = None
    failed = False
    try:
        plan = plan_for(work_dir)
        introduce(plan)
        print("Starting the local stack...", file=out, flush=True)
        stack = Stack(plan, work_dir, registrations=registrations, sweep_every=args.sweep_every)
        stack.start()
        _write_pids(args.pids_file, stack)
        print_services(stack, out)
        yield stack
    except (StackError, ServiceError):
        failed = True
        raise
    finally:
        _shutdown(
            stack,
            out,
            bool(args.keep_logs) or (failed and stack is not None and stack.started_anything),
            work_dir,
        )


def run_demo(args: argparse.Namespace, out: TextIO) -> int:
    """``demo``: upload the sample, follow the chain to its end, show the output; 0 on success."""
    chain: list[str] = []

    def plan_for(work_dir: Path) -> Plan:
        plan = make_plan(DEMO_CONFIG, work_dir, demo_variants=True, chain_backend=args.chain_backend)
        chain.extend(plan.chain())
        if len(chain) < 2:
            raise StackError(f"{DEMO_CONFIG} has no chain starting at a storage trigger")
        return plan

    def introduce(plan: Plan) -> None:
        steps = [f"{p} ({title(b)})" for p in chain for b in [plan.config.pipelines[p].backend]]
        print("Event pipelines: local demo", file=out)
        print("  chain: " + " -> ".join(steps), file=out)
        if plan.note:
            print(f"  note: {plan.note}", file=out)

    with session(args, out, plan_for, introduce, DEMO_FIXTURES) as stack:
        plan = stack.plan
        assert stack.gcs is not None
        storage = next(t.storage for t in plan.config.triggers_of("storage") if t.pipeline == chain[0])
        assert storage is not None
        client = storage_client(stack.gcs.url, project=plan.project)
        timeline = Timeline(out)
        observer = observer_for(stack, timeline)
        print(
            f"Timeline (seconds since the upload; a sweep every {args.sweep_every:g}s):", file=out, flush=True
        )
        timeline.origin = time.time()
        observer.start()
        try:
            blob = client.bucket(storage.bucket).blob(DEMO_OBJECT)
            blob.upload_from_filename(str(DEMO_SAMPLE), content_type="text/plain")
            where = f"gs://{storage.bucket}/{DEMO_OBJECT} ({blob.size} bytes)"
            timeline.add(timeline.origin, "file uploaded", where)
            result = wait_for_chain(observer, timeline, plan, chain, args.timeout)
        finally:
            with _signals_deferred():
                observer.stop()
                timeline.flush(everything=True)
        print(f"{timeline.format(TimelineEvent(time.time(), 'done', result.summary()))}", file=out)
        show_output(result, client, out)
        if args.keep_going:
            print("\n--keep-going: the stack stays up.\n", file=out)
            print_client_env(stack, out)
            with contextlib.suppress(Interrupted):  # the demo succeeded: Ctrl-C is the normal end
                follow(stack, out, observer)
    return 0


def follow(stack: Stack, out: TextIO, observer: Observer | None = None) -> None:
    """Stream the timeline until a signal arrives (which raises :class:`Interrupted`).

    ``observer``: carry on with one that already ran (same clock, nothing printed twice).
    """
    if observer is None:
        observer = observer_for(stack, Timeline(out))
        print("Timeline (seconds since now; Ctrl-C stops everything):", file=out, flush=True)
    else:
        print("Timeline, continued (Ctrl-C stops everything):", file=out, flush=True)
    timeline = observer.timeline
    observer.start()
    try:
        while True:
            time.sleep(0.5)
    finally:
        with _signals_deferred():
            observer.stop()
            timeline.flush(everything=True)


def run_up(args: argparse.Namespace, out: TextIO) -> int:
    """``up``: serve a config (default: the demo's) until Ctrl-C, streaming the timeline."""
    config_path = Path(args.config) if args.config else DEMO_CONFIG
    registrations: dict[str, Sequence[Path]] = dict(DEMO_FIXTURES) if not args.config else {}
    for backend, found in kits_for(names()).items():
        files = getattr(args, found.fixtures_option)
        if files:
            registrations[backend] = [Path(p) for p in files]

    def plan_for(work_dir: Path) -> Plan:
        return make_plan(
            config_path, work_dir, demo_variants=not args.config, chain_backend=args.chain_backend
        )

    def introduce(plan: Plan) -> None:
        print(f"Event pipelines: local stack for {config_path}", file=out)
        if plan.note:
            print(f"  note: {plan.note}", file=out)
        missing = sorted(b for b in plan.backends if not emulator_available(b))
        if missing:
            print(
                f"  warning: no {', '.join(missing)} emulator in this checkout: those launches will fail",
                file=out,
            )

    with session(args, out, plan_for, introduce, registrations) as stack:
        print_client_env(stack, out)
        follow(stack, out)
    return 0


def _shutdown(stack: Stack | None, out: TextIO, keep_dir: bool, work_dir: Path) -> None:
    """Stop every service (a second Ctrl-C is held off meanwhile) and report how long it took."""
    with _signals_deferred():
        try:
            if stack is not None and stack.started_anything:
                stack.close()
                startup = f" (start-up took {stack.times.startup:.1f}s)" if stack.times.startup else ""
                print(
                    f"\nStopped every service in {stack.times.shutdown:.1f}s{startup}.", file=out, flush=True
                )
        finally:
            if keep_dir:
                print(f"Logs and the generated config are kept in {work_dir}", file=sys.stderr)
            else:
                shutil.rmtree(work_dir, ignore_errors=True)


# ================================================================================= signals and CLI


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[list[int]]:
    """While shutting down, a second Ctrl-C must not abandon processes: note it and carry on."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {sig: signal.signal(sig, lambda s, f: received.append(s)) for sig in HANDLED_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local.stack",
        description="Run the product on local emulators: `demo` shows a chain end to end, `up` keeps the stack running.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the demo chain once and exit (0 when it completed)")
    demo.add_argument("--timeout", type=float, default=90.0, help="seconds the chain may take (default 90)")
    demo.add_argument("--keep-going", action="store_true", help="keep the stack up after the demo, like `up`")
    up = sub.add_parser("up", help="keep the stack running for your own experiments (Ctrl-C stops it)")
    up.add_argument("--config", help="routing config to serve (default: examples/demo/pipelines.yaml)")
    for found in kits_for(names()).values():  # --templates (Dataflow), --apps (CDAP), --items (Fabric)
        up.add_argument(f"--{found.fixtures_option}", action="append", help=found.fixtures_help)
    for p in (demo, up):
        p.add_argument(
            "--chain-backend",
            default="auto",
            choices=("auto", *CHAIN_PREFERENCE),
            help="demo config only: backend of the chained pipeline (default: the first available of "
            + ", ".join(CHAIN_PREFERENCE)
            + ")",
        )
        p.add_argument("--sweep-every", type=float, default=2.0, help="seconds between sweeps (default 2)")
        p.add_argument(
            "--keep-logs", action="store_true", help="keep the logs and generated config after exit"
        )
        p.add_argument(
            "--pids-file", type=Path, help="write the started process groups and pids here (tests)"
        )
    return parser


def _escaped(exc: BaseException) -> str:
    """An error's text with control characters escaped line by line (a log tail keeps its lines)."""
    return "\n".join(clean(line) for line in str(exc).splitlines())


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    run: Callable[[argparse.Namespace, TextIO], int] = run_demo if args.command == "demo" else run_up
    try:
        with _signals_raise():
            return run(args, out)
    except Interrupted as stop:
        print(f"\nstopped by {stop}", file=sys.stderr)
        return 0 if args.command == "up" else 128 + stop.signum
    except ServiceError as exc:
        print(f"local stack: a service could not start: {_escaped(exc)}", file=sys.stderr)
        return 1
    except StackError as exc:  # may quote a backend's failure reason: escaped like the timeline
        print(f"{args.command} failed: {_escaped(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
