"""The README stays true: its graph is the CLI's graph of the example config, and the commands it
names exist."""

import re
from pathlib import Path

from handlers.entry.cli import graph_mermaid
from handlers.model.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_graph_is_the_graph_of_the_example_config():
    (block,) = re.findall(r"```mermaid\n(.*?)```", README, flags=re.DOTALL)
    assert block.rstrip("\n") == graph_mermaid(load_config(ROOT / "examples" / "pipelines.yaml")).rstrip("\n")


def test_the_two_commands_come_first_and_exist_in_the_makefile():
    first_block = re.search(r"```bash\n(.*?)```", README, flags=re.DOTALL).group(1)
    assert re.match(r"make demo\b", first_block) and "\nmake test" in first_block
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, flags=re.MULTILINE) and re.search(
        r"^test:", makefile, flags=re.MULTILINE
    )
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_linked_file_exists():
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target
