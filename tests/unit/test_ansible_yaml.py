"""Every YAML file of the Ansible collection parses: a broken one fails only the slow playbook
runs of tests/integration/test_ansible.py, and only at the end of the suite."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

COLLECTION = Path(__file__).resolve().parents[2] / "ansible"
FILES = sorted(COLLECTION.rglob("*.yml")) + sorted(COLLECTION.rglob("*.yaml"))


def test_the_collection_has_yaml_files() -> None:
    assert len(FILES) >= 5


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(COLLECTION)))
def test_it_parses(path: Path) -> None:
    yaml.safe_load(path.read_text())
