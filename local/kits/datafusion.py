"""The Data Fusion kit: the CDAP emulator of :mod:`local.emulators.cdap` (it plays both the Data
Fusion instance API and the instance's CDAP API) with one app per pipeline, and its harness.

Instances need no registration: the emulator answers ACTIVE for any name. The functions use
anonymous credentials (no Authorization header), so the world's emulator does not check bearers.

Pushed status: :meth:`DataFusionKit.status_topics` turns on event publishing for the instances the
config's pipelines name (``instances.patch`` with ``updateMask=eventPublishConfig``, as deploy does)
to the topic ``datafusion-status`` (``DATAFUSION_STATUS_TOPIC`` overrides it); the emulator then
publishes every run status change there, through ``$PUBSUB_EMULATOR_HOST``, and the world routes
the topic to ``on_message``.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from handlers.backends.contract import FindSemantics
from handlers.backends.datafusion import RUN_KEY_ARG, DataFusion
from local.kits.base import EmulatorHandle, EmulatorKit, Fixtures, Timing, control, load_files
from local.kits.harness import EmulatorHarness

INSTANCE = "events-local"
NAMESPACE = "default"
OUTCOME_ARG = "simulate.outcome"
FAKE_TOKEN = "Bearer local-fake-token"
STATUS_TOPIC = "datafusion-status"
STATUS_TOPIC_ENV = "DATAFUSION_STATUS_TOPIC"
# Fault operations of the emulator behind the harness's operation names.
OPERATIONS = {"launch": "start", "status": "runs.get", "find": "runs.list", "cancel": "runs.stop"}


class DataFusionKit(EmulatorKit):
    backends = ("datafusion",)
    titles = {"datafusion": "Data Fusion"}
    emulator_module = "local.emulators.cdap"
    fixtures_option = "apps"
    fixtures_help = "CDAP emulator apps file (YAML/JSON); repeatable"
    serve_options = {"require_auth": False}
    launch_path = re.compile(r"/v3/namespaces/[^/]+/(start|apps/[^/]+/[^/]+/[^/]+/start)$")
    jobs_path = "runs"

    def fixtures(
        self, pipelines: Iterable[Any], files: Sequence[Path] = (), timing: Timing | None = None
    ) -> Fixtures:
        """Apps from ``files``, plus one for every pipeline none of them registers (1 s pending,
        1 s starting, 3 s running unless ``timing`` says: its pending time split in two)."""
        from local.emulators.cdap import load_apps

        if timing is None:
            behavior = {"pending_seconds": 1.0, "starting_seconds": 1.0, "run_seconds": 3.0}
        else:
            half = timing.pending_seconds / 2
            behavior = {"pending_seconds": half, "starting_seconds": half, "run_seconds": timing.run_seconds}
        apps = load_files(load_apps, files, "CDAP apps")
        known = {(a["namespace"], a["app"]) for a in apps}
        for pipeline in self.ours(pipelines):
            key = (str(pipeline.options.get("namespace", NAMESPACE)), str(pipeline.options.get("app")))
            if key in known:
                continue
            apps.append({"namespace": key[0], "app": key[1], "mode": pipeline.mode, "behavior": behavior})
            known.add(key)
        # to_json() adds programType/programId, which registration does not take back.
        return Fixtures({"apps": [{k: a[k] for k in ("namespace", "app", "mode", "behavior")} for a in apps]})

    def pipeline_fields(self, backend: str, pipeline: str) -> dict[str, Any]:
        return {"instance": INSTANCE, "namespace": NAMESPACE, "app": pipeline.replace("-", "_")}

    def job_id(self, job: Mapping[str, Any]) -> Any:
        return (job.get("record") or {}).get("runid")

    def job_input(self, job: Mapping[str, Any]) -> Any:
        return (job.get("runtimeargs") or {}).get("inputFile")

    def launch_statuses(self, url: str) -> Counter[str]:
        """The start items the emulator answered (a batch start answers per item, not per request)."""
        starts = control(url, "GET", "starts")["starts"]
        return Counter(f"datafusion {s.get('status')}" for s in starts)

    def harness(self, handle: EmulatorHandle, backend: str) -> DataFusionHarness:
        return DataFusionHarness(handle)

    def status_topics(self, url: str, project: str, pipelines: Iterable[Any]) -> list[str]:
        """Enable event publishing on every instance the pipelines name (one, ``events-local``,
        when none does) to the status topic; returns ``[topic]``."""
        topic = os.environ.get(STATUS_TOPIC_ENV) or STATUS_TOPIC
        ours = self.ours(pipelines)
        instances = sorted(
            {(str(p.region), str(p.options["instance"])) for p in ours if p.options.get("instance")}
        )
        config = {"enabled": True, "topic": f"projects/{project}/topics/{topic}"}
        for region, instance in instances or [("europe-west1", INSTANCE)]:
            answer = requests.patch(
                f"{url}/v1/projects/{project}/locations/{region}/instances/{instance}",
                params={"updateMask": "eventPublishConfig"},
                json={"eventPublishConfig": config},
                timeout=10,
            )
            answer.raise_for_status()
        return [topic]


KIT = DataFusionKit()


class DataFusionHarness(EmulatorHarness):
    """Drives the CDAP emulator for the backend contract suite.

    Each pipeline becomes a CDAP app of the same name in the ``default`` namespace, reached through
    the instance ``events-local``. The backend talks to it with a plain ``requests.Session`` carrying
    a fake bearer token, since the emulator (like Data Fusion) refuses CDAP calls without an
    ``Authorization`` header and anonymous Google credentials send none.
    """

    name = "datafusion"
    fault_operations = OPERATIONS

    def __init__(self, emulator_handle: EmulatorHandle) -> None:
        super().__init__(emulator_handle)
        self._modes: dict[str, str] = {}

    def register(
        self,
        pipeline_name: str,
        *,
        mode: str | None = None,
        outcome: str = "COMPLETED",
        failure_message: str = "",
        run_seconds: float = 3,
    ) -> None:
        """(Re)register the pipeline's CDAP app; the mode sticks from the first registration."""
        mode = mode or self._modes.get(pipeline_name, "batch")
        self._modes[pipeline_name] = mode
        behavior: dict[str, Any] = {
            "pending_seconds": 1,
            "starting_seconds": 1,
            "run_seconds": run_seconds,
            "outcome": outcome,
            "outcome_arg": OUTCOME_ARG,
        }
        if failure_message:
            behavior["failure_message"] = failure_message
        self._control(
            "POST",
            "apps",
            {"namespace": NAMESPACE, "app": pipeline_name, "mode": mode, "behavior": behavior},
        )

    # -- the harness interface -------------------------------------------------------------------
    def pipeline_options(self, pipeline_name: str, *, mode: str = "batch") -> dict[str, Any]:
        """The YAML fields of a Data Fusion pipeline; registers its app (succeeding by default)."""
        self._control("POST", "instances", {"instance": INSTANCE})
        self.register(pipeline_name, mode=mode)
        return {
            "backend": self.name,
            "instance": INSTANCE,
            "namespace": NAMESPACE,
            "app": pipeline_name,
            "mode": mode,
        }

    def backend(self) -> DataFusion:
        if self.google_auth:
            session = self.google_session()
        else:
            session = requests.Session()
            session.headers["Authorization"] = FAKE_TOKEN
        backend = DataFusion(session=session, endpoint=self.url)
        backend.find_semantics = FindSemantics(
            exact=True, settle_seconds=0.5
        )  # the emulator lists new runs at once unless told otherwise
        return backend

    def set_outcome(self, pipeline_name: str, *, succeed: bool, reason: str = "") -> None:
        self.register(
            pipeline_name,
            outcome="COMPLETED" if succeed else "FAILED",
            failure_message=reason or "The pipeline failed.",
        )

    def launches(self) -> list[dict[str, Any]]:
        """One entry per start item received: its parameters (without ``eventpipelines.*``) and status."""
        out = []
        for start in self._control("GET", "starts")["starts"]:
            args = start.get("runtimeargs") or {}
            out.append(
                {
                    "parameters": {k: v for k, v in args.items() if not k.startswith("eventpipelines.")},
                    "status": start["status"],
                    "run_key": args.get(RUN_KEY_ARG),
                    "app": start.get("app"),
                    "run_id": start.get("runId"),
                }
            )
        return out

    def runs(self) -> list[dict[str, Any]]:
        return list(self._control("GET", "runs")["runs"])

    def runs_started(self) -> int:
        return len(self.runs())
