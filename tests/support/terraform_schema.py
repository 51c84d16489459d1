"""The Google provider's schema for the types deploy/terraform uses, and the module's blocks.

``terraform init`` cannot download providers here, so ``terraform providers schema -json`` is out
of reach. The provider's schema is published on PyPI instead, inside the prebuilt CDK for
Terraform bindings: the jsii assembly (``.jsii``) of ``cdktf-cdktf-provider-google`` describes
every resource and data source of one provider version, each argument with its Terraform name
(the anchor of its registry link), whether it is optional, and each nested block as a struct.
Such a wheel is 15 to 35 MB (up to 125 MB installed), too big for every test run, so the part the
module uses is kept in tests/fixtures/terraform-google-schema.json, for both ends of the range
versions.tf allows: the first and the last 5.x release. Regenerate it (network: PyPI) with::

    python -m tests.support.terraform_schema            # downloads the package versions below
    python -m tests.support.terraform_schema --wheel A.whl --wheel B.whl

It fails when the module uses a resource or data source type that a provider version lacks.
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
# versions.tf pins major 5: the package releases carrying its first and its last 5.x provider
# (10.0.0: hashicorp/google 5.0.0; 13.32.1: 5.43.1, the last before 14.0.0 moved to 6.x).
PACKAGE_VERSIONS = ("10.0.0", "13.32.1")

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
    for t in types.values():
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
    parser.add_argument("--wheel", type=Path, action="append", help=f"a downloaded {PACKAGE} wheel")
    parser.add_argument("--output", type=Path, default=SNAPSHOT)
    args = parser.parse_args(argv)
    wanted = wanted_types()
    snapshots = []
    with tempfile.TemporaryDirectory() as tmp:
        wheels = args.wheel or []
        for version in PACKAGE_VERSIONS if not wheels else []:
            dest = Path(tmp) / version
            spec = f"{PACKAGE}=={version}"
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), spec]
            subprocess.run(cmd, check=True)
            wheels.append(next(dest.glob("*.whl")))
        for wheel in wheels:
            snapshots.append(extract(load_assembly(wheel), wanted))
    snapshots.sort(key=lambda s: [int(x) for x in s["source"]["provider_version"].split(".")])
    doc = {"regenerate": "python -m tests.support.terraform_schema", "snapshots": snapshots}
    args.output.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
    for snap in snapshots:
        src = snap["source"]
        print(
            f"{args.output}: {len(snap['resource'])} resource and {len(snap['data'])} data "
            f"source types of hashicorp/google {src['provider_version']} "
            f"({src['package']} {src['package_version']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
