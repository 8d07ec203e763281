"""The documentation: the site in docs/ builds with `mkdocs build --strict` (every page in the nav, every link between
pages and every anchor resolved), the README stays a short landing page whose links work on GitHub, and no page
speaks of internal issue numbers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FIRST_COMMANDS = ("make demo", "make test")  # what a newcomer runs first, so the README opens with them
# "issue 16", "issue #16", "#16", "PR 12", "pull request 12": the tracker's numbers mean nothing to a reader.
ISSUE = re.compile(r"\bissues?\s+#?\d+|\b(?:PR|pull request)\s+#?\d+|(?<![\w&/#])#\d+\b", re.IGNORECASE)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_mkdocs_builds_the_site_strictly(tmp_path):
    """--strict turns mkdocs' warnings into a failure: a page left out of the nav, a link to a missing page or
    anchor (mkdocs.yml's `validation` makes each of those a warning)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "configuration" / "index.html").is_file()


def test_the_readme_is_a_short_landing_page_that_opens_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250, "README.md is the landing page: move the detail to docs/"
    first_block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert first_block, "README.md lacks its first command block"
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines() if line.strip()]
    assert commands == list(FIRST_COMMANDS)
    before = text[:first_block.start()]
    assert not re.search(r"`[^`]*\b(ftune|pip|python|make)\b[^`]*`", before), "a command comes before make demo"


def test_the_readme_links_point_at_files_that_exist():
    """README's links into docs/ name the Markdown files, so they work on GitHub as well as in an editor."""
    targets = [t for t in LINK.findall(README.read_text(encoding="utf-8")) if not re.match(r"[a-z]+:", t)]
    assert any(t.startswith("docs/") for t in targets)
    missing = [t for t in targets if not (ROOT / t.split("#")[0]).exists()]
    assert missing == []


def test_no_page_mentions_internal_issue_numbers():
    found = [f"{page.relative_to(ROOT)}: {m.group(0)!r}" for page in pages()
             for m in ISSUE.finditer(page.read_text(encoding="utf-8"))]
    assert found == []
