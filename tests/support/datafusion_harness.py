"""The CDAP / Data Fusion emulator behind the cross-backend harness interface (see tests/test_backend_contract.py).

One emulator (``local.emulators.cdap.serve()``) plays both the Data Fusion instance API and the
instance's CDAP API. Each pipeline becomes a CDAP app of the same name in the ``default`` namespace,
reached through the instance ``events-local``. The backend talks to it with a plain
``requests.Session`` carrying a fake bearer token, since the emulator (like Data Fusion) refuses CDAP
calls without an ``Authorization`` header and anonymous Google credentials send none.
"""

from __future__ import annotations

from typing import Any

import requests

from handlers.backends.contract import FindSemantics
from handlers.backends.datafusion import RUN_KEY_ARG, DataFusion
from tests.support.emulator_client import EmulatorHarness

INSTANCE = "events-local"
NAMESPACE = "default"
OUTCOME_ARG = "simulate.outcome"
FAKE_TOKEN = "Bearer local-fake-token"
# Fault operations of the emulator behind the harness's operation names.
OPERATIONS = {"launch": "start", "status": "runs.get", "find": "runs.list", "cancel": "runs.stop"}


class DataFusionHarness(EmulatorHarness):
    """Drives local/emulators/cdap.py for the backend contract suite."""

    name = "datafusion"
    fault_operations = OPERATIONS

    def __init__(self, emulator_handle: Any) -> None:
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
