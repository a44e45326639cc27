"""Only the settings modules (and the `inkq` command-line client) read the process environment: every other module
takes its configuration from `tasks.core.settings.current()` or the API's settings."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"tasks/core/settings.py", "api/settings.py", "api/client.py"}
READS = {"environ", "getenv", "environb", "getenvb"}


def env_reads(source: str) -> list[int]:
    """Line numbers where `os.environ`, `os.getenv` (and their bytes forms) are used, or imported from `os`."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Attribute) and node.attr in READS and isinstance(node.value, ast.Name)
                and node.value.id == "os"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and any(a.name in READS for a in node.names):
            lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_sees_a_read():
    assert env_reads("import os\nx = os.environ.get('A')\ny = os.getenv('B')\nfrom os import environ\n") == [2, 3, 4]
    assert env_reads("def app(environ, start):\n    return environ.get('PATH_INFO')\n") == []


def test_only_settings_modules_read_the_environment():
    found = []
    for top in ("api", "tasks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            if name not in ALLOWED:
                found += [f"{name}:{line}" for line in env_reads(path.read_text())]
    assert found == []
