"""The Google provider's schema for the types deploy/terraform uses, and the module's blocks.

``terraform init`` cannot download providers here, so ``terraform providers schema -json`` is out
of reach. The provider's schema is published on PyPI instead, inside the prebuilt CDK for
Terraform bindings: the jsii assembly (``.jsii``) of ``cdktf-cdktf-provider-google`` describes
every resource and data source of one provider version, each argument with its Terraform name
(the anchor of its registry link), whether it is optional, and each nested block as a struct.
That wheel is 35 MB (125 MB installed), too big for every test run, so the part the module uses
is kept in tests/fixtures/terraform-google-schema.json. Regenerate it (network: PyPI) with::

    python -m tests.support.terraform_schema            # downloads the pinned package version
    python -m tests.support.terraform_schema --wheel cdktf_cdktf_provider_google-*.whl

It fails when the module uses a resource or data source type that the provider version lacks.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "deploy" / "terraform"
SNAPSHOT = ROOT / "tests" / "fixtures" / "terraform-google-schema.json"

PACKAGE = "cdktf-cdktf-provider-google"
# The last release carrying a 5.x provider (versions.tf pins major 5): it carries 5.43.1.
PACKAGE_VERSION = "13.32.1"

_LINK = re.compile(
    r"\{@link https://registry\.terraform\.io/providers/hashicorp/google/([0-9.]+)/docs/"
    r"(resources|data-sources)/\w+ (\w+)\}"
)
_ANCHOR = re.compile(r"#(\w+) \w+#\w+\}")


def unquote(key: str) -> str:
    return key.strip('"')


def is_block(value: Any) -> bool:
    """A nested block as python-hcl2 parses it: a list of dicts marked ``__is_block__``."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, dict) and v.get("__is_block__") for v in value)
    )


def module_blocks(module: Path = MODULE) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(kind, type, name, body) of every ``resource`` and ``data`` block of the module."""
    import hcl2

    for path in sorted(module.glob("*.tf")):
        doc = hcl2.loads(path.read_text(encoding="utf-8"))
        for kind in ("resource", "data"):
            for entry in doc.get(kind, []):
                for rtype, named in entry.items():
                    for rname, body in named.items():
                        yield kind, unquote(rtype), unquote(rname), body


def _tf_name(prop: dict[str, Any]) -> str:
    docs = prop.get("docs", {})  # a long summary is cut: the link is then in the remarks
    found = _ANCHOR.search(docs.get("summary", "") + " " + docs.get("remarks", ""))
    if not found:
        raise ValueError(f"no registry anchor in the docs of {prop['name']}")
    return found.group(1)


def _struct_of(type_ref: dict[str, Any], types: dict[str, Any]) -> tuple[str | None, bool]:
    """The struct a property's type names (a nested block) and whether at most one is allowed."""
    fqn = type_ref.get("fqn")
    if fqn in types and types[fqn].get("datatype"):
        return fqn, True
    for member in type_ref.get("union", {}).get("types", []):
        element = member.get("collection", {}).get("elementtype", {}).get("fqn")
        if element in types and types[element].get("datatype"):
            return element, False
    return None, False


def _properties(fqn: str, types: dict[str, Any]) -> list[dict[str, Any]]:
    struct = types[fqn]
    props = list(struct.get("properties", []))
    for base in struct.get("interfaces", []):
        if base in types:  # cdktf.TerraformMetaArguments (count, for_each, ...) is not
            props += _properties(base, types)
    return props


def _schema(fqn: str, types: dict[str, Any]) -> dict[str, Any]:
    arguments: dict[str, str] = {}
    blocks: dict[str, Any] = {}
    for prop in _properties(fqn, types):
        name = _tf_name(prop)
        required = not prop.get("optional", False)
        struct, max_one = _struct_of(prop["type"], types)
        if struct is None:
            arguments[name] = "required" if required else "optional"
        else:
            blocks[name] = {"required": required, "max_one": max_one, **_schema(struct, types)}
    return {
        "arguments": dict(sorted(arguments.items())),
        "blocks": dict(sorted(blocks.items())),
    }


def load_assembly(wheel: Path) -> dict[str, Any]:
    """The jsii assembly inside the wheel (a .jsii file in an npm tarball)."""
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".jsii.tgz"))
        data = zf.read(name)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tf:
        member = tf.extractfile("package/.jsii")
        assert member is not None
        return json.load(member)


def extract(assembly: dict[str, Any], wanted: dict[str, set[str]]) -> dict[str, Any]:
    """The schema of each wanted ``{"resource": types, "data": types}``; fails on unknown types."""
    types = assembly["types"]
    index: dict[tuple[str, str], str] = {}
    versions = set()
    for fqn, t in types.items():
        if t.get("kind") != "class":
            continue
        found = _LINK.search(t.get("docs", {}).get("summary", ""))
        if found:
            version, kind, tf_type = found.groups()
            versions.add(version)
            config = t["initializer"]["parameters"][2]["type"]["fqn"]
            index["resource" if kind == "resources" else "data", tf_type] = config
    if len(versions) != 1:
        raise ValueError(f"expected one provider version in the assembly, found {versions}")
    out: dict[str, Any] = {"resource": {}, "data": {}}
    missing = []
    for kind, tf_types in wanted.items():
        for tf_type in sorted(tf_types):
            if (kind, tf_type) not in index:
                missing.append(f"{kind} {tf_type}")
                continue
            out[kind][tf_type] = _schema(index[kind, tf_type], types)
    if missing:
        raise SystemExit(f"hashicorp/google {versions.pop()} has no {', '.join(missing)}")
    return {
        "source": {
            "package": PACKAGE,
            "package_version": assembly["version"],
            "provider": "registry.terraform.io/hashicorp/google",
            "provider_version": versions.pop(),
            "regenerate": "python -m tests.support.terraform_schema",
        },
        **out,
    }


def wanted_types(module: Path = MODULE) -> dict[str, set[str]]:
    wanted: dict[str, set[str]] = {"resource": set(), "data": set()}
    for kind, tf_type, _, _ in module_blocks(module):
        if tf_type.startswith("google_"):
            wanted[kind].add(tf_type)
    return wanted


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help=f"a downloaded {PACKAGE} wheel")
    parser.add_argument("--output", type=Path, default=SNAPSHOT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = args.wheel
        if wheel is None:
            spec = f"{PACKAGE}=={PACKAGE_VERSION}"
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, spec]
            subprocess.run(cmd, check=True)
            wheel = next(Path(tmp).glob("*.whl"))
        snapshot = extract(load_assembly(wheel), wanted_types())
    args.output.write_text(json.dumps(snapshot, indent=1) + "\n", encoding="utf-8")
    src = snapshot["source"]
    print(
        f"{args.output}: {len(snapshot['resource'])} resource and {len(snapshot['data'])} data "
        f"source types of hashicorp/google {src['provider_version']} "
        f"({src['package']} {src['package_version']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
