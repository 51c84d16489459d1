"""Specification: every gcloud command the deploy plan produces is one the real gcloud CLI accepts.

Each command runs through the installed ``gcloud`` with an empty configuration directory (no
account, no project), prompts disabled and its proxy pointed at a closed loopback port. gcloud
parses the whole command line (command group, flags, flag values, resource arguments) before it
looks for credentials, so a command it accepts stops with "You do not currently have an active
account selected" (exit 1) and nothing leaves the machine. Anything else is a rejection: exit 2 is
its argparse usage error (unrecognized arguments, an invalid choice, a bad flag value, a wrong
command group); exit 1 with another message is a resource argument it could not parse or a
project it could not find. The test asserts the credentials stop for every command.

Commands of the same shape (command group, flag names, the punctuation of each value) are checked
once; ``GCLOUD_CHECK_ALL=1`` checks every distinct command (minutes). docs/deploy.md, "Checked
against gcloud".
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from deploy import build, run
from deploy import deploy as d
from deploy.options import options_from_args, parse_args
from deploy.plan import Plan, Step
from deploy.render import VAR_RE
from handlers.backends import registry
from handlers.model.config import load_config
from tests.test_deploy import EXAMPLE, EXAMPLE_FLAGS, RICH, RICH_FLAGS, FakeCloud, creates

ROOT = Path(__file__).resolve().parents[1]
GCLOUD = shutil.which("gcloud")
ACCEPTED = "You do not currently have an active account selected"
CHECK_ALL = os.environ.get("GCLOUD_CHECK_ALL") == "1"
WORKERS = 3

pytestmark = pytest.mark.skipif(
    GCLOUD is None, reason="gcloud is not installed (it comes with the Pub/Sub emulator)"
)

# RICH with every backend of the registry, and pipelines that leave the backends' deploy flags
# something to do (a Dataflow pipeline naming no worker account).
EXTRA = yaml.safe_load(
    textwrap.dedent(
        """
        pipelines:
          nightly:
            backend: dataflow
            template: gs://acme-templates/nightly
          daily-orders:
            backend: dataproc
            pyspark:
              main: gs://etl-code/jobs/daily_orders.py
              python_files: [gs://etl-code/jobs/lib.zip]
            environment:
              service_account: etl-runner@acme-data.iam.gserviceaccount.com
          revenue-report:
            backend: dataproc
            spark_sql: {query_file: gs://etl-code/sql/revenue.sql}
        triggers:
          orders-landing:
            storage: {bucket: orders-landing, glob: "in/**/*.csv"}
            pipeline: daily-orders
          after-orders:
            completion: {upstream: daily-orders}
            pipeline: revenue-report
          nightly-drop:
            storage: {bucket: acme-nightly}
            pipeline: nightly
        """
    )
)
_every = yaml.safe_load(RICH)
for _section in ("pipelines", "triggers"):
    _every[_section].update(EXTRA[_section])
EVERY_BACKEND = yaml.safe_dump(_every, sort_keys=False)
BUILD_SA = "projects/acme-data/serviceAccounts/builder@acme-data.iam.gserviceaccount.com"
# Every flag of `python -m deploy.deploy --help` that changes a command (the defaults are the other side).
EVERY_FLAG = [
    *RICH_FLAGS,
    "--secret=DATAPROC_TOKEN=dataproc-token",
    "--env=GREETING=hello, world",  # a comma: the env flags switch gcloud's list delimiter
    "--api-invoker=user:ops@acme.example",
    "--bucket-location=acme-landing=EU",
    "--runtime-sa-name=etl-runtime",
    "--trigger-sa-name=etl-trigger",
    "--dead-letter-topic=etl-dead",
    "--sweep-topic=etl-sweep",
    "--sweep-schedule=*/5 * * * *",
    "--scheduler-job=etl-sweep",
    "--max-delivery-attempts=7",
    "--ledger-retention-days=14",
    "--ledger-location=EU",
    "--memory=1Gi",
    "--timeout=540s",
    "--max-instances=20",
    f"--build-service-account={BUILD_SA}",
    "--pubsub-token-creator",
    "--dataflow-worker-sa=df-default@acme-data.iam.gserviceaccount.com",
]
# ... and the flags that take things away.
FEWER_FLAGS = [*RICH_FLAGS[:-2], "--no-api", "--no-create-topics", "--ledger-retention-days=0"]


def test_the_every_backend_config_names_every_backend_of_the_registry(tmp_path):
    path = tmp_path / "every.yaml"
    path.write_text(EVERY_BACKEND, encoding="utf-8")
    assert {p.backend for p in load_config(path).pipelines.values()} == set(registry.names())


def plan_for(config: Path, flags: Sequence[str], tmp_path: Path) -> Plan:
    """The plan `python -m deploy.deploy --config CONFIG FLAGS` runs (built as the CLI builds it)."""
    args = parse_args(["--config", str(config), "--build-dir", str(tmp_path / "build"), *flags])
    cfg = load_config(config)
    return build.build_plan(cfg, options_from_args(args, cfg))


def plausible(var: str, project: str, region: str) -> str:
    """A value like the one the step capturing ``var`` prints (what gcloud would see at run time)."""
    kind, _, name = var.partition("_")
    name = name.lower().replace("_", "-")
    return {
        "PROJECT": "123456789012",
        "GCS": "service-123456789012@gs-project-accounts.iam.gserviceaccount.com",
        "BUCKET": "europe-west1",
        "TRIGGER": f"projects/{project}/locations/{region}/triggers/{name}-123456",
        "SUBSCRIPTION": f"projects/{project}/subscriptions/eventarc-{region}-{name}-123456-sub-789",
    }[kind]


def gcloud_commands(plan: Plan) -> list[tuple[str, ...]]:
    """Every gcloud argv of the plan (creates, their describes and updates), placeholders filled."""

    def fill(argv: Sequence[str]) -> tuple[str, ...]:
        return tuple(VAR_RE.sub(lambda m: plausible(m.group(1), plan.project, plan.region), a) for a in argv)

    out = []
    for step in plan.steps:
        for argv in (step.argv, step.check, step.update):
            if argv and argv[0] == "gcloud":
                out.append(fill(argv))
    return out


def shape(argv: Sequence[str]) -> tuple[str, ...]:
    """The command group and flag names as they are; the resource (the last positional argument)
    and each flag's value reduced to their punctuation (every name collapsed to ``w``). Commands
    of one shape parse alike."""

    def collapse(text: str) -> str:
        return re.sub(r"[\w.-]+", "w", text)

    positional = [i for i, a in enumerate(argv) if not a.startswith("--")]
    out = []
    for i, a in enumerate(argv):
        name, eq, value = a.partition("=")
        out.append(
            name + eq + collapse(value) if a.startswith("--") else collapse(a) if i == positional[-1] else a
        )
    return tuple(out)


def isolated_env(config_dir: Path) -> dict[str, str]:
    """gcloud with nothing configured, no prompts and nothing able to leave the machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSDK_", "GOOGLE_", "GCE_"))}
    env = {k: v for k, v in env.items() if k.lower() not in ("http_proxy", "https_proxy", "no_proxy")}
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    env.update(
        CLOUDSDK_CONFIG=str(config_dir),
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        CLOUDSDK_CORE_CHECK_GCE_METADATA="false",
        CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true",
        CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="true",
        CLOUDSDK_PROXY_TYPE="http",
        CLOUDSDK_PROXY_ADDRESS="127.0.0.1",
        CLOUDSDK_PROXY_PORT="9",
        HTTP_PROXY=closed,
        HTTPS_PROXY=closed,
    )
    return env


def gcloud_verdicts(commands: Iterable[Sequence[str]], config_dir: Path) -> list[tuple[str, int, str]]:
    """(command, exit code, gcloud's error) for each command gcloud did not accept."""
    env = isolated_env(config_dir)

    def one(argv: Sequence[str]) -> tuple[str, int, str]:
        done = subprocess.run(
            [GCLOUD or "gcloud", *argv[1:]], capture_output=True, text=True, env=env, timeout=60
        )
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR:")]
        return " ".join(argv), done.returncode, errors[0] if errors else done.stderr.strip()[-300:]

    with ThreadPoolExecutor(WORKERS) as pool:
        verdicts = list(pool.map(one, commands))
    return [(cmd, code, err) for cmd, code, err in verdicts if not (code == 1 and ACCEPTED in err)]


def test_gcloud_tells_a_usage_error_from_a_command_it_accepts(tmp_path):
    # GIVEN deliberate mistakes: a flag the group lacks, a bad value, a wrong group, a bad resource
    mistakes = [
        ("gcloud", "pubsub", "topics", "describe", "t", "--project=p", "--bogus"),
        ("gcloud", "functions", "deploy", "f", "--gen2", "--region=r", "--project=p", "--ingress-settings=x"),
        ("gcloud", "pubsub", "topics", "create", "t", "--project=p", "--message-retention-duration=soon"),
        ("gcloud", "functionz", "deploy", "f"),
        (
            "gcloud",
            "pubsub",
            "subscriptions",
            "add-iam-policy-binding",
            "x",
            "--member=user:a@b.c",
            "--role=r",
        ),
    ]
    fine = ("gcloud", "pubsub", "topics", "describe", "t", "--project=p")
    verdicts = gcloud_verdicts([*mistakes, fine], tmp_path / "gcloud")
    # THEN the argparse mistakes exit 2, the resource mistake 1 with its message, and the right
    # command alone reaches the credentials
    assert [code for _, code, _ in verdicts] == [2, 2, 2, 2, 1]
    assert "unrecognized arguments: --bogus" in verdicts[0][2]
    assert "argument --ingress-settings: Invalid choice: 'x'" in verdicts[1][2]
    assert "argument --message-retention-duration" in verdicts[2][2]
    assert "Invalid choice: 'functionz'" in verdicts[3][2]
    assert "Error parsing [subscription]" in verdicts[4][2]
    # and the usage error is the one the deploy never retries
    assert run.USAGE_ERROR == 2


CONFIGS = {
    "every backend, every option": (EVERY_BACKEND, EVERY_FLAG),
    "every backend, fewer options": (EVERY_BACKEND, FEWER_FLAGS),
    "examples/pipelines.yaml": (EXAMPLE, EXAMPLE_FLAGS),
    "examples/demo/pipelines.yaml": (ROOT / "examples" / "demo" / "pipelines.yaml", []),
    "test_deploy RICH": (RICH, RICH_FLAGS),
}


def test_gcloud_accepts_every_command_of_every_plan(tmp_path):
    # GIVEN the plans of the example configs and of configs exercising every backend and option
    commands: list[tuple[str, ...]] = []
    for i, (config, flags) in enumerate(CONFIGS.values()):
        if isinstance(config, str):
            path = tmp_path / f"config-{i}.yaml"
            path.write_text(config, encoding="utf-8")
            config = path
        commands += gcloud_commands(plan_for(config, flags, tmp_path / f"plan-{i}"))
    distinct = list(dict.fromkeys(commands))
    first_of_shape: dict[tuple[str, ...], tuple[str, ...]] = {}
    for command in distinct:
        first_of_shape.setdefault(shape(command), command)
    checked = distinct if CHECK_ALL else list(first_of_shape.values())
    # WHEN the real gcloud parses each of them
    rejected = gcloud_verdicts(checked, tmp_path / "gcloud")
    # THEN every one reaches the credentials check: no unknown flag, bad value or wrong group
    assert rejected == [], "\n".join(f"exit {code}: {cmd}\n    {err}" for cmd, code, err in rejected)
    print(f"gcloud accepted {len(checked)} commands ({len(distinct)} distinct, {len(commands)} in all)")


def test_a_usage_error_from_the_real_gcloud_stops_the_deploy_without_a_retry(tmp_path, monkeypatch):
    # GIVEN a binding step gcloud rejects (the --role the invoker command once carried), retries allowed
    for key in os.environ:
        if key.startswith(("CLOUDSDK_", "GOOGLE_")):
            monkeypatch.delenv(key)
    for key, value in isolated_env(tmp_path / "gcloud").items():
        monkeypatch.setenv(key, value)
    argv = ("gcloud", "functions", "add-invoker-policy-binding", "api", "--region=r", "--project=p")
    step = Step(
        (*argv, "--member=user:a@b.c", "--role=roles/run.invoker"), "IAM: the api's invoker", retries=5
    )
    sleeps: list[float] = []
    # WHEN the plan runs through the real gcloud
    with pytest.raises(run.StepFailed) as failed:
        run.run_plan(
            Plan("p", "r", "", [step]), run.SubprocessExecutor(), echo=lambda _: None, sleep=sleeps.append
        )
    # THEN gcloud's usage error stops it at once: no wait, no second attempt
    assert sleeps == []
    assert "exit code: 2 (gcloud rejected the command line: not retried)" in str(failed.value)
    assert "unrecognized arguments: --role=roles/run.invoker" in str(failed.value)


def test_a_deploy_with_every_backend_runs_to_the_end_and_a_second_run_creates_nothing(tmp_path, capsys):
    # GIVEN the every-backend, every-option config and a gcloud stand-in recording what exists
    path = tmp_path / "every.yaml"
    path.write_text(EVERY_BACKEND, encoding="utf-8")
    args = ["--config", str(path), "--build-dir", str(tmp_path / "build"), *EVERY_FLAG]
    plan = plan_for(path, EVERY_FLAG, tmp_path)
    gcloud_steps = [s for s in plan.steps if s.local is None]
    cloud = FakeCloud()
    # WHEN the module deploys it for real
    assert d.main(args, executor=cloud) == 0
    # THEN every gcloud step ran, to the last (each create after the describe that found nothing)
    assert len(cloud.calls) == len(gcloud_steps) + sum(s.check is not None for s in gcloud_steps)
    assert cloud.calls[-1][:4] == list(gcloud_steps[-1].argv[:4])
    assert not any("${" in a for c in cloud.calls for a in c)
    assert f"deployed {len(plan.functions)} functions to acme-data/europe-west1" in capsys.readouterr().out
    # WHEN it deploys again THEN it creates nothing
    cloud.calls.clear()
    assert d.main(args, executor=cloud) == 0
    assert cloud.calls and creates(cloud.calls) == []
