"""The Dataflow emulator behind the cross-backend harness interface (see tests/test_backend_contract.py)."""

from __future__ import annotations

from typing import Any

import requests

from handlers.backends.dataflow import ClassicTemplate, FlexTemplate
from tests.support.emulator_client import EmulatorHarness


class DataflowHarness(EmulatorHarness):
    """Drives local/emulators/dataflow.py for classic (``flex=False``) or flex templates."""

    def __init__(self, emulator: Any, *, flex: bool = False) -> None:
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
                {"name": n, "label": n, "helpText": n, "isOptional": True}
                for n in (
                    "input",
                    "output",
                    "inputFile",
                    "day",
                    "orderId",
                    "region",
                    "key",
                    "upstream",
                    "source",
                    "a",
                    "b",
                    "name",
                    "stem",
                    "owner",
                )
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
