"""Offline checks of the Kubernetes manifests in ``k8s/``.

Every overlay is rendered with ``kubectl kustomize``; the ``ray.io/v1`` documents (also the RayJob that the
portable CronJob keeps in a ConfigMap) are validated against the strict KubeRay v1.7.0 JSON Schemas in
``<shared>/k8s-schemas``, the built-in kinds (and the pod templates inside the Ray resources) with
``kubernetes-validate --strict``. The policy tests check what no schema expresses: the operator's own
validation rules (ray-operator/controllers/ray/utils/validation.go @ v1.7.0), version pins, GPU placement,
pod security, secrets, token auth, and that every entrypoint and config a manifest names exists in the
repository. Each test skips when its tool or the schemas are absent.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import shared_dir

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The GPU pool each overlay targets (None: no GPU at all); overlays not listed here get the generic checks only.
GPU_POOL = {"cpu-dev": None, "a6000": "a6000", "a100": "a100"}
# Ray's accelerator types (what `accelerator_type=` matches) of the pools' cards.
ACCELERATOR_POOL = {"RTX-A6000": "a6000", "A100": "a100", "A100-40G": "a100", "A100-80G": "a100"}
IMAGE_REPOSITORY = "ghcr.io/example/discover-ray"
SECRET_NAME = "discover-ray-credentials"
SECRET_LIKE = re.compile(r"KEY|TOKEN|SECRET|PASSWORD", re.IGNORECASE)
CONFIG_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")  # as discover_ray.config_files
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Name limits of KubeRay v1.7.0 (utils/constant.go): a RayCluster's name, a RayJob's (its cluster gets a
# 6-character suffix), a RayCronJob's (its RayJobs get "-<minutes since the epoch>").
MAX_RAYCLUSTER_NAME, MAX_RAYJOB_NAME, MAX_RAYCRONJOB_NAME = 53, 47, 36
SCHEMA_FILES = {"RayCluster": "raycluster-ray-v1.json", "RayJob": "rayjob-ray-v1.json",
                "RayCronJob": "raycronjob-ray-v1.json"}
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 100, "fsGroup": 100,
                "seccompProfile": {"type": "RuntimeDefault"}}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
KUBERNETES_VERSION = "1.32.0"


# ----------------------------------------------------------------------------------------------- tools


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed (kubectl kustomize renders the overlays)")
    return path


def kubernetes_validate() -> str:
    path = shutil.which("kubernetes-validate") or str(Path(sys.executable).with_name("kubernetes-validate"))
    if not Path(path).exists():
        pytest.skip("kubernetes-validate is not installed (pip install -e '.[deploy]')")
    return path


def schema_dir() -> Path:
    path = shared_dir() / "k8s-schemas"
    if not path.is_dir():
        pytest.skip(f"KubeRay schemas {path} are absent (set DISCOVER_SHARED)")
    return path


def make_strict(node: Any) -> Any:
    """``additionalProperties: false`` wherever an object lists ``properties`` and says nothing else (the trick
    of KubeRay's openapi2jsonschema.py), except where the CRD keeps unknown fields on purpose."""
    if isinstance(node, dict):
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for value in node.values():
            make_strict(value)
    elif isinstance(node, list):
        for value in node:
            make_strict(value)
    return node


def loose_objects(node: Any, path: str = "") -> Iterator[str]:
    """Where a schema lists properties but lets unknown ones through."""
    if isinstance(node, dict):
        if "properties" in node and node.get("additionalProperties") is not False \
                and not node.get("x-kubernetes-preserve-unknown-fields"):
            yield path or "/"
        for key, value in node.items():
            yield from loose_objects(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from loose_objects(value, f"{path}/{i}")


@cache
def raw_schema(kind: str) -> dict[str, Any]:
    return json.loads((schema_dir() / SCHEMA_FILES[kind]).read_text())


@cache
def validator(kind: str) -> Any:
    import jsonschema

    schema = make_strict(copy.deepcopy(raw_schema(kind)))
    cls = jsonschema.validators.validator_for(schema)  # the schemas declare draft-07
    cls.check_schema(schema)
    return cls(schema)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '/'}: {e.message[:200]}"
            for e in validator(doc["kind"]).iter_errors(doc)]


# ----------------------------------------------------------------------------------------------- rendering


@cache
def render_text(overlay: str) -> str:
    done = subprocess.run([kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, f"kubectl kustomize k8s/overlays/{overlay} failed:\n{done.stderr}"
    return done.stdout


def rendered(overlay: str) -> list[dict[str, Any]]:
    return copy.deepcopy([d for d in yaml.safe_load_all(render_text(overlay)) if d])


def embedded(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Manifests kept as text in a ConfigMap (the RayJob that the CronJob creates)."""
    if doc.get("kind") != "ConfigMap":
        return []
    found = []
    for value in (doc.get("data") or {}).values():
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            continue
        if isinstance(parsed, dict) and "apiVersion" in parsed and "kind" in parsed:
            found.append(parsed)
    return found


def documents(overlay: str) -> list[tuple[str, dict[str, Any]]]:
    """(where, document) for every rendered document and every manifest embedded in a ConfigMap."""
    out = []
    for doc in rendered(overlay):
        where = f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"
        out.append((where, doc))
        out += [(f"{where} → {e['kind']}/{e['metadata'].get('name') or e['metadata'].get('generateName')}", e)
                for e in embedded(doc)]
    return out


def ray_documents(overlay: str) -> list[tuple[str, dict[str, Any]]]:
    return [(w, d) for w, d in documents(overlay) if d["apiVersion"] == "ray.io/v1"]


def cluster_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    kind, spec = doc["kind"], doc.get("spec") or {}
    if kind == "RayCluster":
        yield "spec", spec
    elif kind == "RayJob" and "rayClusterSpec" in spec:
        yield "spec.rayClusterSpec", spec["rayClusterSpec"]
    elif kind == "RayCronJob" and "rayClusterSpec" in spec.get("jobTemplate", {}):
        yield "spec.jobTemplate.rayClusterSpec", spec["jobTemplate"]["rayClusterSpec"]


def job_specs(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    if doc["kind"] == "RayJob":
        yield "spec", doc["spec"]
    elif doc["kind"] == "RayCronJob":
        yield "spec.jobTemplate", doc["spec"]["jobTemplate"]


def groups(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "headGroupSpec", cluster["headGroupSpec"]
    for group in cluster.get("workerGroupSpecs") or []:
        yield f"workerGroupSpecs[{group['groupName']}]", group


def pod_templates(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, PodTemplateSpec) of every pod a document makes, Ray's and built-in kinds' alike."""
    for where, cluster in cluster_specs(doc):
        for name, group in groups(cluster):
            yield f"{where}.{name}", group["template"]
    for where, job in job_specs(doc):
        if "submitterPodTemplate" in job:
            yield f"{where}.submitterPodTemplate", job["submitterPodTemplate"]
    spec = doc.get("spec") or {}
    if doc["kind"] == "CronJob":
        yield "spec.jobTemplate.spec.template", spec["jobTemplate"]["spec"]["template"]
    elif doc["kind"] in {"Job", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}:
        yield "spec.template", spec["template"]
    elif doc["kind"] == "Pod":
        yield "", {"spec": spec}


def containers(template: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = template.get("spec") or {}
    yield from spec.get("initContainers") or []
    yield from spec.get("containers") or []


def is_gpu_group(group: dict[str, Any]) -> bool:
    spec = group["template"]["spec"]
    resources = [c.get("resources") or {} for c in spec.get("containers") or []]
    return ("gpu-type" in (group.get("labels") or {})
            or "discover.ray/gpu-type" in (spec.get("nodeSelector") or {})
            or any("nvidia.com/gpu" in (r.get(k) or {}) for r in resources for k in ("limits", "requests")))


def runtime_env(job: dict[str, Any]) -> dict[str, Any]:
    return yaml.safe_load(job.get("runtimeEnvYAML") or "{}") or {}


def job_env(job: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in (runtime_env(job).get("env_vars") or {}).items()}


def all_job_specs(overlay: str) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, job spec, its document) of every RayJob spec an overlay runs, scheduled ones included."""
    return [(f"{w} {p}", job, doc) for w, doc in ray_documents(overlay) for p, job in job_specs(doc)]


class Entrypoint:
    """``python -m jobs.<module> [TRAIN_DIR] --config jobs/configs/X.yaml [--flag value ...]``."""

    def __init__(self, command: str) -> None:
        self.argv = shlex.split(command)
        assert self.argv[:2] == ["python", "-m"] and self.argv[2].startswith("jobs."), \
            f"entrypoint {command!r} is not `python -m jobs.<module> ...`"
        self.module = self.argv[2].removeprefix("jobs.")
        self.args = self.argv[3:]

    def option(self, name: str) -> str | None:
        for i, arg in enumerate(self.args):
            if arg == name:
                return self.args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        return None

    def positional(self) -> list[str]:
        out, skip = [], False
        for arg in self.args:
            if skip:
                skip = False
            elif arg.startswith("--"):
                skip = "=" not in arg and arg not in {"--once", "--local"}
            else:
                out.append(arg)
        return out

    def config(self) -> dict[str, Any]:
        path = self.option("--config")
        assert path is not None, f"{shlex.join(self.argv)}: no --config"
        return yaml.safe_load((REPO / path).read_text())


def expand(value: str, env: dict[str, str]) -> str:
    return CONFIG_VARIABLE.sub(lambda m: env.get(m[1], m[2] if m[2] is not None else m[0]), value)


def variables(node: Any) -> Iterator[tuple[str, str | None]]:
    if isinstance(node, str):
        for match in CONFIG_VARIABLE.finditer(node):
            yield match[1], match[2]
    elif isinstance(node, dict):
        for value in node.values():
            yield from variables(value)
    elif isinstance(node, list):
        for value in node:
            yield from variables(value)


def ray_pin() -> str:
    match = re.search(r'"ray\[[^\]]*\]==([0-9][0-9.]*)"', (REPO / "pyproject.toml").read_text())
    assert match, "pyproject.toml pins no ray[...]==X"
    return match[1]


def known_zone(zone: str) -> bool | None:
    """Whether the IANA zone exists; None where this machine has no time zone database to tell."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(zone)
        return True
    except ZoneInfoNotFoundError:
        try:
            ZoneInfo("America/New_York")
        except ZoneInfoNotFoundError:
            return None
        return False


def period_seconds(schedule: str) -> int | None:
    """The period of the simple cron schedules used here ("M * * * *", "M H * * *"); None for others."""
    fields = schedule.split()
    if len(fields) == 5 and fields[0].isdigit() and fields[2:] == ["*", "*", "*"]:
        return 3600 if fields[1] == "*" else 86400 if fields[1].isdigit() else None
    return None


overlays = pytest.mark.parametrize("overlay", OVERLAYS)


# ----------------------------------------------------------------------------------------------- rendering and schemas


def test_there_are_overlays() -> None:
    assert {"cpu-dev", "a6000", "a100"} <= set(OVERLAYS)


@overlays
def test_overlay_renders(overlay: str) -> None:
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"RayCluster", "RayJob", "ServiceAccount"} <= kinds
    assert ("RayCronJob" in kinds) != ("CronJob" in kinds), "one scheduled watch: a RayCronJob or a CronJob"
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert len(namespaces) == 1 and None not in namespaces, f"{overlay}: namespaces {namespaces}"
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"] in ([], list(namespaces))
    assert "Secret" not in kinds, "secrets are created by hand, never rendered from the repository"


@pytest.mark.parametrize("kind", sorted(SCHEMA_FILES))
def test_schemas_are_strict(kind: str) -> None:
    """The vendored schemas say additionalProperties: false on every object (as shipped here); a schema
    refreshed without it is made strict by make_strict before use, and this checks that nothing stays loose."""
    raw = raw_schema(kind)
    assert raw.get("$schema", "").startswith("http://json-schema.org/draft-07")
    assert raw["properties"]["kind"]["enum"] == [kind] and raw["properties"]["apiVersion"]["enum"] == ["ray.io/v1"]
    assert validator(kind).schema["additionalProperties"] is False
    loose = list(loose_objects(validator(kind).schema))
    assert loose == [], f"objects that still accept unknown fields: {loose[:5]}"


@overlays
def test_ray_documents_match_the_kuberay_schemas(overlay: str) -> None:
    docs = ray_documents(overlay)
    assert docs
    problems = {where: errors for where, doc in docs if (errors := schema_errors(doc))}
    assert problems == {}


def _mutations() -> list[Any]:
    def unknown_field(doc: dict[str, Any]) -> None:
        {"RayJob": lambda: doc["spec"]["rayClusterSpec"].update(bogusField=True),
         "RayCluster": lambda: doc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(bogus=1),
         "RayCronJob": lambda: doc["spec"].update(concurrencyPolicy="Forbid")}[doc["kind"]]()

    def wrong_type(doc: dict[str, Any]) -> None:
        {"RayJob": lambda: doc["spec"].update(backoffLimit="2"),
         "RayCluster": lambda: doc["spec"]["workerGroupSpecs"][0].update(maxReplicas="8"),
         "RayCronJob": lambda: doc["spec"].update(suspend="no")}[doc["kind"]]()

    def bad_enum(doc: dict[str, Any]) -> None:
        {"RayJob": lambda: doc["spec"]["rayClusterSpec"]["authOptions"].update(mode="Token"),
         "RayCluster": lambda: doc["spec"]["authOptions"].update(mode="tokens"),
         "RayCronJob": lambda: doc["spec"]["jobTemplate"]["deletionStrategy"]["deletionRules"][0].update(
             policy="DeleteEverything")}[doc["kind"]]()

    return [pytest.param(kind, name, fn, id=f"{kind}-{name.replace(' ', '-')}") for kind in sorted(SCHEMA_FILES)
            for name, fn in (("unknown field", unknown_field), ("wrong type", wrong_type), ("bad enum", bad_enum))]


@pytest.mark.parametrize(("kind", "mutation", "mutate"), _mutations())
def test_the_schemas_reject_a_broken_document(kind: str, mutation: str, mutate: Any) -> None:
    found = [d for overlay in OVERLAYS for _, d in ray_documents(overlay) if d["kind"] == kind]
    assert found, f"no overlay renders a {kind}"
    doc = copy.deepcopy(found[0])
    assert schema_errors(doc) == []
    mutate(doc)
    assert schema_errors(doc), f"a {kind} with a {mutation} passed the schema"


def _builtin_file(overlay: str, path: Path) -> list[str]:
    """The overlay's built-in documents plus the pod templates inside its Ray documents (as v1 PodTemplate)."""
    docs, names = [], []
    for where, doc in documents(overlay):
        if doc["apiVersion"] != "ray.io/v1":
            docs.append(doc)
            names.append(where)
            continue
        for i, (place, template) in enumerate(pod_templates(doc)):
            meta = {"name": f"{(doc['metadata'].get('name') or 'generated').rstrip('-')}-{i}"}
            docs.append({"apiVersion": "v1", "kind": "PodTemplate", "metadata": meta, "template": template})
            names.append(f"{where} {place}")
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return names


def run_kubernetes_validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([kubernetes_validate(), "--strict", "-k", KUBERNETES_VERSION, str(path)],
                          capture_output=True, text=True, timeout=120)


@overlays
def test_builtin_kinds_validate_strictly(overlay: str, tmp_path: Path) -> None:
    path = tmp_path / f"{overlay}.yaml"
    names = _builtin_file(overlay, path)
    done = run_kubernetes_validate(path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(" passed ") == len(names), done.stdout
    assert "WARN" not in done.stdout + done.stderr, "a document kubernetes-validate has no schema for"


@pytest.mark.parametrize("mutation", ["unknown field", "wrong type", "bad pod field"])
def test_kubernetes_validate_rejects_a_broken_cronjob(mutation: str, tmp_path: Path) -> None:
    overlay = next((o for o in OVERLAYS if any(d["kind"] == "CronJob" for d in rendered(o))), None)
    if overlay is None:
        pytest.skip("no overlay renders a CronJob")
    cronjob = next(d for d in rendered(overlay) if d["kind"] == "CronJob")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if mutation == "unknown field":
        cronjob["spec"]["bogusField"] = True
    elif mutation == "wrong type":
        cronjob["spec"]["successfulJobsHistoryLimit"] = "three"
    else:
        pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = "no"
    path = tmp_path / "cronjob.yaml"
    path.write_text(yaml.safe_dump(cronjob))
    assert run_kubernetes_validate(path).returncode != 0, f"a CronJob with a {mutation} passed"


# ----------------------------------------------------------------------------------------------- versions and the cluster


@overlays
def test_ray_version_matches_the_image_and_the_pin(overlay: str) -> None:
    pin = ray_pin()
    for where, doc in ray_documents(overlay):
        specs = list(cluster_specs(doc))
        assert specs, f"{where}: no rayClusterSpec"
        for place, cluster in specs:
            assert cluster.get("rayVersion") == pin, f"{where} {place}.rayVersion != ray=={pin} of pyproject.toml"
        for place, template in pod_templates(doc):
            for container in containers(template):
                image = container["image"]
                assert "/discover-ray:" in image, f"{where} {place}: {image} is not the discover-ray image"
                tag = image.rsplit(":", 1)[1]
                assert re.match(rf"^{re.escape(pin)}(?![0-9.])", tag), f"{where} {place}: {image} is not Ray {pin}"


@overlays
def test_all_ray_documents_use_one_image(overlay: str) -> None:
    """Kustomize's `images:` cannot reach the RayJob inside the CronJob's ConfigMap: they must still agree."""
    images = {c["image"] for _, doc in ray_documents(overlay) for _, t in pod_templates(doc) for c in containers(t)}
    assert len(images) == 1, f"{overlay}: several images {sorted(images)}"


def test_the_files_name_the_agreed_image() -> None:
    """Overlays change the image with kustomize `images:` only; the files all name the agreed one."""
    named = {(str(f.relative_to(K8S)), m[1]) for f in K8S.rglob("*.yaml")
             for m in re.finditer(r"image:\s*(\S*discover-ray\S*)", f.read_text())}
    assert named and {image for _, image in named} == {f"{IMAGE_REPOSITORY}:{ray_pin()}"}, sorted(named)


@overlays
def test_token_auth_everywhere(overlay: str) -> None:
    for where, doc in ray_documents(overlay):
        for place, cluster in cluster_specs(doc):
            assert cluster.get("authOptions") == {"mode": "token"}, f"{where} {place}.authOptions"


@overlays
def test_heads_take_no_work(overlay: str) -> None:
    for where, doc in ray_documents(overlay):
        for place, cluster in cluster_specs(doc):
            head = cluster["headGroupSpec"]
            assert head.get("rayStartParams", {}).get("num-cpus") == "0", f"{where} {place}: head num-cpus"
            assert not head.get("resources"), f"{where} {place}: resources and rayStartParams both set (KubeRay)"
            ports = {p.get("name"): p["containerPort"]
                     for p in head["template"]["spec"]["containers"][0].get("ports") or []}
            assert ports.get("dashboard") == 8265


@overlays
def test_gpu_groups(overlay: str) -> None:
    pool = GPU_POOL.get(overlay, "any")
    seen = 0
    for where, doc in ray_documents(overlay):
        for place, cluster in cluster_specs(doc):
            for name, group in groups(cluster):
                if name == "headGroupSpec":
                    assert not is_gpu_group(group), f"{where}: a GPU head"
                    continue
                at = f"{where} {place}.{name}"
                assert group.get("minReplicas", 0) <= group.get("replicas", 0) <= group["maxReplicas"], at
                assert not set(group.get("rayStartParams") or {}) & {"num-gpus", "labels"}, f"{at}: KubeRay sets these"
                if not is_gpu_group(group):
                    continue
                seen += 1
                spec = group["template"]["spec"]
                assert pool is not None, f"{at}: a GPU group in a CPU-only overlay"
                assert cluster.get("enableInTreeAutoscaling") is True, f"{at}: GPU groups scale from 0"
                assert (group.get("replicas"), group.get("minReplicas")) == (0, 0) and group["maxReplicas"] >= 1, at
                for container in spec["containers"]:
                    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
                    assert limits.get("nvidia.com/gpu") == requests.get("nvidia.com/gpu") is not None, at
                    assert int(limits["nvidia.com/gpu"]) >= 1, at
                gpu_type = (group.get("labels") or {}).get("gpu-type")
                assert gpu_type and spec.get("nodeSelector", {}).get("discover.ray/gpu-type") == gpu_type, \
                    f"{at}: group label gpu-type and nodeSelector discover.ray/gpu-type must name one pool"
                assert pool in ("any", gpu_type), f"{at}: pool {gpu_type}, overlay {overlay} is {pool}"
                assert GPU_TOLERATION in (spec.get("tolerations") or []), f"{at}: no nvidia.com/gpu toleration"
    if pool is None:
        assert "nvidia.com/gpu" not in render_text(overlay) and "gpu-type" not in render_text(overlay)
    elif pool != "any":
        assert seen, f"{overlay}: no GPU group"


LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                       r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


@overlays
def test_groups_follow_the_operator_rules(overlay: str) -> None:
    """KubeRay v1.7.0's ValidateRayClusterSpec: group labels in Kubernetes label syntax and not in
    rayStartParams, min ≤ max replicas, and with autoscaler v2 no restartPolicy but Never."""
    for where, doc in ray_documents(overlay):
        for place, cluster in cluster_specs(doc):
            v2 = (cluster.get("autoscalerOptions") or {}).get("version") == "v2"
            assert not v2 or cluster.get("enableInTreeAutoscaling"), f"{where} {place}"
            for name, group in groups(cluster):
                at = f"{where} {place}.{name}"
                assert "labels" not in (group.get("rayStartParams") or {}), at
                for key, value in (group.get("labels") or {}).items():
                    assert LABEL_KEY.match(key) and LABEL_VALUE.match(value), f"{at}: label {key}={value}"
                if v2:
                    assert group["template"]["spec"].get("restartPolicy", "Never") == "Never", at
                if name != "headGroupSpec":
                    assert group["minReplicas"] <= group["maxReplicas"] and not group.get("suspend"), at


@overlays
def test_ray_pods_are_sized_with_requests_equal_to_limits(overlay: str) -> None:
    for where, doc in documents(overlay):
        for place, template in pod_templates(doc):
            for container in template["spec"]["containers"]:
                resources = container.get("resources") or {}
                for key in ("cpu", "memory"):
                    limit = (resources.get("limits") or {}).get(key)
                    assert limit is not None and (resources.get("requests") or {}).get(key) == limit, \
                        f"{where} {place} {container['name']}: {key} requests != limits"
        for place, cluster in cluster_specs(doc):
            if cluster.get("enableInTreeAutoscaling"):
                resources = cluster.get("autoscalerOptions", {}).get("resources") or {}
                assert resources.get("limits") and resources.get("requests") == resources["limits"], f"{where} {place}"


@overlays
def test_pod_security(overlay: str) -> None:
    count = 0
    for where, doc in documents(overlay):
        if doc["kind"] == "RayJob" or doc["kind"] == "RayCronJob":
            for place, job in job_specs(doc):
                assert job.get("submissionMode", "K8sJobMode") == "K8sJobMode", f"{where} {place}"
                assert "submitterPodTemplate" in job, \
                    f"{where} {place}: KubeRay's default submitter pod has no security context"
        for place, template in pod_templates(doc):
            count += 1
            at = f"{where} {place}"
            spec = template["spec"]
            pod_context = spec.get("securityContext") or {}
            assert {k: pod_context.get(k) for k in POD_SECURITY} == POD_SECURITY, f"{at}: pod securityContext"
            assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"), at
            assert not any("hostPath" in v for v in spec.get("volumes") or []), at
            for container in containers(template):
                context = container.get("securityContext") or {}
                assert context.get("allowPrivilegeEscalation") is False, f"{at} {container['name']}"
                assert "ALL" in (context.get("capabilities") or {}).get("drop", []), f"{at} {container['name']}"
                assert not context.get("privileged") and context.get("runAsUser") in (None, 1000), at
                if context.get("readOnlyRootFilesystem") and doc["apiVersion"] == "ray.io/v1":
                    mounts = {m["mountPath"] for m in container.get("volumeMounts") or []}
                    assert mounts & {"/tmp", "/tmp/ray"}, f"{at}: a read-only root needs an emptyDir at /tmp/ray"
        for place, cluster in cluster_specs(doc):
            if cluster.get("enableInTreeAutoscaling"):
                context = (cluster.get("autoscalerOptions") or {}).get("securityContext") or {}
                assert context.get("allowPrivilegeEscalation") is False, f"{where} {place}: autoscaler container"
                assert "ALL" in (context.get("capabilities") or {}).get("drop", []), f"{where} {place}: autoscaler"
    assert count


def env_entries(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for place, template in pod_templates(doc):
        for container in containers(template):
            for entry in container.get("env") or []:
                yield f"{place} {container['name']}", entry
            for source in container.get("envFrom") or []:
                yield f"{place} {container['name']} envFrom", source
    for place, cluster in cluster_specs(doc):
        for entry in (cluster.get("autoscalerOptions") or {}).get("env") or []:
            yield f"{place}.autoscalerOptions", entry


@overlays
def test_no_secret_in_the_manifests(overlay: str) -> None:
    for where, doc in documents(overlay):
        for place, entry in env_entries(doc):
            at = f"{where} {place}"
            if "secretRef" in entry:
                assert entry["secretRef"]["name"] == SECRET_NAME and entry["secretRef"].get("optional") is True, at
                continue
            if "configMapRef" in entry:
                continue
            if SECRET_LIKE.search(entry["name"]):
                ref = (entry.get("valueFrom") or {}).get("secretKeyRef")
                assert ref is not None and "value" not in entry, f"{at}: {entry['name']} must come from a Secret"
        for place, job in job_specs(doc):
            for name in job_env(job):
                assert not SECRET_LIKE.search(name), f"{where} {place}: {name} in runtimeEnvYAML (it is not secret)"


def test_the_secret_is_an_empty_example_outside_every_kustomization() -> None:
    example = yaml.safe_load((K8S / "base" / "secret.example.yaml").read_text())
    assert example["kind"] == "Secret" and example["metadata"]["name"] == SECRET_NAME
    values = {**(example.get("stringData") or {}), **(example.get("data") or {})}
    assert values and all(v in ("", None) for v in values.values()), "the example holds values"
    for kustomization in K8S.rglob("kustomization.yaml"):
        listed = yaml.safe_load(kustomization.read_text())
        assert "secret.example.yaml" not in json.dumps(listed), f"{kustomization} applies the example Secret"
        assert "secretGenerator" not in listed, kustomization


def test_the_secret_example_validates(tmp_path: Path) -> None:
    path = tmp_path / "secret.yaml"
    shutil.copy(K8S / "base" / "secret.example.yaml", path)
    done = run_kubernetes_validate(path)
    assert done.returncode == 0, done.stdout + done.stderr


# ----------------------------------------------------------------------------------------------- RayJobs and schedules


def deletion_rule_problems(job: dict[str, Any], autoscaling: bool) -> list[str]:
    """KubeRay v1.7.0's validateDeletionRules: one condition each, unique (condition, policy), TTLs ordered
    DeleteWorkers ≤ DeleteCluster ≤ DeleteSelf, no DeleteWorkers with autoscaling."""
    problems, ttls = [], {}
    for i, rule in enumerate(job["deletionStrategy"]["deletionRules"]):
        condition = rule["condition"]
        if ("jobStatus" in condition) == ("jobDeploymentStatus" in condition):
            problems.append(f"rule {i}: exactly one of jobStatus and jobDeploymentStatus")
            continue
        if autoscaling and rule["policy"] == "DeleteWorkers":
            problems.append(f"rule {i}: DeleteWorkers with autoscaling")
        key = ("jobStatus", condition["jobStatus"]) if "jobStatus" in condition else \
            ("jobDeploymentStatus", condition["jobDeploymentStatus"])
        if rule["policy"] in ttls.setdefault(key, {}):
            problems.append(f"rule {i}: a second {rule['policy']} for {key}")
        ttls[key][rule["policy"]] = condition.get("ttlSeconds", 0)
    for key, by_policy in ttls.items():
        order = [by_policy[p] for p in ("DeleteWorkers", "DeleteCluster", "DeleteSelf") if p in by_policy]
        if order != sorted(order):
            problems.append(f"{key}: TTLs must grow DeleteWorkers ≤ DeleteCluster ≤ DeleteSelf")
    return problems


@overlays
def test_rayjob_lifecycle_follows_the_operator_rules(overlay: str) -> None:
    for where, job, _ in all_job_specs(overlay):
        shutdown, rules = job.get("shutdownAfterJobFinishes", False), "deletionStrategy" in job
        assert not (shutdown and rules), f"{where}: shutdownAfterJobFinishes and deletionStrategy are exclusive"
        assert shutdown or rules, f"{where}: nothing deletes the job's cluster"
        if job.get("ttlSecondsAfterFinished", 0):
            assert shutdown, f"{where}: ttlSecondsAfterFinished works only with shutdownAfterJobFinishes"
        if rules:
            assert "onSuccess" not in job["deletionStrategy"] and "onFailure" not in job["deletionStrategy"], where
            cluster = job.get("rayClusterSpec") or {}
            assert deletion_rule_problems(job, bool(cluster.get("enableInTreeAutoscaling"))) == [], where
        assert "clusterSelector" not in job or not job.get("backoffLimit"), f"{where}: backoffLimit with clusterSelector"
        assert isinstance(job.get("backoffLimit", 0), int) and job.get("backoffLimit", 0) >= 0, where
        for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds"):
            assert job.get(key, 1) > 0, f"{where}: {key} must be positive"
        env = runtime_env(job)
        assert set(env) <= {"env_vars"}, f"{where}: runtimeEnvYAML beyond env_vars ({sorted(env)}): bake it in the image"
        # The submitter pod runs `bash -c "... ray job submit --runtime-env-json "<json>" -- <entrypoint>"`:
        # a $ or ` would be expanded there, in the wrong environment.
        for text in (job["entrypoint"], job.get("runtimeEnvYAML", "")):
            assert not set(text) & {"$", "`"}, f"{where}: {text!r} would be expanded by the submitter's shell"


@overlays
def test_job_names_and_ids(overlay: str) -> None:
    ids = []
    for where, doc in documents(overlay):
        meta = doc["metadata"]
        if doc["kind"] == "RayCluster":
            assert DNS1035.match(meta["name"]) and len(meta["name"]) <= MAX_RAYCLUSTER_NAME, where
        elif doc["kind"] == "RayCronJob":
            assert DNS1035.match(meta["name"]) and len(meta["name"]) <= MAX_RAYCRONJOB_NAME, where
            assert "jobId" not in doc["spec"]["jobTemplate"], f"{where}: each scheduled run needs its own id"
        elif doc["kind"] == "RayJob" and "→" in where:
            # Created anew on each tick: a generated name, and the submission id derived from it.
            assert "name" not in meta and meta.get("generateName", "").endswith("-"), where
            assert len(meta["generateName"]) + 5 <= MAX_RAYJOB_NAME, where
            assert "jobId" not in doc["spec"], f"{where}: every run would share one submission id"
        elif doc["kind"] == "RayJob":
            # Applied once: a fixed name and a fixed, deterministic Ray submission id.
            assert "generateName" not in meta and DNS1035.match(meta["name"]), where
            assert len(meta["name"]) <= MAX_RAYJOB_NAME, where
            assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", doc["spec"].get("jobId", "")), f"{where}: no fixed jobId"
            ids.append(doc["spec"]["jobId"])
    assert ids and len(ids) == len(set(ids)), f"{overlay}: jobIds {ids}"


@overlays
def test_schedules(overlay: str) -> None:
    docs = documents(overlay)
    for where, doc in docs:
        if doc["kind"] not in ("RayCronJob", "CronJob"):
            continue
        spec = doc["spec"]
        assert "TZ" not in spec["schedule"], f"{where}: the time zone goes in timeZone, not a TZ= prefix"
        assert len(spec["schedule"].split()) == 5, where
        zone = spec.get("timeZone")
        assert zone, f"{where}: no timeZone"
        assert known_zone(zone) is not False, f"{where}: unknown time zone {zone!r}"
        if doc["kind"] == "RayCronJob":
            assert "concurrencyPolicy" not in spec, f"{where}: RayCronJob has no concurrencyPolicy"
            runs = [spec["jobTemplate"]]
        else:
            assert spec["concurrencyPolicy"] == "Forbid", where
            assert spec.get("successfulJobsHistoryLimit") is not None and spec.get("failedJobsHistoryLimit") is not None
            assert spec.get("startingDeadlineSeconds", 0) > 0, where
            runs = [d["spec"] for w, d in docs if w.startswith(f"{overlay}: ConfigMap/") and d["kind"] == "RayJob"]
            assert runs, f"{where}: no RayJob in a ConfigMap"
        period = period_seconds(spec["schedule"])
        for job in runs:
            deadline = job.get("activeDeadlineSeconds")
            assert deadline, f"{where}: a scheduled RayJob without activeDeadlineSeconds can overlap the next run"
            assert period is None or deadline < period, f"{where}: activeDeadlineSeconds {deadline} ≥ period {period}"


def test_the_raycronjob_gate_is_documented() -> None:
    for overlay in OVERLAYS:
        if any(d["kind"] == "RayCronJob" for d in rendered(overlay)):
            text = (K8S / "overlays" / overlay / "kustomization.yaml").read_text()
            assert "RayCronJob feature gate" in text or "RayCronJob gate" in text, overlay
    assert "--feature-gates=RayCronJob=true" in (K8S / "components" / "raycronjob" / "raycronjob-watch.yaml").read_text()


def test_both_scheduled_forms_run_the_same_rayjob() -> None:
    cron = yaml.safe_load((K8S / "components" / "raycronjob" / "raycronjob-watch.yaml").read_text())
    kept = yaml.safe_load((K8S / "components" / "cronjob" / "rayjob-watch.yaml").read_text())
    assert cron["spec"]["jobTemplate"] == kept["spec"]
    assert cron["metadata"]["name"] == kept["metadata"]["generateName"].rstrip("-")


@overlays
def test_the_cronjob_creates_rayjobs_with_no_more_rights(overlay: str) -> None:
    docs = rendered(overlay)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    assert not by_kind.get("ClusterRole") and not by_kind.get("ClusterRoleBinding")
    for cronjob in by_kind.get("CronJob", []):
        pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        container = pod["containers"][0]
        command = container.get("command", []) + container.get("args", [])
        assert "create" in command and command[-2:] == ["-f", "/manifests/rayjob.yaml"], command
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/manifests")
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        configmap = next(c for c in by_kind["ConfigMap"] if c["metadata"]["name"] == volume["configMap"]["name"])
        kept = yaml.safe_load(configmap["data"]["rayjob.yaml"])
        assert (kept["apiVersion"], kept["kind"]) == ("ray.io/v1", "RayJob")
        account = pod["serviceAccountName"]
        assert account != "discover-ray" and account in {s["metadata"]["name"] for s in by_kind["ServiceAccount"]}
        bindings = [b for b in by_kind.get("RoleBinding", [])
                    if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])]
        assert len(bindings) == 1, f"{account}: {len(bindings)} RoleBindings"
        assert bindings[0]["subjects"][0].get("namespace") == cronjob["metadata"]["namespace"]
        role = next(r for r in by_kind["Role"] if r["metadata"]["name"] == bindings[0]["roleRef"]["name"])
        assert bindings[0]["roleRef"]["kind"] == "Role"
        assert [(r["apiGroups"], r["resources"], sorted(r["verbs"])) for r in role["rules"]] == \
            [(["ray.io"], ["rayjobs"], ["create", "get", "list"])], role["rules"]


# ----------------------------------------------------------------------------------------------- what the jobs run


@overlays
def test_entrypoints_and_configs_exist(overlay: str) -> None:
    jobs = all_job_specs(overlay)
    assert {Entrypoint(job["entrypoint"]).module for _, job, _ in jobs} >= {"dissect", "train_cvn", "watch"}
    for where, job, _ in jobs:
        entry = Entrypoint(job["entrypoint"])
        module = REPO / "jobs" / f"{entry.module}.py"
        # jobs.watch is the newest entrypoint: its module may not be there yet, its config must.
        assert module.exists() or entry.module == "watch", f"{where}: python -m jobs.{entry.module}: no {module}"
        path = entry.option("--config")
        assert path and path.startswith("jobs/configs/") and (REPO / path).is_file(), f"{where}: --config {path}"
        config = entry.config()
        if entry.module in ("dissect", "watch"):
            assert {"probe", "models", "concepts"} <= set(config), f"{where}: {path} is not a dissection config"
        else:
            assert {"model", "data"} <= set(config), f"{where}: {path} is not a training config"
        if entry.module == "watch":
            assert len(entry.positional()) == 1 and "--once" in entry.args, f"{where}: jobs.watch TRAIN_DIR --once"


@overlays
def test_configs_get_their_variables(overlay: str) -> None:
    """A ${VAR} without a default fails the job; one whose default is a local path reads the pod's disk."""
    for where, job, _ in all_job_specs(overlay):
        entry = Entrypoint(job["entrypoint"])
        env = job_env(job)
        for name, default in variables(entry.config()):
            if default is None:
                assert name in env, f"{where}: {entry.option('--config')} needs {name}"
            elif "://" not in default and "/" in default:
                assert name in env, f"{where}: {name} would be its local default {default!r}"


def output_root(job: dict[str, Any]) -> tuple[str, str]:
    entry = Entrypoint(job["entrypoint"])
    config, env = entry.config(), job_env(job)
    if entry.module == "train_cvn":
        flag, key, default = "--storage-path", "storage_path", "./discover-train"
    else:
        flag, key, default = "--store", "store", "./discover-runs"
    return entry.module, entry.option(flag) or expand(str(config.get(key, default)), env)


@overlays
def test_outputs_leave_the_pod(overlay: str) -> None:
    """Stores and checkpoints go to the object store: a pod's disk goes with the pod."""
    gaps = []
    for where, job, _ in all_job_specs(overlay):
        module, root = output_root(job)
        if "://" in root and not root.startswith("file://"):
            continue
        if module == "watch" and '"--store"' not in (REPO / "jobs" / "watch.py").read_text():
            gaps.append(f"{where}: {Entrypoint(job['entrypoint']).option('--config')} stores in {root!r}")
            continue
        pytest.fail(f"{where}: {module} writes to {root!r}")
    if gaps:
        pytest.xfail("the watched dissection config has a local store and jobs.watch has no --store: "
                     + "; ".join(gaps))


@overlays
def test_the_watch_follows_the_trained_run(overlay: str) -> None:
    runs = {}
    for _, job, _ in all_job_specs(overlay):
        entry = Entrypoint(job["entrypoint"])
        if entry.module == "train_cvn":
            config = entry.config()
            _, root = output_root(job)
            runs[f"{root.rstrip('/')}/{config['name']}"] = config["model"]["name"]
    for where, job, _ in all_job_specs(overlay):
        entry = Entrypoint(job["entrypoint"])
        if entry.module == "watch":
            train_dir = entry.positional()[0].rstrip("/")
            assert train_dir in runs, f"{where}: watches {train_dir}, trained here: {sorted(runs)}"
            assert entry.config()["models"][0]["name"] == runs[train_dir], \
                f"{where}: the config's first model is not the trained architecture"


@overlays
def test_training_lands_on_its_pool(overlay: str) -> None:
    """A config's accelerator_type / label_selector must match a group of its cluster, or it never schedules."""
    for where, job, _ in all_job_specs(overlay):
        entry = Entrypoint(job["entrypoint"])
        if entry.module != "train_cvn":
            continue
        scaling = entry.config().get("scaling") or {}
        workers = [g for name, g in groups(job["rayClusterSpec"]) if name != "headGroupSpec"]
        if scaling.get("use_gpu"):
            workers = [g for g in workers if is_gpu_group(g)]
            assert workers, f"{where}: use_gpu and no GPU group"
        if scaling.get("accelerator_type"):
            pool = ACCELERATOR_POOL.get(scaling["accelerator_type"])
            workers = [g for g in workers if (g.get("labels") or {}).get("gpu-type") == pool]
            assert workers, f"{where}: accelerator_type {scaling['accelerator_type']} and no {pool} group"
        if scaling.get("label_selector"):
            wanted = scaling["label_selector"].items()
            workers = [g for g in workers if wanted <= (g.get("labels") or {}).items()]
            assert workers, f"{where}: no group has the labels {scaling['label_selector']}"
        cpus = max(float(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"]) for g in workers)
        assert cpus >= scaling.get("cpus_per_worker", 1), f"{where}: a worker needs {scaling['cpus_per_worker']} CPUs"
        if scaling.get("use_gpu"):
            assert sum(g["maxReplicas"] for g in workers) >= scaling.get("num_workers", 1), where
