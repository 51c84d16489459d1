"""The one contract every pipeline backend implements and declares, and the normalized run states.

A backend turns a :class:`LaunchRequest` into a running job and answers four questions about it::

    launch(request) -> JobRef          start it (raises AlreadyExists if that name is already active)
    find(request, exclude) -> JobRef | None
                                       the job this run already started, in any state (idempotency)
    status(ref)     -> JobStatus       its current state, normalized
    cancel(ref, drain=False)           stop it (drain: let a streaming job finish its in-flight work)

Everything else the rest of the project needs to know about a backend is *declared* on it, as a
:class:`BackendSpec` its module exports in ``SPECS`` and :mod:`handlers.backends.registry` reads:

=================  ===============================================================================
``options``        its pipeline fields and their validation (``check_options``: every problem listed)
``endpoint_envs``  the environment variables that point it at another endpoint (a local emulator)
``auth``           whose credentials it uses (``google``: default credentials; ``entra``: Microsoft)
``find``           :class:`FindSemantics`: whether ``find`` is exact or guesses, and how long a new
                   run may stay invisible to it
``push``           :class:`StatusPush` or ``None``: how the backend announces a run's status changes
                   without being polled, and the parser that names the run such an event is about
``check_definition``
                   ``None``, or the offline check (``validate``) of a pipeline kept as code: its
                   definition file against the arguments the config passes -> (errors, warnings)
``deploy``         :class:`DeployNeeds`: APIs to enable, IAM grants, credentials to mount, problems
``job_noun``       what a run is called there (job, run, instance, batch), for people
``parameter_limit_bytes``
                   the most rendered parameter text one launch may carry
=================  ===============================================================================

The runtime holds every backend behind :class:`GuardedBackend`: an answer of the wrong shape is a
retryable error, never an unhandled exception, and no echoed secret leaves in what a call returns.

Tracking, completion events, chaining, the deploy plan and the local world only ever read these,
so adding a backend is one module (or folder) here, one registry line, its local kit and its docs.

The contract imports nothing of the project above :mod:`handlers.core`: a pipeline reaches a backend
as a :class:`PipelineTarget`, the few fields of the routing config's pipeline a backend reads.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from handlers.core import logs
from handlers.core.errors import BackendUnavailable, EventError, PipelineError


class RunState(enum.StrEnum):
    """The normalized state of a run, whatever its backend."""

    CLAIMED = "CLAIMED"  # ledger only: an invocation owns the run, no job recorded yet
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    LAUNCH_FAILED = "LAUNCH_FAILED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


# The one set of terminal states: a run in one of them is finished and announced once.
TERMINAL_STATES: tuple[RunState, ...] = (
    RunState.SUCCEEDED,
    RunState.FAILED,
    RunState.CANCELLED,
    RunState.TIMED_OUT,
    RunState.LAUNCH_FAILED,
)


@dataclass(frozen=True)
class LaunchRequest:
    """Everything a backend needs to start one run."""

    run_key: str
    job_name: str
    pipeline: PipelineTarget
    parameters: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)
    # When the run was first claimed: backends without a searchable run key (Fabric) look for
    # job instances started after it when an earlier start attempt's answer was lost.
    requested_at: dt.datetime | None = None


@dataclass(frozen=True)
class JobRef:
    """Where a launched run lives in its backend."""

    backend: str
    job_id: str
    job_name: str = ""
    project: str = ""
    region: str = ""
    url: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "id": self.job_id,
            "name": self.job_name,
            "project": self.project,
            "region": self.region,
            "url": self.url,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> JobRef:
        return cls(
            backend=doc["backend"],
            job_id=doc["id"],
            job_name=doc.get("name", ""),
            project=doc.get("project", ""),
            region=doc.get("region", ""),
            url=doc.get("url", ""),
            extra=doc.get("extra") or {},
        )


@dataclass(frozen=True)
class JobStatus:
    """A backend's answer about one job, normalized."""

    state: RunState
    raw_state: str
    reason: str | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    state_time: dt.datetime | None = None


class PipelineTarget(Protocol):
    """What a backend reads of a configured pipeline (:class:`handlers.model.config.Pipeline` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def backend(self) -> str: ...

    @property
    def project(self) -> str: ...

    @property
    def region(self) -> str: ...

    @property
    def mode(self) -> str: ...  # batch | streaming

    @property
    def labels(self) -> Mapping[str, str]: ...

    @property
    def options(self) -> Mapping[str, Any]: ...  # the backend's own fields, checked by its spec


# ---------------------------------------------------------------------------------------------
# What a backend declares
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FindSemantics:
    """How far :meth:`Backend.find` can be trusted.

    ``exact``: ``find`` matches the run by something the run carries (a job name, a runtime
    argument, a client-chosen id). When ``False`` it can only guess (a Fabric job instance carries
    no run key): the launch service then claims each job id in the ledger, so no two runs follow one
    job, and asks again without the ids other runs own.

    ``settle_seconds``: how long a just-started run may stay invisible to ``find``; after an
    uncertain start the launch service waits that long before trusting "not found".

    ``scope``: for a guessing ``find``, what it searches (a Fabric item): the launch service starts
    one run at a time per scope (a launch slot in the ledger, :mod:`handlers.launch.slot`), so the
    newest instance no other run claimed is the slot holder's own. ``None``: the pipeline's name.
    """

    exact: bool = True
    settle_seconds: float = 0.0
    scope: Callable[[PipelineTarget], str] | None = None


@dataclass(frozen=True)
class PushedStatus:
    """What a pushed status event says: the run it is about, as the backend carried it (``run_key``
    text, or the job ``labels`` the launch wrote; :class:`handlers.route.identity.RunKey` parses and
    validates either), and, when it says so, the job and its state."""

    run_key: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    job_id: str | None = None
    raw_state: str | None = None


@dataclass(frozen=True)
class StatusPush:
    """A backend's own status events, which complete a run at once instead of at the next sweep.

    ``event_type``: the CloudEvent type Eventarc delivers them as (``on_job_status``), or ``None``
    when they arrive as Pub/Sub messages (``on_message``) recognised by ``recognises``.
    ``parse``: (CloudEvent attributes, data) -> :class:`PushedStatus`, or ``None`` for an event
    about a run this project did not launch; a malformed event raises
    :class:`~handlers.core.errors.EventError`. For a Pub/Sub message the attributes are the
    message's and the data its JSON.
    ``recognises``: (message attributes, message data as JSON or ``None``) -> whether a Pub/Sub
    message is one of these events (some writers set no attributes, so the data may decide).
    """

    parse: Callable[[Mapping[str, Any], Any], PushedStatus | None]
    event_type: str | None = None
    recognises: Callable[[Mapping[str, str], Any], bool] | None = None


@dataclass(frozen=True)
class Grant:
    """One IAM grant the functions' runtime account needs for a backend.

    ``kind`` is the resource type: ``project``, ``bucket``, ``service-account``, ``secret``, or a
    backend's own resource type, for which ``command`` gives the gcloud command that binds on it
    (without ``--member`` and ``--role``) and ``terraform`` the provider resource type.
    """

    role: str
    kind: str
    resource: str
    why: str
    project: str = ""
    location: str = ""
    command: tuple[str, ...] = ()
    terraform: str = ""
    attributes: Mapping[str, str] = field(default_factory=dict)  # extra terraform arguments


@dataclass(frozen=True)
class Credentials:
    """Environment variables a backend's pipelines read at run time."""

    secrets: tuple[str, ...] = ()  # required, from Secret Manager only
    optional_secrets: tuple[str, ...] = ()  # read when present, from Secret Manager only
    plain: tuple[str, ...] = ()  # not secret (ids): a plain env var or a secret
    # (secret env var, env var naming its secret): a credential the backend rotates and keeps as new
    # versions of the secret it was mounted from; the deploy sets the second to that secret's name
    # and grants the runtime account roles/secretmanager.secretVersionAdder on it
    kept: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DeployFlag:
    """A deploy command-line flag a backend adds (``dest`` is where its value arrives).

    ``alias``: another spelling of one of the deploy's own repeatable ``KEY=VALUE`` flags (``dest``
    names it), kept working but hidden from ``--help``.
    """

    flag: str
    dest: str
    help: str
    metavar: str | None = None
    boolean: bool = False
    alias: bool = False


@dataclass(frozen=True)
class DeployContext:
    """What a backend's deploy declarations may read: the deploy project and its own flags."""

    project: str
    flags: Mapping[str, Any] = field(default_factory=dict)
    project_number: str = "${PROJECT_NUMBER}"  # the plan looks it up before any grant

    @property
    def default_compute_account(self) -> str:
        """The project's default compute service account: what Dataflow workers and Dataproc
        batches run as when a pipeline names no account."""
        return f"{self.project_number}-compute@developer.gserviceaccount.com"


@dataclass(frozen=True)
class RestCall:
    """One Google REST call the deploy makes with the deployer's credentials (no gcloud command
    exists for it): ``method`` ``url`` with the JSON ``body``."""

    method: str
    url: str
    body: Mapping[str, Any]
    why: str


@dataclass(frozen=True)
class StatusTopic:
    """A Pub/Sub topic (in the deploy project) a backend publishes run status events to; the deploy
    creates it, lets ``publisher`` (a service agent; ``${PROJECT_NUMBER}`` stands for the deploy
    project's number) publish to it, routes it to ``on_message`` and makes the ``enable`` calls
    that turn publishing on."""

    topic: str
    publisher: str
    why: str
    enable: tuple[RestCall, ...] = ()


def _no_grants(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[Grant]:
    return []


def _no_status_topics(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[StatusTopic]:
    return []


def _no_credentials(pipelines: Sequence[PipelineTarget]) -> Credentials:
    return Credentials()


def _nothing(pipelines: Sequence[PipelineTarget], ctx: DeployContext) -> list[str]:
    return []


@dataclass(frozen=True)
class DeployNeeds:
    """What deploying a config that uses this backend must do, given its pipelines."""

    apis: tuple[str, ...] = ()  # services to enable, like "dataflow.googleapis.com"
    grants: Callable[[Sequence[PipelineTarget], DeployContext], list[Grant]] = _no_grants
    credentials: Callable[[Sequence[PipelineTarget]], Credentials] = _no_credentials
    problems: Callable[[Sequence[PipelineTarget], DeployContext], list[str]] = _nothing
    warnings: Callable[[Sequence[PipelineTarget], DeployContext], list[str]] = _nothing
    flags: tuple[DeployFlag, ...] = ()
    # the Pub/Sub topics its run status events arrive on (``StatusPush.recognises`` reads them)
    status_topics: Callable[[Sequence[PipelineTarget], DeployContext], list[StatusTopic]] = _no_status_topics


def _no_problems(options: Mapping[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True)
class BackendSpec:
    """Everything a backend declares (see the module docstring)."""

    name: str
    title: str
    implementation: str  # "module:Class", imported on first use
    option_keys: tuple[str, ...] = ()
    check_options: Callable[[Mapping[str, Any]], list[str]] = _no_problems
    endpoint_envs: tuple[str, ...] = ()
    auth: str = "google"  # google | entra
    find: FindSemantics = FindSemantics()
    push: StatusPush | None = None
    # (pipeline, names of the arguments the config passes, the config's folder) -> (errors, warnings)
    check_definition: Callable[[PipelineTarget, Collection[str], str], tuple[list[str], list[str]]] | None = (
        None
    )
    deploy: DeployNeeds = DeployNeeds()
    job_noun: str = "job"
    # The most rendered parameter text (names and values, UTF-8) one launch may carry: a bigger
    # launch is recorded LAUNCH_FAILED with the reason instead of being sent.
    parameter_limit_bytes: int = 256 * 1024

    def build(self, **kwargs: Any) -> Backend:
        """A new instance of the implementation (clients injected through ``kwargs``)."""
        import importlib

        module, _, cls = self.implementation.partition(":")
        backend: Backend = getattr(importlib.import_module(module), cls)(**kwargs)
        return backend


class SyncChange(enum.StrEnum):
    """What ``sync`` does to one pipeline kept as code in the repo."""

    CREATE = "create"  # missing in the backend: created from the repo's definition
    UPDATE = "update"  # present but different from the repo: its definition replaced
    UNCHANGED = "unchanged"  # present and equal: left alone


@dataclass(frozen=True)
class SyncStep:
    """One pipeline's sync, planned (``sync --dry-run`` prints it) before it is applied.

    ``target``: what the pipeline is called in the backend (a Fabric item's display name and
    workspace, a CDAP app and namespace); ``summary``: the diff in a line, for people (which
    definition parts or stages differ); ``found``: the backend's id of the existing pipeline, if any;
    ``payload``: what :meth:`Syncable.apply_sync` sends (the backend's own request body).
    """

    pipeline: str
    backend: str
    target: str
    change: SyncChange
    summary: str = ""
    found: str | None = None
    payload: Mapping[str, Any] = field(default_factory=dict)


class Syncable(Protocol):
    """A backend that can keep a pipeline's definition in the repo (``python -m handlers sync``).

    ``plan_sync`` reads the pipeline's definition files (paths relative to ``base_dir``, the routing
    config's folder) and the backend's current copy, and returns the step without changing anything;
    ``apply_sync`` carries the step out (create or update, waiting for the backend's long-running
    operation to end) and returns the backend's id of the pipeline. Both raise the error tree's
    errors: a missing file or an invalid definition is permanent.
    """

    def plan_sync(self, pipeline: PipelineTarget, base_dir: str) -> SyncStep | None: ...

    def apply_sync(self, step: SyncStep) -> str: ...


class OnlineCheckable(Protocol):
    """A backend that can check a pipeline against the live system (``validate --online``).

    ``parameters``: the pipeline's configured parameters, name -> the literal value, or ``None`` when
    it is rendered from an event (known only at run time). Returns every problem, one line each;
    raises the error tree's errors when the backend cannot be asked.
    """

    def check_online(self, pipeline: PipelineTarget, parameters: Mapping[str, str | None]) -> list[str]: ...


class Backend(Protocol):
    """What the launch service and the tracker need from a pipeline system."""

    spec: ClassVar[BackendSpec]
    name: str

    @property
    def find_semantics(self) -> FindSemantics: ...

    def launch(self, request: LaunchRequest) -> JobRef: ...

    def find(self, request: LaunchRequest, exclude: frozenset[str] = frozenset()) -> JobRef | None: ...

    def status(self, ref: JobRef) -> JobStatus: ...

    def cancel(self, ref: JobRef, *, drain: bool = False) -> None: ...


# An upstream answer of the wrong shape (a field missing, a string where an object was due) makes a
# backend's parsing raise one of these: a malformed answer, never an unhandled exception.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class GuardedBackend:
    """A backend whose four calls turn a malformed upstream answer into
    :class:`~handlers.core.errors.BackendUnavailable` (retryable, like any garbled 2xx: see
    :mod:`handlers.core.http`), and whose answers carry no echoed secret: a job id holding one is
    malformed, the other texts (names, urls, reasons) are scrubbed. Everything else is delegated."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _guard(self, call: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except EventError as exc:  # a field of the answer that does not parse (a time that is not one)
            raise BackendUnavailable(f"{call}: malformed answer from the backend ({exc.message})") from exc
        except PipelineError:
            raise
        except _MALFORMED as exc:
            raise BackendUnavailable(
                f"{call}: malformed answer from the backend ({type(exc).__name__})"
            ) from exc

    def _clean_ref(self, ref: JobRef | None) -> JobRef | None:
        if ref is None:
            return None
        kept = [ref.job_id, *(v for v in ref.extra.values() if isinstance(v, str))]
        if not isinstance(ref.job_id, str) or not ref.job_id or any(logs.scrub(v) != v for v in kept):
            # what later calls address the job by (its id, its operation...) carries a secret
            raise BackendUnavailable("malformed answer from the backend: an unusable job reference")
        return dataclasses.replace(ref, job_name=logs.scrub(ref.job_name), url=logs.scrub(ref.url))

    def launch(self, request: LaunchRequest) -> JobRef:
        ref = self._clean_ref(self._guard("launch", lambda: self.inner.launch(request)))
        assert ref is not None
        return ref

    def find(self, request: LaunchRequest, exclude: frozenset[str] = frozenset()) -> JobRef | None:
        found = self._guard(
            "find", lambda: self.inner.find(request, exclude) if exclude else self.inner.find(request)
        )
        return self._clean_ref(found)

    def status(self, ref: JobRef) -> JobStatus:
        answer: JobStatus = self._guard("status", lambda: self.inner.status(ref))
        return dataclasses.replace(
            answer,
            raw_state=logs.scrub(answer.raw_state),
            reason=logs.scrub(answer.reason) if answer.reason else answer.reason,
        )

    def cancel(self, ref: JobRef, *, drain: bool = False) -> None:
        self._guard("cancel", lambda: self.inner.cancel(ref, drain=drain))


def guarded(backend: Backend) -> Backend:
    """``backend`` behind a :class:`GuardedBackend` (once)."""
    if isinstance(backend, GuardedBackend):
        return backend
    return GuardedBackend(backend)  # type: ignore[return-value]
