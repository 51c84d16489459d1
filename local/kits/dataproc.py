"""The Dataproc Serverless kit: the batches emulator of :mod:`local.emulators.dataproc` with one
registered main file per pipeline (a PySpark batch), and its harness.

Each pipeline becomes a PySpark batch whose main file is ``gs://local-jobs/dataproc/<pipeline>.py``;
run parameters reach a batch as its driver arguments ``--name=value``, which the harness and
:meth:`DataprocKit.job_input` read back.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from handlers.backends.dataproc import DataprocBatches
from local.kits.base import EmulatorHandle, EmulatorKit, Fixtures, Timing, load_files
from local.kits.harness import EmulatorHarness

# Fault operations of the emulator behind the harness's operation names.
OPERATIONS = {
    "launch": "batches.create",
    "status": "batches.get",
    "find": "batches.get",
    "cancel": "operations.cancel",
}


def main_file(pipeline_name: str) -> str:
    return f"gs://local-jobs/dataproc/{pipeline_name}.py"


def parameters_of(args: Sequence[Any]) -> dict[str, str]:
    """The ``--name=value`` driver arguments of a batch, as a mapping."""
    out = {}
    for arg in args:
        if isinstance(arg, str) and arg.startswith("--") and "=" in arg:
            name, _, value = arg[2:].partition("=")
            out[name] = value
    return out


class DataprocKit(EmulatorKit):
    backends = ("dataproc",)
    titles = {"dataproc": "Dataproc"}
    emulator_module = "local.emulators.dataproc"
    fixtures_option = "mains"
    fixtures_help = "Dataproc emulator main files (and their behaviour) file (YAML/JSON); repeatable"
    launch_path = re.compile(r"/v1/projects/[^/]+/locations/[^/]+/batches$")
    jobs_path = "batches"

    def fixtures(
        self, pipelines: Iterable[Any], files: Sequence[Path] = (), timing: Timing | None = None
    ) -> Fixtures:
        """Main files from ``files``, plus one for every pipeline none of them registers (1 s
        pending, 3 s running unless ``timing`` says; succeeding)."""
        from local.emulators.dataproc import load_mains

        timing = timing or Timing()
        mains = load_files(load_mains, files, "Dataproc main files")
        known = {m["main"] for m in mains}
        for pipeline in self.ours(pipelines):
            workloads = [
                v for k, v in pipeline.options.items() if k in ("pyspark", "spark", "spark_r", "spark_sql")
            ]
            workload: Mapping[str, Any] = (
                workloads[0] if workloads and isinstance(workloads[0], Mapping) else {}
            )
            main = str(workload.get("main") or main_file(pipeline.name))
            if main in known:
                continue
            behavior = {"pending_seconds": timing.pending_seconds, "run_seconds": timing.run_seconds}
            mains.append({"main": main, "behavior": behavior})
            known.add(main)
        return Fixtures({"mains": mains})

    def pipeline_fields(self, backend: str, pipeline: str) -> dict[str, Any]:
        return {"pyspark": {"main": main_file(pipeline)}}

    def job_id(self, job: Mapping[str, Any]) -> Any:
        return str((job.get("batch") or {}).get("name", "")).rsplit("/", 1)[-1]

    def job_input(self, job: Mapping[str, Any]) -> Any:
        batch = job.get("batch") or {}
        args = (batch.get("pysparkBatch") or batch.get("sparkBatch") or {}).get("args") or []
        return parameters_of(args).get("inputFile")

    def harness(self, handle: EmulatorHandle, backend: str) -> DataprocHarness:
        return DataprocHarness(handle)


KIT = DataprocKit()


class DataprocHarness(EmulatorHarness):
    """Drives the Dataproc emulator for the backend contract suite."""

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
