"""The plan model: an ordered list of :class:`Step`, each one gcloud command (or a local file
operation) with the human comment the dry run prints before it.

The plan is data so that it can be printed (:mod:`deploy.render`), run (:mod:`deploy.run`) and
checked by tests without touching the cloud.
"""

from __future__ import annotations

import compileall
import py_compile
import shlex
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_IN_SOURCE = "pipelines.yaml"
# Staged into the function source: everything main.py imports, nothing else.
SOURCE_ITEMS = ("main.py", "requirements.txt", "handlers")


@dataclass(frozen=True)
class Binding:
    """One IAM grant: ``member`` gets ``role`` on ``resource`` (of kind ``scope``), for ``why``."""

    member: str
    role: str
    scope: str  # project | bucket | topic | subscription | service-account | secret | function |
    # or a backend's own resource kind (its Grant gives the command)
    resource: str
    why: str


@dataclass(frozen=True)
class FunctionSpec:
    """One deployed function: its name, entry point and what triggers it."""

    name: str
    entry_point: str
    trigger: str  # storage | pubsub | http | the backend whose status events it receives
    source: str = ""  # the bucket, topic or region it listens to
    retry: bool = True


@dataclass(frozen=True)
class StageSource:
    """Copy ``main.py``, ``requirements.txt`` and ``handlers/`` to ``dest``, with the config as
    pipelines.yaml and its compiled, hash-checked JSON form beside it (a cold start then skips the
    YAML parse: docs/PERFORMANCE.md), and the sources compiled to bytecode (a cold start then skips
    compiling them: about 30 to 45 ms)."""

    source: str
    config: str
    dest: str

    def shell(self) -> str:
        items = " ".join(shlex.quote(f"{self.source}/{item}") for item in SOURCE_ITEMS)
        dest = shlex.quote(self.dest)
        staged = shlex.quote(self.dest + "/" + CONFIG_IN_SOURCE)
        compile_config = (
            f"import sys; sys.path.insert(0, {self.source!r}); "
            f"from handlers.model.config import compile_config; compile_config({self.dest + '/' + CONFIG_IN_SOURCE!r})"
        )
        return (
            f"rm -rf {dest} && mkdir -p {dest} && cp -R {items} {dest}/ && "
            f"cp {shlex.quote(self.config)} {staged} && "
            f"python3 -c {shlex.quote(compile_config)} && "
            f"python3 -m compileall -q --invalidation-mode unchecked-hash {dest}"
        )

    def apply(self) -> None:
        dest = Path(self.dest)
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
        for item in SOURCE_ITEMS:
            src = Path(self.source) / item
            if src.is_dir():
                shutil.copytree(src, dest / item, ignore=ignore)
            else:
                shutil.copy2(src, dest / item)
        shutil.copy2(self.config, dest / CONFIG_IN_SOURCE)
        from handlers.model.config import compile_config  # deploy-time only

        compile_config(dest / CONFIG_IN_SOURCE)
        compileall.compile_dir(
            str(dest), quiet=1, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
        )


@dataclass(frozen=True)
class WriteFile:
    """Write ``content`` (one line) to ``path``: a file a later gcloud flag reads."""

    path: str
    content: str

    def shell(self) -> str:
        parent = shlex.quote(str(Path(self.path).parent))
        return f"mkdir -p {parent} && printf '%s\\n' {shlex.quote(self.content)} > {shlex.quote(self.path)}"

    def apply(self) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.path).write_text(self.content + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Step:
    """One command of the plan.

    ``check``: run first; when it succeeds the resource exists and ``argv`` (a create) is skipped,
    or ``update`` runs instead. ``capture``: keep the command's stdout (stripped) as a variable
    that later argv use as ``${NAME}``. ``local``: a file operation done in Python (shown as its
    shell equivalent in the dry run). ``retries``: IAM bindings on accounts created seconds ago
    may fail until IAM sees them.
    """

    argv: tuple[str, ...]
    comment: str
    check: tuple[str, ...] | None = None
    update: tuple[str, ...] | None = None
    capture: str | None = None
    lowercase: bool = False
    retries: int = 0
    binding: Binding | None = None
    function: FunctionSpec | None = None
    local: StageSource | WriteFile | None = None


@dataclass
class Plan:
    """Everything the deploy does, in order."""

    project: str
    region: str
    config_path: str
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def bindings(self) -> list[Binding]:
        return [s.binding for s in self.steps if s.binding is not None]

    @property
    def functions(self) -> list[FunctionSpec]:
        return [s.function for s in self.steps if s.function is not None]


class PlanError(Exception):
    """The options do not fit the config; ``problems`` lists every one of them."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
