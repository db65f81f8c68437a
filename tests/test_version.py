"""One version number: the newest CHANGELOG entry names the version the code carries."""

import re
from pathlib import Path

import trt_lib

ROOT = Path(__file__).resolve().parent.parent


def test_the_changelog_names_the_code_version_first():
    versions = re.findall(r"^## (\d+\.\d+\.\d+) ", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    assert versions and versions[0] == trt_lib.__version__
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # no second number
