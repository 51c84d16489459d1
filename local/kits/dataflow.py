"""The Dataflow kit (backends ``dataflow`` and ``dataflow-flex``): the emulator of
:mod:`local.emulators.dataflow` with one template per pipeline, and its contract-test harness."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from handlers.backends.dataflow import ClassicTemplate, FlexTemplate
from local.kits.base import EmulatorHandle, EmulatorKit, Fixtures, Timing, load_files
from local.kits.harness import EmulatorHarness

# Parameters the harness's templates accept (the contract tests' pipelines use these names).
HARNESS_PARAMETERS = ("input", "output", "inputFile", "day", "orderId", "region", "key", "upstream",
                      "source", "a", "b", "name", "stem", "owner")  # fmt: skip


class DataflowKit(EmulatorKit):
    backends = ("dataflow", "dataflow-flex")
    titles = {"dataflow": "Dataflow", "dataflow-flex": "Dataflow Flex"}
    emulator_module = "local.emulators.dataflow"
    fixtures_option = "templates"
    fixtures_help = "Dataflow emulator templates file (YAML/JSON); repeatable"
    launch_path = re.compile(r"/(templates|flexTemplates):launch$")
    jobs_path = "jobs"

    def fixtures(
        self, pipelines: Iterable[Any], files: Sequence[Path] = (), timing: Timing | None = None
    ) -> Fixtures:
        """Templates from ``files``, plus a stand-in for every pipeline whose template none of them
        registers (every parameter optional; 1 s pending, 3 s running unless ``timing`` says)."""
        from local.emulators.dataflow import load_templates

        timing = timing or Timing()
        templates = load_files(load_templates, files, "Dataflow templates")
        known = {t["gcsPath"] for t in templates}
        for pipeline in self.ours(pipelines):
            gcs_path = str(pipeline.options.get("template"))
            if gcs_path in known:
                continue
            templates.append(
                {
                    "gcsPath": gcs_path,
                    "kind": "flex" if pipeline.backend == "dataflow-flex" else "classic",
                    "name": pipeline.name,
                    "description": "registered by the local stack for this config",
                    "parameters": [
                        {"name": n, "label": n, "helpText": n, "isOptional": True}
                        for n in pipeline.parameters
                    ],
                    "behavior": {
                        "pending_seconds": timing.pending_seconds,
                        "run_seconds": timing.run_seconds,
                    },
                }
            )
            known.add(gcs_path)
        return Fixtures({"templates": templates})

    def pipeline_fields(self, backend: str, pipeline: str) -> dict[str, Any]:
        return {"template": f"gs://local-templates/{backend}/{pipeline}"}

    def job_id(self, job: Mapping[str, Any]) -> Any:
        return (job.get("job") or {}).get("id")

    def harness(self, handle: EmulatorHandle, backend: str) -> DataflowHarness:
        return DataflowHarness(handle, flex=backend == "dataflow-flex")


KIT = DataflowKit()


class DataflowHarness(EmulatorHarness):
    """Drives the Dataflow emulator for classic (``flex=False``) or flex templates."""

    def __init__(self, emulator: EmulatorHandle, *, flex: bool = False) -> None:
        super().__init__(emulator)
        self.flex = flex
        self.name = "dataflow-flex" if flex else "dataflow"
        self._paths: dict[str, str] = {}
        self.fault_operations = {
            "launch": "flexTemplates.launch" if flex else "templates.launch",
            "status": "jobs.get",
            "find": "jobs.list",
            "cancel": "jobs.update",
        }

    def template_path(self, pipeline_name: str) -> str:
        return self._paths.setdefault(pipeline_name, f"gs://templates/{self.name}/{pipeline_name}")

    def register(
        self,
        pipeline_name: str,
        *,
        streaming: bool = False,
        outcome: str = "DONE",
        error_message: str = "",
        params: list[dict[str, Any]] | None = None,
        run_seconds: float = 3,
        implementation: str | None = None,
    ) -> None:
        behavior = {
            "pending_seconds": 1,
            "run_seconds": run_seconds,
            "outcome": outcome,
            "streaming": streaming,
            "outcome_param": "simulateOutcome",
        }
        if error_message:
            behavior["error_message"] = error_message
        if implementation:
            behavior["implementation"] = implementation
        template: dict[str, Any] = {
            "gcsPath": self.template_path(pipeline_name),
            "kind": "flex" if self.flex else "classic",
            "name": pipeline_name,
            "behavior": behavior,
        }
        if params is not None:
            template["parameters"] = params
        else:
            template["parameters"] = [
                {"name": n, "label": n, "helpText": n, "isOptional": True} for n in HARNESS_PARAMETERS
            ]
        self._control("POST", "templates", template)

    # -- the harness interface -------------------------------------------------------------------
    def pipeline_options(self, pipeline_name: str, *, mode: str = "batch") -> dict[str, Any]:
        self.register(pipeline_name, streaming=mode == "streaming")
        return {
            "backend": self.name,
            "template": self.template_path(pipeline_name),
            "environment": {"tempLocation": "gs://temp/tmp", "maxWorkers": 2},
        }

    def backend(self) -> Any:
        session = self.google_session() if self.google_auth else requests.Session()
        cls = FlexTemplate if self.flex else ClassicTemplate
        return cls(session=session, endpoint=self.url)

    def set_outcome(self, pipeline_name: str, *, succeed: bool, reason: str = "") -> None:
        self.register(
            pipeline_name, outcome="DONE" if succeed else "FAILED", error_message=reason or "failed"
        )

    def requests_for(self, operation: str) -> list[dict[str, Any]]:
        suffix = (
            "flexTemplates:launch"
            if operation == "launch" and self.flex
            else ("templates:launch" if operation == "launch" else operation)
        )
        return [r for r in self.requests_received() if r["path"].endswith(suffix)]

    def launches(self) -> list[dict[str, Any]]:
        out = []
        for r in self.requests_for("launch"):
            body = r.get("body") or {}
            params = (
                (body.get("launchParameter") or {}).get("parameters") if self.flex else body.get("parameters")
            )
            out.append({"parameters": dict(params or {}), "status": r["status"], "body": body})
        return out

    def jobs(self) -> list[dict[str, Any]]:
        """Every job the emulator holds (its Job JSON, plus the launch ``parameters``)."""
        return [
            {**j["job"], "parameters": j.get("parameters", {})}
            for j in self._control("GET", "jobs").get("jobs", [])
        ]

    def runs_started(self) -> int:
        return len(self.jobs())
