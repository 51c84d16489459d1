"""Following runs to their end: the sweep, the push path, deadlines, and exactly-once completion.

Two paths find out that a run ended, and they may race:

- the **sweep** (``check_runs``, every minute from Cloud Scheduler) lists ``active/`` markers only,
  asks each run's backend for its state concurrently (bounded pool, per-call timeouts) and stops
  starting new checks when its time budget is spent: what it did not reach stays active for the next
  sweep. Each marker carries the job and the last state seen, so a run whose state did not change
  costs one backend call and no ledger call; a change reads the record and writes it by CAS;
- the **push path** (``on_job_status``, Eventarc's Dataflow ``statusChanged``) checks one run at once.

With ``batch:`` triggers the sweep first closes the windows past ``max_wait`` and finishes every
close a crash left half done (:meth:`handlers.launch.windows.Windows.sweep`).

Either way :meth:`Tracker.finish` decides who announces the end with a compare-and-swap on the run
record (``completion`` set once), publishes the completion event with a deterministic id, then marks
it published and removes the active marker. A crash between the decision and the publish leaves the
marker in place; once the publish lease has expired, the next sweep publishes again with the same id.

Success is declared per pipeline: a batch job must reach DONE; a streaming job succeeds on reaching
RUNNING (optionally after running for ``success_after``). Past ``timeout`` the job is cancelled
(batch) or drained (streaming) and the run ends TIMED_OUT.
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from handlers.backends.contract import JobRef, JobStatus, RunState
from handlers.core import logs
from handlers.core.errors import NotFound, PipelineError, RetryableError
from handlers.core.times import from_iso, iso, now
from handlers.follow import completion
from handlers.launch.ledger import Marker, Run, new_owner
from handlers.launch.runtime import Runtime
from handlers.launch.windows import Windows, WindowSweep
from handlers.model.completions import completion_id
from handlers.model.config import Pipeline

SWEEP_WORKERS = 64  # concurrent checks: each is mostly waiting on one backend call
SEEN_REFRESH_MIN_SECONDS = 300.0  # a quiet run's "last seen" is refreshed no more often than this


def _seen_refresh_seconds(stall_after: float) -> float:
    """How stale a quiet run's "last seen" may get before the sweep rewrites its record and marker:
    half the stall threshold (so a stall is still noticed in time), never under 5 minutes (at 10,000
    active runs and the default 30 min threshold: 11 record rewrites a second, spread over sweeps)."""
    return max(SEEN_REFRESH_MIN_SECONDS, stall_after / 2)


_NOT_REACHED = "<not reached>"  # a queued check the sweep's budget ran out before


def _last_seen(run: Run) -> str | None:
    return run.last_seen_at or run.updated_at or run.created_at


@dataclass
class SweepReport:
    checked: int = 0
    finished: dict[str, str] = field(default_factory=dict)  # run_key -> terminal state
    republished: list[str] = field(default_factory=list)
    left_for_next: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    windows: WindowSweep | None = None  # batched triggers: what the sweep did to their windows


class Tracker:
    def __init__(
        self,
        runtime: Runtime,
        *,
        clock: Callable[[], dt.datetime] = now,
        before_publish: Callable[[Run], None] | None = None,
    ) -> None:
        self.rt = runtime
        self.clock = clock
        self._before_publish = before_publish  # a test seam to simulate a crash before publishing
        self._seen_refresh = _seen_refresh_seconds(runtime.config.settings.stall_after_seconds)

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(
        self, current: str | None, started_at: str | None, pipeline: Pipeline | None, status: JobStatus
    ) -> RunState:
        """The run's normalized state given its backend status and the pipeline's idea of success
        (``current``/``started_at``: the run's recorded state and when it was first seen RUNNING)."""
        state = status.state
        if pipeline is not None and pipeline.mode == "streaming" and state is RunState.RUNNING:
            if pipeline.success_after_seconds <= 0:
                return RunState.SUCCEEDED
            # Running since the first sweep that saw it RUNNING (our clock, not the backend's).
            since = from_iso(started_at) if current == RunState.RUNNING else None
            if since is not None and (self.clock() - since).total_seconds() >= pipeline.success_after_seconds:
                return RunState.SUCCEEDED
        return state

    # -- one run -----------------------------------------------------------------------------------
    def check_marker(self, run_key: str, marker: Marker | None) -> str | None:
        """The sweep's check: ask the backend about the job on the marker; read and write the ledger
        only when something changed (state, backend state, deadline) or the record lacks the job."""
        if marker is None or marker.job is None or not marker.backend or not marker.recorded:
            return self.check(run_key, marker=marker)
        pipeline = self.rt.config.pipelines.get(marker.pipeline or "")
        try:
            status = self.rt.backend(marker.backend).status(JobRef.from_json(marker.job))
        except NotFound:
            return self.check(run_key, marker=marker)
        except RetryableError as exc:
            with logs.bind(run_key=run_key, pipeline=marker.pipeline, job_id=marker.job.get("id")):
                self._warn_if_stalled(marker.seen_at, f"backend unreachable: {exc.message}")
            raise
        state = self.evaluate(marker.state, marker.started_at, pipeline, status)
        deadline = from_iso(marker.deadline_at)
        now = self.clock()
        seen = from_iso(marker.seen_at)
        if (
            state.terminal
            or state != marker.state
            or status.raw_state != marker.raw_state
            or (deadline is not None and now >= deadline)
            # refresh "last seen" in the record and the marker now and then: stall detection reads
            # it, and the ledger's lifecycle rule only ages out records nobody rewrites
            or seen is None
            or (now - seen).total_seconds() > self._seen_refresh
        ):
            return self.check(run_key, status=status, marker=marker)
        return None

    def check(
        self, run_key: str, status: JobStatus | None = None, marker: Marker | None = None
    ) -> str | None:
        """Bring one active run up to date from its record; returns its terminal state once finished.
        ``marker``: the active marker the sweep listed (rewritten when it no longer matches)."""
        ledger = self.rt.ledger
        run = ledger.get(run_key, marker=marker)
        if run is None:
            ledger.clear_active(run_key)
            return None
        with logs.bind(
            run_key=run_key, pipeline=run.pipeline, trigger=run.trigger, job_id=(run.job or {}).get("id")
        ):
            if run.completion is not None:
                return self._resume_publish(run)
            if run.state == RunState.LAUNCH_FAILED:
                return self.finish(run, RunState.LAUNCH_FAILED)
            ref = run.job_ref
            if ref is None:
                if run.state == RunState.CLAIMED and self._launch_abandoned(run):
                    return self._end_unlaunched(run)
                self._warn_if_stalled(_last_seen(run), "claimed but no job recorded")
                return None
            pipeline = self.rt.config.pipelines.get(run.pipeline)
            if status is None:
                try:
                    status = self.rt.backend(run.backend).status(ref)
                except NotFound as exc:
                    return self.finish(run, RunState.FAILED, reason=f"job no longer exists: {exc.message}")
                except RetryableError as exc:
                    self._warn_if_stalled(_last_seen(run), f"backend unreachable: {exc.message}")
                    raise
            state = self.evaluate(run.state, run.started_at, pipeline, status)
            if state.terminal:
                return self.finish(run, state, status=status)
            deadline = from_iso(run.deadline_at)
            if deadline is not None and self.clock() >= deadline:
                return self._time_out(run, pipeline)
            self._note_progress(run, state, status, marker)
            return None

    def _note_progress(self, run: Run, state: RunState, status: JobStatus, marker: Marker | None) -> None:
        """Write the record only when something changed (or it lacks the job), then the marker."""
        now = self.clock()
        last_seen = from_iso(run.last_seen_at)
        stale = last_seen is None or (now - last_seen).total_seconds() > self._seen_refresh
        if run.state == state and run.raw_state == status.raw_state and not stale and not run.unrecorded_job:
            if marker is not None and marker != Marker.of(run, seen_at=marker.seen_at):
                self.rt.ledger.mark_active(run.run_key, Marker.of(run))
            return

        def change(current: Run) -> Run | None:
            if current.terminal or current.completion is not None:
                return None
            started = current.started_at or (iso(now) if state is RunState.RUNNING else None)
            if current.state == state:
                return replace(current, raw_state=status.raw_state, last_seen_at=iso(now), started_at=started)
            return current.with_state(
                state, status.raw_state, raw_state=status.raw_state, last_seen_at=iso(now), started_at=started
            )

        updated = self.rt.ledger.mutate(run.run_key, change, current=run)
        if updated is not None and not updated.terminal and updated.completion is None:
            self.rt.ledger.mark_active(run.run_key, Marker.of(updated))
        if run.state != state:
            logs.info(f"run is {state}", state=str(state), backend_state=status.raw_state)

    def _launch_abandoned(self, run: Run) -> bool:
        """A claim no delivery can come back for: its lease ended, and its event (no younger than the
        claim) passed ``max_event_age`` a lease ago, so every redelivery is dropped as too old."""
        settings = self.rt.config.settings
        claimed = from_iso(run.created_at)
        now = self.clock()
        if claimed is None or not run.lease_expired(now):
            return False
        return (now - claimed).total_seconds() >= settings.max_event_age_seconds + settings.lease_seconds

    def _end_unlaunched(self, run: Run) -> str | None:
        """End a claim whose launch never succeeded (the backend stayed down past max_event_age):
        LAUNCH_FAILED with the reason and the last error, announced once like any other end."""
        age = self.rt.config.settings.max_event_age_seconds
        last = (run.error or {}).get("message")
        why = f"no launch succeeded before the event passed max_event_age ({age:.0f}s)" + (
            f"; last error: {last}" if last else ""
        )
        now = self.clock()

        def change(current: Run) -> Run | None:
            if current.state != RunState.CLAIMED or current.job is not None or not current.lease_expired(now):
                return None
            return current.with_state(
                RunState.LAUNCH_FAILED,
                why,
                error={**(current.error or {}), "message": why},
                lease_until=None,
                ended_at=iso(now),
            )

        failed = self.rt.ledger.mutate(run.run_key, change, current=run)
        if failed is None or failed.state != RunState.LAUNCH_FAILED:
            return None
        logs.error("launch abandoned: " + why)
        return self.finish(failed, RunState.LAUNCH_FAILED, reason=why)

    def _warn_if_stalled(self, last_seen: str | None, why: str) -> None:
        seen = from_iso(last_seen)
        if seen and (self.clock() - seen).total_seconds() > self.rt.config.settings.stall_after_seconds:
            logs.warning(f"run stalled: {why}", stalled_seconds=round((self.clock() - seen).total_seconds()))

    def _time_out(self, run: Run, pipeline: Pipeline | None) -> str | None:
        drain = pipeline is not None and pipeline.mode == "streaming"
        ref = run.job_ref
        assert ref is not None
        logs.warning(
            "run passed its timeout: " + ("draining" if drain else "cancelling"), deadline=run.deadline_at
        )
        try:
            self.rt.backend(run.backend).cancel(ref, drain=drain)
        except PipelineError as exc:
            if exc.retryable:
                raise
            logs.warning("cancel refused; recording the timeout anyway", **exc.context())
        limit = pipeline.timeout_seconds if pipeline else None
        return self.finish(
            run, RunState.TIMED_OUT, reason=f"exceeded timeout of {limit:.0f}s" if limit else "timed out"
        )

    # -- exactly-once completion ---------------------------------------------------------------------
    def finish(
        self, run: Run, state: RunState, *, status: JobStatus | None = None, reason: str | None = None
    ) -> str | None:
        """Decide the terminal state once (CAS), publish the completion, mark it published."""
        now = self.clock()
        event_id = completion_id(run.run_key, str(state))
        token = new_owner()
        won = False

        def decide(current: Run) -> Run | None:
            nonlocal won
            # mutate() may call this again after losing a compare-and-swap, or after the storage
            # client retried our own write whose answer was lost (the decision then carries our token).
            won = False
            if current.completion is not None:
                won = current.completion.get("decided_by") == token
                return None
            won = True
            error = current.error
            why = reason or (status.reason if status else None)
            if why and not error:
                error = {"error": "RunFailed", "message": why}
            ended = current.ended_at or iso(status.end_time if status and status.end_time else now)
            started = current.started_at or (iso(status.start_time) if status and status.start_time else None)
            return current.with_state(
                state,
                why or "",
                raw_state=status.raw_state if status else current.raw_state,
                error=error,
                ended_at=ended,
                started_at=started,
                lease_until=None,
                completion={
                    "event_id": event_id,
                    "state": str(state),
                    "decided_at": iso(now),
                    "decided_by": token,
                    "publish_lease_until": iso(
                        now + dt.timedelta(seconds=self.rt.config.settings.publish_lease_seconds)
                    ),
                    "published": False,
                },
            )

        decided = self.rt.ledger.mutate(run.run_key, decide, current=run)
        assert decided is not None
        if not won or decided.completion is None or decided.completion.get("published"):
            return self._resume_publish(decided)
        logs.info(f"run finished: {state}", state=str(state), reason=(decided.error or {}).get("message"))
        return self._publish(decided)

    def _resume_publish(self, run: Run) -> str | None:
        info = run.completion or {}
        if info.get("published"):
            self.rt.ledger.clear_active(run.run_key)
            return None
        lease = from_iso(info.get("publish_lease_until"))
        if lease is not None and self.clock() < lease:
            return None  # another path decided it moments ago and is publishing
        now = self.clock()
        won = False

        def take(current: Run) -> Run | None:
            nonlocal won
            won = False
            c = dict(current.completion or {})
            if c.get("published"):
                return None
            lease = from_iso(c.get("publish_lease_until"))
            if lease is not None and now < lease:
                return None
            won = True
            c["publish_lease_until"] = iso(
                now + dt.timedelta(seconds=self.rt.config.settings.publish_lease_seconds)
            )
            c["republish_attempts"] = int(c.get("republish_attempts", 0)) + 1
            return replace(current, completion=c)

        taken = self.rt.ledger.mutate(run.run_key, take, current=run)
        if not won or taken is None:
            return None
        logs.warning(
            "completion was decided but not published (crash?): publishing again with the same id",
            completion_id=(taken.completion or {}).get("event_id"),
        )
        return self._publish(taken)

    def _publish(self, run: Run) -> str:
        if self._before_publish is not None:
            self._before_publish(run)
        topic = self.rt.config.settings.completion_topic_path
        event = completion.build_event(run, self.rt.config.settings.project)
        if topic:
            message_id = completion.publish(self.rt.publisher, topic, event)
            logs.info(
                "completion published",
                completion_id=event["id"],
                message_id=message_id,
                topic=topic,
                state=run.state,
            )
        else:
            logs.info("completion not published: no completion_topic configured", completion_id=event["id"])

        def mark(current: Run) -> Run | None:
            c = dict(current.completion or {})
            if c.get("published"):
                return None
            c.update(published=True, published_at=iso(self.clock()))
            return replace(current, completion=c)

        self.rt.ledger.mutate(run.run_key, mark, current=run)
        self.rt.ledger.clear_active(run.run_key)
        return run.state

    # -- the sweep ---------------------------------------------------------------------------------
    def sweep(self, *, budget_seconds: float = 45.0, workers: int = SWEEP_WORKERS) -> SweepReport:
        """Check every active run concurrently within ``budget_seconds``; the rest waits for the next sweep."""
        report = SweepReport()
        if any(t.batch is not None for t in self.rt.config.triggers.values()):
            report.windows = self._sweep_windows()
        active = self.rt.ledger.active()
        keys = [key for key, _ in active]
        markers = dict(active)
        deadline = time.monotonic() + budget_seconds
        with cf.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sweep") as pool:
            futures: dict[cf.Future[str | None], str] = {}
            for key in keys:
                if time.monotonic() >= deadline:
                    report.left_for_next += 1
                    continue
                futures[pool.submit(self._check_quietly, key, markers[key], deadline)] = key
            for fut in cf.as_completed(futures):
                key = futures[fut]
                try:
                    state = fut.result()
                except Exception as exc:
                    report.checked += 1
                    report.errors[key] = f"{exc.__class__.__name__}: {exc}"
                    continue
                if state is _NOT_REACHED:
                    report.left_for_next += 1  # queued, but the budget ran out before its turn
                    continue
                report.checked += 1
                if state:
                    report.finished[key] = state
        logs.info(
            "sweep done",
            active=len(keys),
            checked=report.checked,
            finished=len(report.finished),
            left_for_next=report.left_for_next,
            errors=len(report.errors),
        )
        return report

    def _sweep_windows(self) -> WindowSweep:
        """Windows past ``max_wait`` close, half-done closes finish (before the active runs are
        listed, so a window launched now is followed from this sweep on)."""
        try:
            return Windows(self.rt).sweep()
        except PipelineError as exc:  # listing the markers failed: the runs are still checked
            logs.warning("could not sweep the windows; the next sweep tries again", **exc.context())
            return WindowSweep(errors={"<list>": exc.message})

    def _check_quietly(self, key: str, marker: Marker | None, deadline: float) -> str | None:
        if time.monotonic() >= deadline:
            return _NOT_REACHED
        try:
            return self.check_marker(key, marker)
        except PipelineError as exc:
            logs.warning("could not check run; the next sweep will try again", run_key=key, **exc.context())
            raise
