"""The design notes the code and docs cite ship with the repository (docs/design.md), with every section cited."""
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tracked_text_files():
    names = subprocess.run(["git", "ls-files", "*.py", "*.md"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return [ROOT / name for name in names if (ROOT / name).is_file() and ROOT / name != Path(__file__).resolve()]


def test_every_design_citation_resolves_to_docs_design_md():
    sections = {int(n) for n in re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "design.md").read_text(), re.M)}
    assert sections == {1, 2, 3, 4, 5}
    cited = {}
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        assert "shared/DESIGN" not in text, f"{path.relative_to(ROOT)} cites a file the repository does not ship"
        for number in re.findall(r"(?:DESIGN(?:\.md)?|design\.md\)?) §(\d+)", text):
            cited.setdefault(int(number), path.relative_to(ROOT))
    assert cited and set(cited) <= sections, cited
    assert "docs/design.md" in (ROOT / "README.md").read_text()
    assert "docs/design.md §5" in (ROOT / "baton_fast" / "numerics.py").read_text()
