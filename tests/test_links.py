"""Every relative link in the README and docs/ points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")
CODE = re.compile(r"`[^`]*`")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    text = CODE.sub("", page.read_text())  # patterns in code spans are not links
    broken = [target for target, _ in LINK.findall(text)
              if "://" not in target and not (page.parent / target).exists()]
    assert broken == [], f"{page.name} links to missing files: {broken}"
