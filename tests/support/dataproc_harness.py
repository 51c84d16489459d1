"""The Dataproc Serverless emulator behind the cross-backend harness interface (see tests/test_backend_contract.py).

Each pipeline becomes a PySpark batch whose main file ``gs://jobs/dataproc/<pipeline>.py`` is
registered with the emulator (``local.emulators.dataproc``); run parameters arrive as the batch's
driver arguments ``--name=value``, which :meth:`DataprocHarness.launches` reads back.
Self-contained (it needs only the emulator handle), so it can move into a local kit as it is.
"""

from __future__ import annotations

from typing import Any

import requests

from handlers.backends.dataproc import DataprocBatches
from tests.support.emulator_client import EmulatorHarness

# Fault operations of the emulator behind the harness's operation names.
OPERATIONS = {
    "launch": "batches.create",
    "status": "batches.get",
    "find": "batches.get",
    "cancel": "operations.cancel",
}


def main_file(pipeline_name: str) -> str:
    return f"gs://jobs/dataproc/{pipeline_name}.py"


def parameters_of(args: list[Any]) -> dict[str, str]:
    """The ``--name=value`` driver arguments of a batch, as a mapping."""
    out = {}
    for arg in args:
        if isinstance(arg, str) and arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
            out[name] = value
    return out


class DataprocHarness(EmulatorHarness):
    """Drives local/emulators/dataproc.py for the backend contract suite."""

    name = "dataproc"
    fault_operations = OPERATIONS

    def register(
        self,
        pipeline_name: str,
        *,
        outcome: str = "SUCCEEDED",
        state_message: str = "",
        run_seconds: float = 3,
    ) -> None:
        behavior: dict[str, Any] = {
            "pending_seconds": 1,
            "run_seconds": run_seconds,
            "outcome": outcome,
            "cancel_seconds": 2,
        }
        if state_message:
            behavior["state_message"] = state_message
        self._control("POST", "mains", {"main": main_file(pipeline_name), "behavior": behavior})

    # -- the harness interface -------------------------------------------------------------------
    def pipeline_options(self, pipeline_name: str, *, mode: str = "batch") -> dict[str, Any]:
        """The YAML fields of a Dataproc pipeline; registers its main file (succeeding by default)."""
        self.register(pipeline_name)
        return {
            "backend": self.name,
            "pyspark": {"main": main_file(pipeline_name), "args": ["--mode=contract"]},
            "runtime": {"version": "2.2", "properties": {"spark.executor.instances": "2"}},
            "environment": {"ttl": "1h"},
        }

    def backend(self) -> DataprocBatches:
        session = self.google_session() if self.google_auth else requests.Session()
        return DataprocBatches(session=session, endpoint=self.url)

    def set_outcome(self, pipeline_name: str, *, succeed: bool, reason: str = "") -> None:
        self.register(
            pipeline_name,
            outcome="SUCCEEDED" if succeed else "FAILED",
            state_message=reason or "The driver failed.",
        )

    def creates(self) -> list[dict[str, Any]]:
        """Every batches.create request the emulator received, oldest first."""
        return [
            r for r in self.requests_received() if r["method"] == "POST" and r["path"].endswith("/batches")
        ]

    def launches(self) -> list[dict[str, Any]]:
        """One entry per create received: the parameters among its driver args, and its status."""
        out = []
        for r in self.creates():
            body = r.get("body") or {}
            args = (body.get("pysparkBatch") or {}).get("args") or []
            params = parameters_of(args)
            params.pop("mode", None)  # the configured argument, not a run parameter
            out.append({"parameters": params, "status": r["status"], "body": body, "query": r["query"]})
        return out

    def batches(self) -> list[dict[str, Any]]:
        """Every batch the emulator holds, with its bookkeeping."""
        return list(self._control("GET", "batches")["batches"])

    def runs_started(self) -> int:
        return len(self.batches())
