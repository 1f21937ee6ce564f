"""README.md: the Spaces front matter agrees with requirements.txt, and CI runs the test command it gives."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def front_matter() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "Spaces reads its settings from front matter at the very top"
    block = text[4:text.index("\n---\n", 4)]
    return dict(line.split(": ", 1) for line in block.splitlines())


def test_front_matter_has_what_spaces_needs_and_pins_gradio_as_requirements_do():
    meta = front_matter()
    for key in ("title", "emoji", "sdk", "sdk_version", "app_file", "python_version", "license"):
        assert meta.get(key), key
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["python_version"] == '"3.11"'
    pinned = re.search(r"^gradio==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
    assert meta["sdk_version"] == pinned


def test_ci_runs_the_test_command_readme_gives():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme.split("## Set-up", 1)[1].split("\n## ", 1)[0], re.S)
    assert len(commands) == 2, "two set-up commands: run the app, run the tests"
    assert "python app.py" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()
