"""The launch service: one trigger + one event -> exactly one job.

Delivery is at least once (the same event may arrive many times, even concurrently), so a launch
goes through the ledger::

    render parameters ──(missing value)──────────────────────────────> LAUNCH_FAILED, ack
    claim: create runs/<key>.json, ifGenerationMatch=0
      ├─ won ─────────────> launch ──ok / 409 ALREADY_EXISTS (find it)──> active marker carrying the job
      │                        ├─ permanent (400/403/404, bad params) ─> LAUNCH_FAILED + reason, ack
      │                        └─ transient, budget spent ─────────────> release lease, raise (redelivery)
      └─ lost: read the record
           ├─ job recorded / finished ──> duplicate, ack
           ├─ fresh claim by another ───> wait a few seconds for it; still open -> RunInProgress (retry)
           └─ claim older than the lease (its owner crashed) ──> take over by CAS, *find the job
              first* (any state: a short job may be done already), launch only if there is none

Job names are derived from pipeline and run key, so a relaunch of an active job answers 409, and a
launch whose answer was lost is found again by name before any second attempt.

A launch costs three API calls: the claim, the launch request, and the active marker that carries
the job (the record still says CLAIMED until the first check writes the job into it; the ledger
folds the marker in for every reader until then, see :mod:`handlers.launch.ledger`).
"""

from __future__ import annotations

import datetime as dt
import enum
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from handlers.backends.contract import Backend, FindSemantics, JobRef, LaunchRequest, RunState
from handlers.core import http, logs, retry
from handlers.core.errors import (
    AlreadyExists,
    BackendUnavailable,
    NotFound,
    ParameterError,
    PermanentError,
    PipelineError,
    RetryableError,
    RunInProgress,
)
from handlers.core.times import from_iso, iso, now
from handlers.launch.ledger import Conflict, Marker, Run, launched, new_owner
from handlers.launch.runtime import Runtime
from handlers.launch.slot import Slot, Slots
from handlers.model.config import Pipeline, Trigger
from handlers.route.plan import LaunchPlan, plan_launch
from handlers.route.render import Rendered

RELEASE_MARGIN_SECONDS = 2.0  # lease left for the bare marker a released claim writes (see _release)
MAX_FIND_CANDIDATES = 5  # jobs an inexact find() may offer before the launch service gives up looking


class LaunchResult(enum.StrEnum):
    """What one delivery did to its run."""

    LAUNCHED = "launched"  # this delivery started the job
    ADOPTED = "adopted"  # the job already existed (a lost answer, a takeover): now followed
    DUPLICATE = "duplicate"  # another delivery had claimed the run: nothing done
    FAILED = "failed"  # no job: recorded LAUNCH_FAILED, or no identity (acknowledged)


class WindowResult(enum.StrEnum):
    """What one delivery did for a ``batch:`` trigger (events only: never an answer of POST /runs)."""

    JOINED = "joined"  # the object is in a window, which launches once when it closes


@dataclass(frozen=True)
class Outcome:
    """What happened to one trigger's run for one delivery."""

    trigger: str
    pipeline: str
    run_key: str | None
    result: LaunchResult | WindowResult
    job_id: str | None = None
    reason: str | None = None
    window: str | None = None  # batch: the window id the object joined or that launched


P = TypeVar("P", bound=Any)


def each_in_turn(
    plans: Iterable[P], act: Callable[[P], Outcome], *, retryable: str, permanent: str
) -> list[Outcome]:
    """``act`` on every plan (each has a ``trigger``); a permanent error is logged and acknowledged,
    and the first retryable one is raised only after every plan had its turn."""
    outcomes: list[Outcome] = []
    pending: RetryableError | None = None
    for plan in plans:
        try:
            outcomes.append(act(plan))
        except RetryableError as exc:
            logs.warning(retryable, **{**exc.context(), "trigger": plan.trigger.name})
            pending = pending or exc
        except PermanentError as exc:
            logs.error(permanent, **{**exc.context(), "trigger": plan.trigger.name})
    if pending is not None:
        raise pending
    return outcomes


class LaunchService:
    def __init__(
        self,
        runtime: Runtime,
        *,
        clock: Callable[[], dt.datetime] = now,
        sleep: Callable[[float], Any] = time.sleep,
        wait_for_owner_seconds: float = 8.0,
    ) -> None:
        self.rt = runtime
        self.clock = clock
        self.sleep = sleep
        self.wait_for_owner_seconds = wait_for_owner_seconds

    @property
    def settings(self) -> Any:
        return self.rt.config.settings

    # -- public -------------------------------------------------------------------------------
    def start(
        self,
        trigger: Trigger,
        event: Any,
        *,
        on_launched: Callable[[Run], None] | None = None,
        retry_failed: bool = False,
    ) -> Outcome:
        """Launch ``trigger``'s pipeline for ``event`` exactly once. Raises only RetryableError."""
        return self.launch(
            plan_launch(self.rt.config, trigger, event), on_launched=on_launched, retry_failed=retry_failed
        )

    def launch(
        self,
        plan: LaunchPlan,
        *,
        on_launched: Callable[[Run], None] | None = None,
        retry_failed: bool = False,
    ) -> Outcome:
        """Carry out a plan made by :func:`handlers.route.plan.plan_launch` (the same plan ``explain``
        shows): claim its run and launch its job once, or record why it cannot launch.

        ``retry_failed``: a run that ended LAUNCH_FAILED (no job ever started) may be claimed again
        by this request, once its failure was announced: a person retrying a manual run with the same
        idempotency key after fixing the cause. Events never retry a failure this way."""
        trigger, pipeline, event = plan.trigger, plan.pipeline, plan.event
        with logs.bind(
            trigger=trigger.name, pipeline=pipeline.name, event_id=getattr(event, "event_id", None)
        ):
            if plan.run_key is None:
                assert plan.error is not None
                logs.error(
                    "event has no identity for this trigger: acknowledged without a run",
                    **plan.error.context(),
                )
                return Outcome(
                    trigger.name, pipeline.name, None, LaunchResult.FAILED, reason=plan.error.message
                )
            key = str(plan.run_key)
            with logs.bind(run_key=key):
                if plan.rendered is None:
                    assert plan.error is not None
                    return self._record_unlaunchable(trigger, pipeline, event, key, plan.error)
                return self._claim_and_launch(
                    trigger, pipeline, event, plan.rendered, on_launched, retry_failed=retry_failed
                )

    def launch_all(self, plans: Iterable[LaunchPlan]) -> list[Outcome]:
        """Launch every plan; raise the first retryable error only after all had their turn (the
        platform redelivers; triggers that already launched see a duplicate next time)."""
        return each_in_turn(
            plans,
            self.launch,
            retryable="transient failure: the event will be redelivered",
            permanent="permanent failure before a run was recorded: acknowledged",
        )

    # -- claim ---------------------------------------------------------------------------------
    def _new_run(
        self, trigger: Trigger, pipeline: Pipeline, event: Any, rendered: Rendered, owner: str
    ) -> Run:
        return Run(
            run_key=rendered.run_key,
            trigger=trigger.name,
            pipeline=pipeline.name,
            backend=pipeline.backend,
            state=RunState.CLAIMED,
            job_name=rendered.job_name,
            event=event.summary(),
            parameters=dict(rendered.parameters),
            outputs=dict(rendered.outputs),
            owner=owner,
            lease_until=iso(self.clock() + dt.timedelta(seconds=self.settings.lease_seconds)),
            attempts=1,
            rerun=int(getattr(event, "rerun", 0) or 0),
        ).with_state(RunState.CLAIMED, "claimed")

    def _claim(self, fresh: Run, *, retry_failed: bool = False) -> tuple[Run | None, bool, Run | None]:
        """(our run, taken_over, existing run if we lost). Raises RunInProgress while another owns it."""
        ledger = self.rt.ledger
        for _ in range(10):
            try:
                return ledger.create(fresh), False, None
            except Conflict:
                pass
            existing = ledger.get(fresh.run_key)
            if existing is None:
                continue
            if existing.owner == fresh.owner and existing.state == RunState.CLAIMED:
                return existing, False, None  # our own create, whose answer was lost and retried
            if retry_failed and existing.state == RunState.LAUNCH_FAILED and existing.job is None:
                again = self._retry_failed(fresh, existing)
                if again is None:
                    continue
                return again, False, None
            if existing.state != RunState.CLAIMED:
                return None, False, existing
            if not existing.lease_expired(self.clock()):
                existing = self._wait_for_owner(existing)
                if existing.state != RunState.CLAIMED:
                    return None, False, existing
                if not existing.lease_expired(self.clock()):
                    raise RunInProgress(
                        f"run {fresh.run_key} is being launched by another invocation",
                        run_key=fresh.run_key,
                        retry_after=5,
                    )
            taken = replace(
                existing, owner=fresh.owner, attempts=existing.attempts + 1, lease_until=fresh.lease_until
            ).with_state(RunState.CLAIMED, "previous claim expired without a job: taken over")
            try:
                run = ledger.update(taken)
            except Conflict:
                continue
            logs.warning("took over an expired claim", previous_attempts=existing.attempts)
            return run, True, None
        raise RunInProgress(f"run {fresh.run_key}: claim contention", run_key=fresh.run_key)

    def _retry_failed(self, fresh: Run, failed: Run) -> Run | None:
        """Claim a LAUNCH_FAILED run again as a new attempt (``None``: lost a race, read again)."""
        if not (failed.completion or {}).get("published"):
            raise RunInProgress(
                f"run {fresh.run_key}: its launch failure is still being announced; retry in a moment",
                run_key=fresh.run_key,
                retry_after=5,
            )
        again = replace(
            fresh,
            attempts=failed.attempts + 1,
            created_at=failed.created_at,
            history=failed.history,
            generation=failed.generation,
        ).with_state(RunState.CLAIMED, "claimed again by hand after LAUNCH_FAILED")
        try:
            run = self.rt.ledger.update(again)
        except Conflict:
            return None
        logs.warning("a LAUNCH_FAILED run is launched again by hand", previous_attempts=failed.attempts)
        return run

    def _wait_for_owner(self, run: Run) -> Run:
        deadline = time.monotonic() + self.wait_for_owner_seconds
        delay = 0.1
        while time.monotonic() < deadline:
            self.sleep(delay)
            delay = min(delay * 2, 1.0)
            current = self.rt.ledger.get(run.run_key)
            if current is None:
                return run
            run = current
            if run.state != RunState.CLAIMED or run.lease_expired(self.clock()):
                return run
        return run

    # -- launch --------------------------------------------------------------------------------
    def _claim_and_launch(
        self,
        trigger: Trigger,
        pipeline: Pipeline,
        event: Any,
        rendered: Rendered,
        on_launched: Callable[[Run], None] | None,
        *,
        retry_failed: bool = False,
    ) -> Outcome:
        fresh = self._new_run(trigger, pipeline, event, rendered, new_owner())
        run, taken_over, existing = self._claim(fresh, retry_failed=retry_failed)
        if run is None:
            assert existing is not None
            job = existing.job_ref
            logs.info(
                "duplicate delivery: run already claimed",
                state=existing.state,
                job_id=job.job_id if job else None,
            )
            return Outcome(
                trigger.name,
                pipeline.name,
                rendered.run_key,
                LaunchResult.DUPLICATE,
                job_id=job.job_id if job else None,
            )
        backend = self.rt.backend(pipeline.backend)
        request = LaunchRequest(
            run_key=rendered.run_key,
            job_name=rendered.job_name,
            pipeline=pipeline,
            # the record's: a takeover launches what the first claim rendered, even if the config
            # changed its parameters between two deliveries of the event
            parameters=dict(run.parameters) if taken_over else rendered.parameters,
            labels=rendered.labels,
            requested_at=from_iso(run.created_at),
        )
        uncertain = unsettled = taken_over  # unsettled: a start of ours may exist, not yet found
        uncertain_since = time.monotonic()
        adopted = False
        semantics = backend.find_semantics
        slot: Slot | None = None
        if not semantics.exact:
            try:
                slot, ours_unsettled = self._slots().acquire(
                    pipeline.backend,
                    self._scope(semantics, pipeline),
                    request.run_key,
                    run.owner or "",
                    settle=lambda previous: self._settle(backend, request, previous),
                )
                # an earlier delivery of this run gave up with a start unsettled: look first
                uncertain = unsettled = uncertain or ours_unsettled
            except RetryableError:
                self._release(run)
                raise

        def owned(ref: JobRef) -> bool:
            """Ours to follow: always for an exact find(); else whoever claims the job id first."""
            return semantics.exact or self.rt.ledger.claim_job(pipeline.backend, ref.job_id, request.run_key)

        def find_ours() -> JobRef | None:
            skip = slot.others(request.run_key) if slot is not None else frozenset()
            return self._find_owned(backend, request, owned, skip)

        # Some backends list a new run only after a moment (CDAP records runs asynchronously):
        # after an uncertain start, wait that long before trusting "not found".
        settle = semantics.settle_seconds

        def attempt() -> JobRef:
            nonlocal uncertain, unsettled, adopted, uncertain_since, run, slot
            assert run is not None  # narrowed above; a closure does not keep the narrowing
            run = self._keep_claim(run, settle)
            if slot is not None:
                slot = self._slots().keep(slot, self._attempt_seconds(settle))
            if uncertain:
                wait = settle - (time.monotonic() - uncertain_since)
                if wait > 0:
                    self.sleep(wait)
                found = find_ours()
                if found is not None:
                    adopted = True
                    return found
                unsettled = False  # looked after the settle time: nothing of ours was started
            try:
                ref = backend.launch(request)
            except AlreadyExists:
                found = find_ours()
                if found is None:
                    raise BackendUnavailable(
                        "backend says the job exists but it cannot be listed yet"
                    ) from None
                adopted = True
                return found
            except BackendUnavailable:
                uncertain = unsettled = True  # the request may have reached the backend: look first
                uncertain_since = time.monotonic()
                raise
            if not owned(ref):  # another run's guessing find() claimed our new job first
                uncertain, unsettled, uncertain_since = True, True, time.monotonic()
                raise BackendUnavailable(f"job {ref.job_id} was claimed by another run: launching again")
            return ref

        def hand_on(job_id: str | None = None) -> None:
            """Release the slot; unsettled when a start of ours may exist that no one has claimed."""
            if slot is not None:
                self._slots().release(slot, settled=not unsettled, job_id=job_id)

        try:
            ref = retry.call(
                attempt,
                budget_seconds=self.settings.launch_budget_seconds,
                what=f"launch {pipeline.name}",
                sleep=self.sleep,
            )
        except PermanentError as exc:
            hand_on()
            failed = self._mark_failed(run, exc)
            if on_launched and failed is not None:
                on_launched(failed)
            return Outcome(trigger.name, pipeline.name, run.run_key, LaunchResult.FAILED, reason=exc.message)
        except RetryableError as exc:
            hand_on()
            self._release(run, exc)
            raise
        try:
            recorded = self._record_job(run, ref, pipeline)
        except RetryableError:
            # The job is claimed for this run: whoever takes the slot next records it on the run.
            unsettled = True
            hand_on()
            self._release(run)  # the redelivery takes over at once and finds the job by name
            raise
        unsettled = False
        hand_on(ref.job_id)
        logs.info(
            "job adopted (already launched)" if adopted else "job launched",
            job_id=ref.job_id,
            job_name=ref.job_name,
            backend=pipeline.backend,
            url=ref.url,
        )
        if on_launched:
            on_launched(recorded)
        return Outcome(
            trigger.name,
            pipeline.name,
            run.run_key,
            LaunchResult.ADOPTED if adopted else LaunchResult.LAUNCHED,
            job_id=ref.job_id,
        )

    @staticmethod
    def _attempt_seconds(settle_seconds: float) -> float:
        """The longest one launch attempt can take: a find after the settle time and a start, each
        within one call's timeout, and a second of margin."""
        connect, read = http.default_timeout()
        return 2 * (connect + read) + settle_seconds + 1.0

    def _keep_claim(self, run: Run, settle_seconds: float) -> Run:
        """Our claim, with lease enough left for one more attempt (a find after the settle time and a
        launch request, each within one call's timeout), renewed by compare-and-swap when it has
        not: a lease shorter than a slow launch never lets another delivery take the run over while
        a request of ours may still be on its way. A renewal that meets another owner stops us."""
        needed = self._attempt_seconds(settle_seconds)
        now = self.clock()
        until = from_iso(run.lease_until)
        if until is not None and (until - now).total_seconds() >= needed:
            return run
        longer = max(self.settings.lease_seconds, needed)
        renewed = replace(run, lease_until=iso(now + dt.timedelta(seconds=longer)))
        try:
            return self.rt.ledger.update(renewed)
        except Conflict:
            current = self.rt.ledger.get(run.run_key)
            if (
                current is not None
                and current.owner == run.owner
                and current.state == RunState.CLAIMED
                and current.job is None
                and current.lease_until == renewed.lease_until
            ):
                return current  # our own renewal, whose answer was lost
        raise RunInProgress(
            f"run {run.run_key}: the claim passed to another delivery while launching",
            run_key=run.run_key,
            retry_after=5,
        )

    # -- guessing find(): the launch slot ------------------------------------------------------
    def _slots(self) -> Slots:
        return Slots(
            self.rt.ledger,
            lease_seconds=self.settings.lease_seconds,
            clock=self.clock,
            sleep=self.sleep,
            wait_seconds=self.wait_for_owner_seconds,
        )

    @staticmethod
    def _scope(semantics: FindSemantics, pipeline: Pipeline) -> str:
        return semantics.scope(pipeline) if semantics.scope is not None else f"pipeline {pipeline.name}"

    def _find_owned(
        self,
        backend: Backend,
        request: LaunchRequest,
        owned: Callable[[JobRef], bool],
        skip: frozenset[str] = frozenset(),
    ) -> JobRef | None:
        """The job ``find()`` offers that ``owned`` accepts, skipping ids other runs own (``skip``:
        known to be theirs already)."""
        exclude: set[str] = set(skip)
        for _ in range(MAX_FIND_CANDIDATES):
            found = backend.find(request, exclude=frozenset(exclude)) if exclude else backend.find(request)
            if found is None or owned(found):
                return found
            logs.warning("a job find() offered belongs to another run: looking again", job_id=found.job_id)
            exclude.add(found.job_id)
        return None

    def _settle(self, backend: Backend, request: LaunchRequest, previous: Slot) -> str | None:
        """The previous slot holder gave up (or crashed) with a start uncertain: whatever it may have
        started is claimed for *its* run and, if that run has no job yet, recorded as its job, so no
        other run adopts it and its redelivery sees the run launched."""
        theirs = replace(request, run_key=previous.run_key, requested_at=from_iso(previous.since))

        def claim(ref: JobRef) -> bool:
            return self.rt.ledger.claim_job(backend.name, ref.job_id, previous.run_key)

        found = self._find_owned(backend, theirs, claim, previous.others(previous.run_key))
        if found is None:
            return None
        logs.warning(
            "a job the previous slot holder started is recorded as its run's job",
            previous_run_key=previous.run_key,
            job_id=found.job_id,
        )
        self._record_for(previous.run_key, found)
        return found.job_id

    def _record_for(self, run_key: str, ref: JobRef) -> None:
        stamp = self.clock()

        def change(current: Run) -> Run | None:
            if current.state != RunState.CLAIMED or current.job is not None:
                return None
            pipeline = self.rt.config.pipelines.get(current.pipeline)
            timeout = pipeline.timeout_seconds if pipeline is not None else None
            deadline = iso(stamp + dt.timedelta(seconds=timeout)) if timeout else None
            return launched(current, ref.to_json(), iso(stamp), deadline)

        try:
            recorded = self.rt.ledger.mutate(run_key, change)
        except NotFound:
            return
        if recorded is not None and recorded.job is not None and not recorded.terminal:
            self.rt.ledger.mark_active(run_key, Marker.of(recorded))

    def _record_job(self, run: Run, ref: JobRef, pipeline: Pipeline) -> Run:
        """One write: the active marker carrying the job (the sweep and every reader find it there)."""
        stamp = self.clock()
        deadline = (
            iso(stamp + dt.timedelta(seconds=pipeline.timeout_seconds)) if pipeline.timeout_seconds else None
        )
        marker = Marker(
            run_key=run.run_key,
            backend=run.backend,
            pipeline=run.pipeline,
            job=ref.to_json(),
            state=RunState.PENDING,
            launched_at=iso(stamp),
            deadline_at=deadline,
            seen_at=iso(stamp),
            recorded=False,
        )
        self.rt.ledger.mark_active(run.run_key, marker)
        return marker.fold_into(run)  # what every reader sees until the first check records the job

    def _mark_failed(self, run: Run, exc: PipelineError) -> Run | None:
        logs.error("launch failed permanently: recorded and acknowledged", **exc.context())

        def change(current: Run) -> Run | None:
            if current.job is not None or current.terminal:
                return None
            return current.with_state(
                RunState.LAUNCH_FAILED,
                exc.message,
                error=exc.context(),
                lease_until=None,
                ended_at=iso(self.clock()),
            )

        failed = self.rt.ledger.mutate(run.run_key, change)
        self.rt.ledger.mark_active(run.run_key)  # so the sweep publishes its completion once
        return failed

    def _release(self, run: Run, cause: PipelineError | None = None) -> None:
        """Let the next delivery take over at once after we gave up on transient errors. The run
        also enters the active index (a bare marker), with the last error on its record: if no
        delivery comes back for it before its event passes ``max_event_age`` (the backend stayed
        down), the sweep ends it LAUNCH_FAILED with that reason instead of leaving it CLAIMED."""

        def change(current: Run) -> Run | None:
            if current.owner != run.owner or current.state != RunState.CLAIMED:
                return None
            error = cause.context() if cause is not None else current.error
            return replace(current, lease_until=iso(self.clock()), error=error)

        try:
            # The marker goes first, while our lease still keeps every other delivery out: a marker
            # written after a takeover could replace the one carrying the new owner's job.
            if not run.lease_expired(self.clock() + dt.timedelta(seconds=RELEASE_MARGIN_SECONDS)):
                self.rt.ledger.mark_active(run.run_key)
            self.rt.ledger.mutate(run.run_key, change)
        except PipelineError as exc:
            logs.warning("could not release the claim; it will expire with its lease", cause=exc.message)

    def _record_unlaunchable(
        self, trigger: Trigger, pipeline: Pipeline, event: Any, key: str, exc: ParameterError
    ) -> Outcome:
        logs.error("parameters could not be rendered: recorded and acknowledged", **exc.context())
        stamp = iso(self.clock())
        run = Run(
            run_key=key,
            trigger=trigger.name,
            pipeline=pipeline.name,
            backend=pipeline.backend,
            state=RunState.LAUNCH_FAILED,
            job_name="",
            event=event.summary(),
            error=exc.context(),
            created_at=stamp,  # the same instant: the completion's duration is 0, never negative
            ended_at=stamp,
        ).with_state(RunState.LAUNCH_FAILED, exc.message)
        ledger = self.rt.ledger
        for _ in range(10):
            try:
                ledger.create(run)
                break
            except Conflict:
                existing = ledger.get(key)
            if existing is None:
                continue  # a 412 for a record that is not there (a contended store): create again
            if existing.state != RunState.LAUNCH_FAILED or (existing.completion or {}).get("published"):
                return Outcome(trigger.name, pipeline.name, key, LaunchResult.FAILED, reason=exc.message)
            break  # ours, whose answer was lost (or an earlier delivery's): announce it all the same
        else:
            raise RunInProgress(f"run {key}: conflicts without a record to read", run_key=key)
        ledger.mark_active(key)  # so the completion of a LAUNCH_FAILED run is published once
        return Outcome(trigger.name, pipeline.name, key, LaunchResult.FAILED, reason=exc.message)
