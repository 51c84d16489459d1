"""IAM grants as gcloud commands, by the kind of resource they bind on.

Each grant is one ``add-iam-policy-binding`` step, retried while an account created seconds ago
propagates. A backend's :class:`~handlers.backends.contract.Grant` on a resource kind of its own
carries its ``command``, used as given.
"""

from __future__ import annotations

from deploy.context import Deployment
from deploy.plan import Binding, PlanError
from handlers.backends.contract import Grant

# Scopes whose gcloud command grants one fixed role and takes no ``--role``: `gcloud functions
# add-invoker-policy-binding NAME --region=R --member=PRINCIPAL` grants roles/run.invoker on the
# function's Cloud Run service (its reference page; SDK 528 rejects `--role` with "unrecognized
# arguments", exit 2).
IMPLIED_ROLE = {"function": "roles/run.invoker"}


def command(scope: str, resource: str, project: str, region: str) -> list[str]:
    """The gcloud command (without ``--member`` and ``--role``) binding on ``resource``.

    ``project`` is the resource's project, ``region`` the functions' (for ``function``).
    """
    if scope == "project":
        return ["gcloud", "projects", "add-iam-policy-binding", resource, "--condition=None"]
    if scope == "bucket":
        return ["gcloud", "storage", "buckets", "add-iam-policy-binding", f"gs://{resource}"]
    if scope == "topic":
        return ["gcloud", "pubsub", "topics", "add-iam-policy-binding", resource, f"--project={project}"]
    if scope == "subscription":
        return ["gcloud", "pubsub", "subscriptions", "add-iam-policy-binding", resource]
    if scope == "service-account":
        return [
            "gcloud",
            "iam",
            "service-accounts",
            "add-iam-policy-binding",
            resource,
            f"--project={project}",
        ]
    if scope == "secret":
        secret = resource.rsplit("/", 1)[-1]
        return ["gcloud", "secrets", "add-iam-policy-binding", secret, f"--project={project}"]
    if scope == "function":
        where = [f"--region={region}", f"--project={project}"]
        return ["gcloud", "functions", "add-invoker-policy-binding", resource, *where]
    raise PlanError([f"no gcloud command binds IAM on a {scope!r}: the grant must give its command"])


def grant(d: Deployment, binding: Binding, project: str = "") -> None:
    """Add the step binding ``binding`` (its resource in ``project``, default the deploy's)."""
    argv = command(binding.scope, binding.resource, project or d.p, d.o.region)
    implied = IMPLIED_ROLE.get(binding.scope)
    if implied is not None and binding.role != implied:
        raise PlanError([f"a {binding.scope} binding can only grant {implied}, not {binding.role}"])
    add_binding(d, binding, argv, role_flag=implied is None)


def grant_declared(d: Deployment, g: Grant) -> None:
    """Add the step a backend's grant to the runtime account needs."""
    binding = Binding(d.runtime, g.role, g.kind, g.resource, g.why)
    if g.command:
        add_binding(d, binding, list(g.command))
    else:
        grant(d, binding, g.project)


def add_binding(d: Deployment, binding: Binding, argv: list[str], *, role_flag: bool = True) -> None:
    role = [f"--role={binding.role}"] if role_flag else []
    d.add(
        [*argv, f"--member={binding.member}", *role],
        f"IAM: {binding.role} to {binding.member} on {binding.scope} {binding.resource}: {binding.why}",
        binding=binding,
        retries=5,
    )
