"""The Fabric kit: the emulator of :mod:`local.emulators.fabric` (Fabric jobs and the Entra ID
token endpoint on one server) with one item per pipeline and fake app registrations, and its harness.

Credentials are fake, local values only: every ``credentials`` prefix a config uses gets an app
registration (tenant, client id, secret, refresh token) in the emulator and the matching
``<PREFIX>_*`` variables for the functions.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

from handlers.backends.fabric.entra import TokenProvider
from handlers.backends.fabric.jobs import Fabric
from handlers.backends.fabric.lookup import is_id
from local.kits.base import EmulatorHandle, EmulatorKit, Fixtures, Timing, load_files
from local.kits.harness import EmulatorHarness

FAKE_TENANT = "7a7a7a7a-0000-4000-8000-00000000000a"
FAKE_SECRET = "local-stack-fake-client-secret"
# The public parameters the harness's dataflows declare: the names the shared suites send (a launch
# checks its parameters against the dataflow's before it runs).
HARNESS_PARAMETERS = (
    "input",
    "inputFile",
    "output",
    "day",
    "source",
    "upstream",
    "orderId",
    "table",
    "Region",
    "Day",
    "Table",
    "Upstream",
)
OUTCOME_PARAM = "simulateOutcome"
ITEM_TYPES = {"execute": "Dataflow", "refresh": "Dataflow", "pipeline": "DataPipeline"}
_NAMESPACE = uuid.UUID("6f1c3b1e-5a7d-4f57-9a51-5f0d3c2b8e10")


def item_id(pipeline_name: str) -> str:
    """A stable item id for a pipeline name."""
    return str(uuid.uuid5(_NAMESPACE, f"item/{pipeline_name}"))


def workspace_id(display_name: str) -> str:
    """A stable workspace id for a workspace named by display name."""
    return str(uuid.uuid5(_NAMESPACE, f"workspace/{display_name}"))


WORKSPACE = str(uuid.uuid5(_NAMESPACE, "workspace"))


class FabricKit(EmulatorKit):
    backends = ("fabric",)
    titles = {"fabric": "Fabric"}
    emulator_module = "local.emulators.fabric"
    fixtures_option = "items"
    fixtures_help = "Fabric emulator items file (YAML/JSON); repeatable"
    # runs, not a dataflow's ApplyChanges (sync publishes a definition with it)
    launch_path = re.compile(
        r"/v1/workspaces/[^/]+/(items|dataflows)/[^/]+/jobs/(?!applyChanges/)([^/]+/)?instances$"
    )
    jobs_path = "instances"

    def fixtures(
        self, pipelines: Iterable[Any], files: Sequence[Path] = (), timing: Timing | None = None
    ) -> Fixtures:
        """Items from ``files``, plus one for every pipeline none of them registers (its type follows
        the job type: Execute -> Dataflow, Pipeline -> DataPipeline, RunNotebook -> Notebook), and a
        fake app registration with its env vars for every credentials prefix."""
        from local.emulators.fabric import load_items

        timing = timing or Timing()
        behavior: dict[str, Any] = {
            "not_started_seconds": timing.pending_seconds,
            "run_seconds": timing.run_seconds,
            "poll_after_seconds": timing.poll_after_seconds,
        }
        if not timing.dedupe:
            behavior["dedupe"] = False
        items = load_files(load_items, files, "Fabric items")
        known = {(i["workspace"], i["item"]) for i in items}
        prefixes: set[str] = set()
        workspaces: dict[str, str] = {}
        for pipeline in self.ours(pipelines):
            options = pipeline.options
            prefixes.add(str(options.get("credentials") or "FABRIC"))
            workspace, item = str(options["workspace"]), str(options["item"])
            if not is_id(workspace):  # named by display name: the emulator knows it by that name
                workspaces[workspace_id(workspace)] = workspace
                workspace = workspace_id(workspace)
            if not is_id(item) and options.get("definition"):
                continue  # kept in the repo: `python -m handlers sync` creates it
            key = (workspace.lower(), item.lower() if is_id(item) else item_id(f"{workspace}/{item}"))
            if key in known:
                continue
            job_type = str(options.get("job_type") or "").lower()
            kind = str(options.get("item_type") or ITEM_TYPES.get(job_type or "execute", "Notebook"))
            declared = sorted(getattr(pipeline, "parameters", {}) or {}) if kind == "Dataflow" else None
            items.append(
                {
                    "workspace": key[0],
                    "item": key[1],
                    "type": kind,
                    "displayName": pipeline.name if is_id(item) else item,
                    "behavior": {**behavior, "parameters": declared} if declared is not None else behavior,
                }
            )
            known.add(key)
        clients: list[dict[str, Any]] = []
        env: dict[str, str] = {}
        for prefix in sorted(prefixes):
            client_id = f"local-stack-{prefix.lower().replace('_', '-')}"
            refresh = f"local-stack-fake-refresh-token-{prefix.lower()}"
            clients.append(
                {
                    "tenant": FAKE_TENANT,
                    "client_id": client_id,
                    "client_secret": FAKE_SECRET,
                    "refresh_tokens": [refresh],
                }
            )
            env.update(
                {
                    f"{prefix}_TENANT_ID": FAKE_TENANT,
                    f"{prefix}_CLIENT_ID": client_id,
                    f"{prefix}_CLIENT_SECRET": FAKE_SECRET,
                    f"{prefix}_REFRESH_TOKEN": refresh,
                }
            )
        registrations: dict[str, list[dict[str, Any]]] = {"items": items, "clients": clients}
        if workspaces:
            registrations["workspaces"] = [{"id": i, "displayName": n} for i, n in sorted(workspaces.items())]
        return Fixtures(registrations, env)

    def pipeline_fields(self, backend: str, pipeline: str) -> dict[str, Any]:
        return {"workspace": WORKSPACE, "item": item_id(pipeline), "job_type": "Pipeline"}

    def job_id(self, job: Mapping[str, Any]) -> Any:
        return job.get("id")

    def harness(self, handle: EmulatorHandle, backend: str) -> FabricHarness:
        return FabricHarness(handle)


KIT = FabricKit()


class FabricHarness(EmulatorHarness):
    """Drives the Fabric emulator for the backend contract suite.

    Every pipeline is a Dataflow Gen2 item (job type ``Execute``, delegated auth) in one workspace;
    its item id is derived from the pipeline name. Credentials are fake and live in an explicit env
    mapping handed to the :class:`~handlers.backends.fabric.entra.TokenProvider`: the process
    environment is never touched.

    A second run of an item while one is still NotStarted/InProgress is ``Deduped`` by Fabric
    (normalized to CANCELLED). Set ``dedupe = False`` before ``pipeline_options`` to let concurrent
    runs of one item proceed.
    """

    name = "fabric"
    fault_operations = {
        "launch": "jobs.run",
        "status": "jobs.get",
        "find": "jobs.list",
        "cancel": "jobs.cancel",
    }
    TENANT = "11111111-2222-4333-8444-555555555555"
    CLIENT_ID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"
    CLIENT_SECRET = "harness-client-secret-not-real"
    REFRESH_TOKEN = "harness-refresh-token-not-real"

    def __init__(self, emulator_handle: EmulatorHandle) -> None:
        super().__init__(emulator_handle)
        self.workspace = WORKSPACE
        self.dedupe = True
        self.env: dict[str, str] = {
            "FABRIC_TENANT_ID": self.TENANT,
            "FABRIC_CLIENT_ID": self.CLIENT_ID,
            "FABRIC_CLIENT_SECRET": self.CLIENT_SECRET,
            "FABRIC_REFRESH_TOKEN": self.REFRESH_TOKEN,
        }
        self._register_client()
        self._settings = self.control("settings", method="GET")  # restored by reset()

    def environment(self) -> dict[str, str]:
        """Env vars for code that builds its own backend (``registry.spec("fabric").build()``, main.py):
        both endpoint overrides and the fake credentials. Set them with monkeypatch if needed."""
        return {**KIT.endpoint_env("fabric", self.url), **self.env}

    # -- emulator control ------------------------------------------------------------------------
    def control(self, path: str, body: Any = None, method: str = "POST") -> Any:
        """Call the emulator's control API (``/_emulator/<path>``) and return its JSON answer."""
        return self._control(method, path, body)

    def _register_client(self) -> None:
        """Register the fake app once (re-registering would forget refresh tokens Entra rotated)."""
        listed = self.control("clients", method="GET")["clients"]
        if any(c["tenant"] == self.TENANT and c["client_id"] == self.CLIENT_ID for c in listed):
            return
        self.control(
            "clients",
            {
                "tenant": self.TENANT,
                "client_id": self.CLIENT_ID,
                "client_secret": self.CLIENT_SECRET,
                "refresh_tokens": [self.REFRESH_TOKEN],
            },
        )

    def item_id(self, pipeline_name: str) -> str:
        return item_id(pipeline_name)

    def register(
        self,
        pipeline_name: str,
        *,
        outcome: str = "Completed",
        reason: str = "",
        streaming: bool = False,
        run_seconds: float = 3,
    ) -> None:
        behavior: dict[str, Any] = {
            "not_started_seconds": 1,
            "run_seconds": 10**9 if streaming else run_seconds,
            "outcome": outcome,
            "outcome_param": OUTCOME_PARAM,
            "parameters": list(HARNESS_PARAMETERS),
            "dedupe": self.dedupe,
        }
        if reason:
            behavior["failure_reason"] = reason
        self.control(
            "items",
            {
                "workspace": self.workspace,
                "item": self.item_id(pipeline_name),
                "type": "Dataflow",
                "displayName": pipeline_name,
                "behavior": behavior,
            },
        )

    # -- the harness interface -------------------------------------------------------------------
    def pipeline_options(self, pipeline_name: str, *, mode: str = "batch") -> dict[str, Any]:
        self.register(pipeline_name, streaming=mode == "streaming")
        return {
            "backend": "fabric",
            "workspace": self.workspace,
            "item": self.item_id(pipeline_name),
            "job_type": "Execute",
            "auth": "delegated",
        }

    def backend(self) -> Fabric:
        tokens = TokenProvider(token_endpoint=self.url, session=requests.Session(), env=self.env)
        return Fabric(session=requests.Session(), endpoint=self.url, tokens=tokens)

    def set_outcome(self, pipeline_name: str, *, succeed: bool, reason: str = "") -> None:
        self.register(
            pipeline_name,
            outcome="Completed" if succeed else "Failed",
            reason=reason or "The dataflow failed.",
        )

    def launches(self) -> list[dict[str, Any]]:
        """Every run request the emulator received: ``{"parameters": {name: value}, "status", "body"}``."""
        out = []
        for r in self.requests_received():
            if r["method"] != "POST" or not KIT.is_launch_path(r["path"]):
                continue
            body: dict[str, Any] = r["body"] if isinstance(r.get("body"), dict) else {}
            raw = (body.get("executionData") or {}).get("parameters")
            if isinstance(raw, list):
                params = {p.get("parameterName"): p.get("value") for p in raw if isinstance(p, dict)}
            else:
                params = dict(raw or {})
            out.append({"parameters": params, "status": r["status"], "body": body})
        return out

    def instances(self) -> list[dict[str, Any]]:
        return list(self.control("instances", method="GET")["instances"])

    def runs_started(self) -> int:
        """Job instances Fabric created (a Deduped one counts: it was a second run request accepted)."""
        return len(self.instances())

    def expire_credentials(self) -> bool:
        self.control("tokens/expire")
        return True

    def reset(self, settings: Any = None) -> None:
        """Forget instances, faults and recorded requests, restore the settings (items, client, tokens stay)."""
        super().reset(self._settings if settings is None else settings)


def entra_clients(tenant: str, user_app: str, sp_app: str, secret: str, refresh: str) -> list[dict[str, Any]]:
    """Two app registrations of one tenant for ``POST /_emulator/clients``: ``user_app`` (secret and
    refresh token: delegated tokens) and ``sp_app`` (secret only: app-only tokens)."""
    return [
        {"tenant": tenant, "client_id": user_app, "client_secret": secret, "refresh_tokens": [refresh]},
        {"tenant": tenant, "client_id": sp_app, "client_secret": secret},
    ]


FABRIC_HOSTS = ("https://api.fabric.microsoft.com", "https://login.microsoftonline.com")


@contextlib.contextmanager
def fabric_hosts_redirected(url: str) -> Iterator[list[str]]:
    """Within the block, every HTTP request ``requests`` sends to Fabric's or Entra's public host
    goes to ``url`` (the local emulator) instead: patched at the transport (``HTTPAdapter.send``),
    so a client nobody here wrote (``msfabricpysdkcore``) talks to the emulator unchanged. Yields
    the list of original URLs redirected, for assertions. Any other host is refused: no network."""
    from requests.adapters import HTTPAdapter

    original = HTTPAdapter.send
    redirected: list[str] = []
    base = url.rstrip("/")

    def send(self: HTTPAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
        target = str(request.url)
        for host in FABRIC_HOSTS:
            if target.startswith(host + "/"):
                redirected.append(target)
                request.url = base + target[len(host) :]
                break
        else:
            if not target.startswith(("http://127.0.0.1", "http://localhost")):
                raise requests.ConnectionError(f"no network but loopback: refused {target}")
        return original(self, request, *args, **kwargs)

    HTTPAdapter.send = send  # type: ignore[method-assign]
    try:
        yield redirected
    finally:
        HTTPAdapter.send = original  # type: ignore[method-assign]
