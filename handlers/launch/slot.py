"""The launch slot: one start at a time per target of a backend whose find() can only guess.

A Fabric job instance carries nothing of ours (no name, no labels, no parameters in the listing),
so after a start whose answer was lost, "the instance this run started" can only be told from other
runs' instances if no other run of the same item was starting at the same moment. The slot makes
that so. It is one small ledger document per target (``slots/<backend>/<digest>``, the target being
what :attr:`FindSemantics.scope` names: a Fabric item)::

    {"run_key", "owner", "since", "until", "released", "unsettled", "recent": [[job_id, run_key], ...]}

- **acquire**: create-only, or compare-and-swap over a slot that was released, whose lease ended
  (its holder crashed or gave up), or that the same run key holds (an earlier delivery of this run);
  otherwise wait a few seconds, then :class:`RunInProgress` (the event is redelivered).
- While held, every instance another run started is already claimed in the ledger
  (``jobs/<backend>/<id>``, :meth:`Ledger.claim_job`), because a holder claims its instance before
  it releases. So the newest unclaimed instance of the target is the holder's own.
- **release**: compare-and-swap to ``released`` once the holder's start is settled (its instance
  claimed, or nothing was sent that might have started one), adding the instance to ``recent`` (the
  last :data:`RECENT` instances started through the slot, with their runs): a holder's ``find``
  skips the ones of other runs at once, even those not started yet (no start time to rank by). A holder that gave up with a start
  still uncertain releases it marked ``unsettled`` (and a crashed holder's slot ends with its
  lease): whoever takes it next *settles* it first (claims the instance the previous holder may
  have started for that holder's run and records it as that run's job, see
  :meth:`handlers.launch.service.LaunchService`), so no other run can adopt it.

The lease is the ledger's claim lease (``settings.ledger.lease``), which config load keeps longer
than a launch can take (``launch_budget`` plus the last call's timeout).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from handlers.core import logs
from handlers.core.errors import PipelineError, RunInProgress
from handlers.core.ids import digest
from handlers.core.times import from_iso, iso
from handlers.launch.ledger import Conflict, Ledger

RECENT = 50  # instances remembered on the slot (about 100 bytes each)


@dataclass(frozen=True)
class Slot:
    """One holder's view of a slot document."""

    name: str
    run_key: str
    owner: str
    since: str  # when this holder took it: an instance it started is no older than this
    until: str
    released: bool = False
    unsettled: bool = False  # released by a holder that gave up with a start of its own uncertain
    recent: tuple[tuple[str, str], ...] = ()  # (job id, run key) started through the slot, newest last
    generation: int = 0

    def others(self, run_key: str) -> frozenset[str]:
        """Job ids started through the slot for runs other than ``run_key``."""
        return frozenset(job for job, key in self.recent if key != run_key)

    def remember(self, job_id: str, run_key: str) -> Slot:
        kept = tuple(item for item in self.recent if item[0] != job_id)
        return Slot(**{**self.__dict__, "recent": (*kept, (job_id, run_key))[-RECENT:]})

    def to_doc(self) -> dict[str, Any]:
        return {
            "run_key": self.run_key,
            "owner": self.owner,
            "since": self.since,
            "until": self.until,
            "released": self.released,
            "unsettled": self.unsettled,
            "recent": [list(item) for item in self.recent],
        }

    @classmethod
    def from_doc(cls, name: str, doc: dict[str, Any], generation: int) -> Slot:
        return cls(
            name=name,
            run_key=str(doc.get("run_key") or ""),
            owner=str(doc.get("owner") or ""),
            since=str(doc.get("since") or ""),
            until=str(doc.get("until") or ""),
            released=bool(doc.get("released")),
            unsettled=bool(doc.get("unsettled")),
            recent=tuple(
                (str(item[0]), str(item[1]))
                for item in doc.get("recent") or ()
                if isinstance(item, list) and len(item) == 2
            ),
            generation=generation,
        )

    def expired(self, at: dt.datetime) -> bool:
        until = from_iso(self.until) if self.until else None
        return until is None or at >= until


def slot_name(backend: str, scope: str) -> str:
    return f"slots/{backend}/{digest(backend, scope, length=32)}"


class Slots:
    """Acquire and release launch slots in the ledger."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        lease_seconds: float,
        clock: Callable[[], dt.datetime],
        sleep: Callable[[float], Any],
        wait_seconds: float = 8.0,
    ) -> None:
        self.ledger = ledger
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.sleep = sleep
        self.wait_seconds = wait_seconds

    def acquire(
        self,
        backend: str,
        scope: str,
        run_key: str,
        owner: str,
        settle: Callable[[Slot], str | None],
    ) -> tuple[Slot, bool]:
        """(the slot, now ours; whether an earlier delivery of this run left a start unsettled).

        A slot another run left unsettled is handed to ``settle`` *before* it is taken over, so its
        record survives a failed settle (settling twice is harmless: claims are first-wins);
        ``settle`` returns the job id it found for that run, if any (remembered on the slot).
        Raises :class:`RunInProgress` while another run holds it for longer than ``wait_seconds``."""
        name = slot_name(backend, scope)
        deadline = time.monotonic() + self.wait_seconds
        delay = 0.05
        while True:
            found = self.ledger.read_doc(name)
            stamp = self.clock()
            mine = Slot(
                name,
                run_key,
                owner,
                since=iso(stamp) or "",
                until=iso(stamp + dt.timedelta(seconds=self.lease_seconds)) or "",
                recent=Slot.from_doc(name, *found).recent if found is not None else (),
            )
            if found is None:
                try:
                    return self._took(mine, 0), False
                except Conflict:
                    continue
            current = Slot.from_doc(name, *found)
            if current.owner == owner and not current.released:
                return current, False  # our own write, whose answer was lost
            if current.released or current.expired(stamp) or current.run_key == run_key:
                unsettled = current.unsettled or not current.released
                if unsettled:
                    logs.warning(
                        "taking over a launch slot whose holder's start is unsettled",
                        previous_run_key=current.run_key,
                        previous_since=current.since,
                    )
                if unsettled and current.run_key != run_key:
                    settled = settle(current)
                    if settled is not None:
                        mine = mine.remember(settled, current.run_key)
                try:
                    taken = self._took(mine, current.generation)
                except Conflict:
                    continue
                return taken, unsettled and current.run_key == run_key
            if time.monotonic() >= deadline:
                raise RunInProgress(
                    f"another run ({current.run_key}) is starting a job of the same target",
                    run_key=run_key,
                    retry_after=2,
                )
            self.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _took(self, slot: Slot, generation: int) -> Slot:
        written = self.ledger.write_doc(slot.name, slot.to_doc(), generation)
        return Slot(**{**slot.__dict__, "generation": written})

    def keep(self, slot: Slot, needed_seconds: float) -> Slot:
        """The slot, with at least ``needed_seconds`` of lease left (renewed by compare-and-swap when
        not): a holder never sends a start after its slot could have passed to another run."""
        stamp = self.clock()
        until = from_iso(slot.until) if slot.until else None
        if until is not None and (until - stamp).total_seconds() >= needed_seconds:
            return slot
        longer = iso(stamp + dt.timedelta(seconds=max(self.lease_seconds, needed_seconds))) or ""
        current = slot
        for _ in range(10):
            renewed = Slot(**{**current.__dict__, "until": longer})
            try:
                return self._took(renewed, current.generation)
            except Conflict:
                found = self.ledger.read_doc(slot.name)
            if found is None:
                break
            current = Slot.from_doc(slot.name, *found)
            if current.owner != slot.owner or current.released:
                break
            if current.until == longer:
                return current  # our own renewal, whose answer was lost
        raise RunInProgress(
            f"the launch slot of run {slot.run_key} passed to another run while launching",
            run_key=slot.run_key,
            retry_after=2,
        )

    def release(self, slot: Slot, *, settled: bool = True, job_id: str | None = None) -> None:
        """Hand the slot on (best effort: a slot not released is taken over when its lease ends).
        ``settled=False``: the holder gave up with a start of its own uncertain; it sends nothing
        more, so the next holder may settle that start at once instead of waiting for the lease.
        ``job_id``: the instance the holder started (or adopted), remembered on the slot."""
        done = Slot(**{**slot.__dict__, "released": True, "unsettled": not settled})
        if job_id is not None:
            done = done.remember(job_id, slot.run_key)
        try:
            for _ in range(10):
                try:
                    self.ledger.write_doc(slot.name, done.to_doc(), done.generation)
                    return
                except Conflict:
                    found = self.ledger.read_doc(slot.name)
                current = Slot.from_doc(slot.name, *found) if found is not None else None
                if current is None or current.owner != slot.owner or current.released:
                    return  # taken over after our lease ended (or our release landed): nothing to do
                done = Slot(**{**done.__dict__, "generation": current.generation})
        except PipelineError as exc:
            logs.warning("could not release the launch slot; it ends with its lease", cause=exc.message)
