"""Ray's token authentication stays on in everything the product ships and runs.

A local Ray cluster's GCS, raylet and worker gRPC servers listen on every interface (``ray.init`` turns a
``_node_ip_address`` of 127.0.0.1 into the machine's reachable address, so it narrows nothing), so a cluster
without token authentication runs code for anyone who can reach it. Only the
test suite may turn authentication off, for its hermetic throw-away clusters. Two checks:

- no file the product ships or runs (the package, the job entrypoints, the Makefile, the Kubernetes
  manifests, the image and Terraform, the READMEs' commands) sets ``RAY_AUTH_MODE`` (or KubeRay's
  ``authOptions.mode``) to anything but ``token``, or runs ``ray start`` without ``RAY_AUTH_MODE=token``,
  and Ray is started (``ray.init``) in one reviewed place only;
- the local cluster that ``connect()`` starts, in a process with no ``RAY_AUTH_MODE`` set, has token
  authentication on: its GCS refuses a call without the token or with a wrong one, on the address other
  machines reach, and answers one with the token.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SHIPPED = ["discover_ray", "jobs", "k8s", "infra", "Makefile", "pyproject.toml"]
READMES = ["README.md", "k8s/README.md"]
#: the one place that starts (or joins) Ray: reviewed to keep token authentication on
RAY_STARTS = {"discover_ray/on_ray/cluster.py"}

#: RAY_AUTH_MODE given a value: `X=v`, `X: v`, `["X"] = "v"`, `("X", "v")`, YAML `name: X` + `value: v`
_ENV_SETTING = re.compile(r"""RAY_AUTH_MODE["'\]]*\s*(?:=|:|,|\n\s*value:)\s*["']?([A-Za-z0-9_-]*)""")
#: KubeRay's authOptions.mode, block or flow style
_KUBERAY_SETTING = re.compile(r"authOptions:\s*(?:\{\s*|\n\s*)mode:\s*[\"']?([A-Za-z0-9_-]*)")
_RAY_START = re.compile(r"\bray\s+start\b")  # in commands (shell, YAML, Dockerfile, READMEs' blocks)
_RAY_START_PY = re.compile(r"""["']ray["']\s*,\s*["']start["']|["']ray\s+start\b""")  # in a subprocess call
_RAY_INIT = re.compile(r"\bray\.init\s*\(")


def _shipped_files() -> list[Path]:
    files = []
    for name in SHIPPED:
        path = REPO / name
        candidates = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        files += [p for p in candidates if "__pycache__" not in p.parts and p.suffix not in (".pyc", ".png", ".jpg")]
    return files


def _readme_commands(path: Path) -> str:
    """The fenced code blocks of a README (its commands and snippets), not its prose."""
    text = path.read_text()
    return "\n".join(re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.DOTALL))


def _texts() -> dict[str, str]:
    texts = {}
    for path in _shipped_files():
        try:
            texts[str(path.relative_to(REPO))] = path.read_text()
        except UnicodeDecodeError:
            continue
    for name in READMES:
        if (REPO / name).exists():
            texts[f"{name} (commands)"] = _readme_commands(REPO / name)
    return texts


def _problems(name: str, text: str) -> list[str]:
    """Where ``text`` turns Ray authentication off, or starts Ray somewhere not reviewed."""
    found = []
    for pattern in (_ENV_SETTING, _KUBERAY_SETTING):
        for match in pattern.finditer(text):
            value = match.group(1)
            # a literal value other than token (Ray reads anything else as no authentication); an upper-case
            # name is another variable listed beside it, not a value
            if value.lower() != "token" and not (value.isupper() or value.startswith("RAY_")):
                line = text.count("\n", 0, match.start()) + 1
                found.append(f"{name}:{line}: {match.group(0)!r} (only `token` keeps authentication on)")
    for match in (_RAY_START_PY if name.endswith(".py") else _RAY_START).finditer(text):
        statement = text[text.rfind("\n", 0, match.start()) + 1:text.find("\n", match.end())]
        if "RAY_AUTH_MODE=token" not in statement:
            found.append(f"{name}: `ray start` without RAY_AUTH_MODE=token (it starts without authentication): "
                         f"{statement.strip()!r}")
    if name.endswith(".py") and _RAY_INIT.search(text) and name not in RAY_STARTS:
        found.append(f"{name}: starts or joins Ray outside {sorted(RAY_STARTS)}; start clusters through "
                     "discover_ray.on_ray.cluster.connect (token authentication on), or review this one and add "
                     "it to RAY_STARTS")
    return found


def test_nothing_the_product_ships_or_runs_turns_ray_authentication_off():
    texts = _texts()
    assert len(texts) > 50 and "discover_ray/on_ray/cluster.py" in texts and "Makefile" in texts
    found = [problem for name, text in texts.items() for problem in _problems(name, text)]
    assert not found, "Ray authentication is turned off (only files under tests/ may):\n" + "\n".join(found)
    # the scan does see the test fixtures' own setting (which only tests may have)
    fixture = REPO / "tests/ray_local/conftest.py"
    assert _problems("conftest.py", fixture.read_text()), "the scan missed the test cluster's RAY_AUTH_MODE"


PROBE = r"""
import json, os, sys
import grpc
from discover_ray.on_ray.cluster import connect, shutdown
connect(num_cpus=1)
import ray
from ray._private.authentication.authentication_utils import is_token_auth_enabled
from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

node = ray._private.worker.global_worker.node
host, port = node.gcs_address.rsplit(":", 1)

def call(metadata=None):
    channel = grpc.insecure_channel(node.gcs_address)
    try:
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetAllNodeInfo(
            gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10, metadata=metadata)
        return "OK"
    except grpc.RpcError as err:
        return err.code().name
    finally:
        channel.close()

def listening(port):
    # the local addresses a LISTEN socket on ``port`` is bound to (/proc/net/tcp{,6}, state 0A)
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in open(table).read().splitlines()[1:]:
            local, state = row.split()[1], row.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:
                out.append(address)
    return out

token = (open(os.path.expanduser("~/.ray/auth_token")).read().strip()
         if os.path.exists(os.path.expanduser("~/.ray/auth_token")) else "")
print(json.dumps({
    "mode": os.environ.get("RAY_AUTH_MODE"), "token_auth": is_token_auth_enabled(), "host": host,
    "no_token": call(), "wrong_token": call([("authorization", "Bearer not-the-token")]),
    "token": call([("authorization", f"Bearer {token}")]) if token else "no token file",
    "gcs_binds": listening(int(port)),
}))
shutdown()
"""


def test_the_local_cluster_the_product_starts_has_token_authentication_on():
    with tempfile.TemporaryDirectory(prefix="sec-", dir="/tmp") as work:  # short: Ray's socket paths
        env = {k: v for k, v in os.environ.items()
               if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")}
        env.update(HOME=work, RAY_TMPDIR=work, PYTHONPATH=str(REPO))  # a home of its own: its token file
        done = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["mode"] == "token" and seen["token_auth"], seen  # ray.init turned it on by default
    assert not seen["host"].startswith("127."), seen  # the address other machines reach, not loopback
    assert seen["no_token"] == "UNAUTHENTICATED" and seen["wrong_token"] == "UNAUTHENTICATED", seen
    assert seen["token"] == "OK", seen
    # Why it matters: the GCS listens on every interface (0.0.0.0 / ::), whatever the node's IP address.
    wildcard = {"00000000", "00000000000000000000000000000000"}
    assert seen["gcs_binds"] and set(seen["gcs_binds"]) <= wildcard, (
        f"the GCS no longer listens on every interface ({seen['gcs_binds']}): update this test, cluster.py's "
        "docstring and the README's security notes")
