"""The light SDK: `pip install agentwatch` is what an agent needs, and `import agentwatch` loads nothing of the server's.

The server's dependencies (`agentwatch[server]`) are installed in the test environment, so each check runs in a
fresh interpreter and looks at what it imported; the light install is imitated by making those modules unimportable.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SERVER_MODULES = ("clickhouse_connect", "chdb", "aiohttp", "streamlit", "altair", "polars", "pyarrow", "river",
                  "sklearn", "prometheus_client", "genai_prices", "grpc")

# What `[project].dependencies` holds: the SDK's own imports (OpenTelemetry API and SDK, the OTLP/HTTP exporter,
# orjson for attribute capture) and the GPU sampler's NVML binding. Anything else belongs in an extra.
SDK_DEPENDENCIES = {
    "opentelemetry-api>=1.45",
    "opentelemetry-sdk>=1.45",
    "opentelemetry-exporter-otlp-proto-http>=1.45",
    "orjson>=3.10",
    "nvidia-ml-py>=12.560",
}

# Makes the server's modules unimportable, as on an install without the `server` extra.
BLOCK_SERVER = textwrap.dedent(f"""
    import importlib.abc, sys
    SERVER = {SERVER_MODULES!r}
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == m or name.startswith(m + ".") for m in SERVER):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
""")

AGENT = textwrap.dedent("""
    import json, sys
    import agentwatch

    agentwatch.init(service_name="light-agent", endpoint="http://127.0.0.1:9", instrument=False)

    @agentwatch.agent(name="light")
    def run(x):
        return x + 1

    assert run(1) == 2
    agentwatch.shutdown()
    print(json.dumps(sorted(sys.modules)))
""")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _server_modules(loaded: list[str]) -> list[str]:
    return [m for m in loaded if any(m == s or m.startswith(s + ".") for s in SERVER_MODULES)]


def test_import_and_init_load_no_server_module():
    result = _python(AGENT)
    assert result.returncode == 0, result.stderr
    assert _server_modules(json.loads(result.stdout.splitlines()[-1])) == []


def test_sdk_runs_without_the_server_dependencies():
    result = _python(BLOCK_SERVER + AGENT)
    assert result.returncode == 0, result.stderr


def test_command_without_the_server_dependencies_says_what_to_install():
    result = _python(BLOCK_SERVER + "import sys\nfrom agentwatch.cli import main\nsys.exit(main(['schema', 'render']))")
    assert result.returncode == 1, result.stderr
    assert "pip install 'agentwatch[server]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_base_dependencies_are_the_sdk_only():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["dependencies"]) == SDK_DEPENDENCIES
    extras = project["optional-dependencies"]
    server = " ".join(extras["server"])
    for dist in ("clickhouse-connect", "aiohttp", "prometheus-client", "streamlit", "polars", "grpcio"):
        assert dist in server
    assert any(req.startswith("agentwatch[") and "server" in req for req in extras["test"])
