"""The README's "Losses" section: its python code blocks run as written.

The README path can be overridden with the JAXSOFT_README environment variable (relative to the
repository root), to check a draft of the section before it goes into README.md.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADING = "## Losses"


def losses_code_blocks(text: str) -> list[str]:
    """The ```python blocks between the "## Losses" heading and the next level-2 heading."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == HEADING)
    except StopIteration:
        return []
    end = next(
        (i for i in range(start + 1, len(lines)) if re.match(r"^##\s", lines[i])), len(lines)
    )
    section = "\n".join(lines[start + 1 : end])
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.S | re.M)


def test_extractor_finds_blocks_of_the_losses_section_only():
    text = "# T\n## Losses\nsome text\n```python\na = 1\n```\n## Next\n```python\nb = 2\n```\n"
    assert losses_code_blocks(text) == ["a = 1\n"]
    assert losses_code_blocks("## Other\n```python\nc = 3\n```\n") == []


def test_readme_losses_section_runs():
    path = ROOT / os.environ.get("JAXSOFT_README", "README.md")
    blocks = losses_code_blocks(path.read_text(encoding="utf-8"))
    assert blocks, f"{path} has no ```python block under a '{HEADING}' heading"
    namespace: dict = {"__name__": "readme_losses"}
    for block in blocks:
        exec(compile(block, f"{path.name}:{HEADING}", "exec"), namespace)
