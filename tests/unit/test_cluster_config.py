"""ray_cluster.yaml, the KubeRay manifests, the image and the job files agree with each other and with Ray.

Offline: Ray's own cluster-config preparation and JSON-schema validation (what `ray up` runs before it
talks to the cloud), then resource arithmetic between node types and the pools of the job files.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from latentmill.config import PoolSettings, load_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "ray_cluster.yaml"
JOB_CLUSTER_YAML = ROOT / "infra" / "job-cluster.yaml"
KUBERAY = ROOT / "infra" / "kuberay"
URIS = {"input": {"uri": "s3://bucket/prompts"}, "output": {"uri": "s3://bucket/out"}}


def cluster_config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_validate(config: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def pool_request(pool: PoolSettings) -> dict[str, float]:
    """What Ray reserves for one actor of the pool (plan.pool_args: num_cpus, num_gpus, resources)."""
    request = {"CPU": pool.num_cpus}
    if pool.num_gpus:
        request["GPU"] = pool.num_gpus
    request.update(pool.resources)
    return {name: amount for name, amount in request.items() if amount}


def fits(request: dict[str, float], resources: dict[str, float]) -> bool:
    return all(resources.get(name, 0) >= amount for name, amount in request.items())


def node_types(config: dict) -> dict[str, dict]:
    return config["available_node_types"]


# ---- Ray's validation --------------------------------------------------------------------------------


def test_ray_cluster_yaml_passes_rays_validation():
    prepared = ray_validate(cluster_config())
    assert prepared["head_node_type"] == "head"
    types = node_types(prepared)
    assert set(types) == {"head", "gpu_large", "gpu_small"}
    assert types["head"]["resources"].get("GPU", 0) == 0, "the head is CPU-only"
    assert types["gpu_large"]["resources"]["GPU"] > types["gpu_small"]["resources"]["GPU"] >= 1
    assert any("pip install" in cmd and "-e ~/latentmill" in cmd for cmd in prepared["setup_commands"])
    assert prepared["file_mounts"]["~/latentmill"] == "."


@pytest.mark.parametrize("break_it, error", [
    (lambda c: c["available_node_types"]["gpu_small"]["resources"].update(small_gpu=0.5), "integer"),
    (lambda c: c.update(head_node_type="nope"), "head_node_type"),
    (lambda c: c["available_node_types"]["gpu_large"].update(gpus=8), "Additional properties"),
    (lambda c: c.update(max_workers=1), "max_workers"),
])
def test_rays_validation_catches_broken_copies(break_it, error):
    """The validation used above is live: the same file with one mistake is refused."""
    broken = cluster_config()
    broken["available_node_types"]["gpu_small"]["min_workers"] = 2  # so max_workers=1 is too small
    break_it(broken)
    with pytest.raises(Exception, match=error):
        ray_validate(broken)


# ---- pools vs node types -----------------------------------------------------------------------------


def test_cluster_job_pools_land_on_the_node_type_built_for_them():
    types = node_types(ray_validate(cluster_config()))
    config = load_config(JOB_CLUSTER_YAML, URIS)
    where = {stage: {name for name, spec in types.items() if fits(pool_request(pool), spec["resources"])}
             for stage, pool in config.stages.items()}
    assert where == {"encode": {"gpu_small"}, "denoise": {"gpu_large"}, "decode": {"gpu_small"}}
    # Every custom resource a pool names is advertised by some node type (a typo would hang the job).
    advertised = {name for spec in types.values() for name in spec["resources"]}
    for _, pool in config.stages.items():
        assert set(pool.resources) <= advertised
        assert pool.num_gpus > 0, "on the GPU cluster every stage runs on a GPU"


def test_cluster_job_pools_at_full_size_fit_the_cluster_at_full_size():
    types = node_types(ray_validate(cluster_config()))
    config = load_config(JOB_CLUSTER_YAML, URIS)
    demand: dict[str, dict[str, float]] = {}
    for _, pool in config.stages.items():
        (node_type,) = [name for name, spec in types.items() if fits(pool_request(pool), spec["resources"])]
        for name, amount in pool_request(pool).items():
            demand.setdefault(node_type, {}).setdefault(name, 0)
            demand[node_type][name] += amount * pool.max_size
    for node_type, needed in demand.items():
        spec = types[node_type]
        for name, amount in needed.items():
            capacity = spec["resources"].get(name, 0) * spec["max_workers"]
            assert amount <= capacity, f"{node_type}: pools need {amount} {name} at max size, cluster has {capacity}"


def test_default_job_pools_fit_the_cluster():
    """The default job file (CPU-only pools) also runs there: every pool fits the head or a worker type."""
    types = node_types(ray_validate(cluster_config()))
    config = load_config(None, URIS)
    for stage, pool in config.stages.items():
        request = pool_request(pool)
        assert set(request) == {"CPU"}, f"default {stage} pool asks for more than CPUs: {request}"
        assert any(fits(request, spec["resources"]) for spec in types.values())
        assert request["CPU"] <= types["head"]["resources"]["CPU"]


# ---- KubeRay, image, versions ------------------------------------------------------------------------


def kuberay_groups() -> dict[str, dict[str, float]]:
    """Worker group -> the resources its Ray node advertises (custom resources + GPUs from limits)."""
    cluster = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["apiVersion"] == "ray.io/v1"
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    groups = {}
    for group in cluster["spec"]["workerGroupSpecs"]:
        params = group["rayStartParams"]
        resources = json.loads(json.loads(params["resources"])) if "resources" in params else {}
        (container,) = group["template"]["spec"]["containers"]
        limits = container["resources"]["limits"]
        resources["GPU"] = float(limits.get("nvidia.com/gpu", 0))
        resources["CPU"] = float(limits["cpu"])
        groups[group["groupName"]] = {"resources": resources, "max": group["maxReplicas"]}
    return groups


def test_kuberay_cluster_matches_ray_cluster_yaml():
    types = node_types(cluster_config())
    groups = kuberay_groups()
    assert set(groups) == {"gpu-large", "gpu-small"}
    for group, node_type in (("gpu-large", "gpu_large"), ("gpu-small", "gpu_small")):
        custom = {k: v for k, v in types[node_type]["resources"].items() if k not in ("CPU", "GPU")}
        for name, amount in custom.items():
            assert groups[group]["resources"][name] == amount
        assert groups[group]["resources"]["GPU"] == types[node_type]["resources"]["GPU"]
        assert groups[group]["max"] == types[node_type]["max_workers"]
    config = load_config(JOB_CLUSTER_YAML, URIS)
    for stage, pool in config.stages.items():
        assert [g for g, spec in groups.items() if fits(pool_request(pool), spec["resources"])], stage


def test_kuberay_rayjob_entrypoint_is_a_valid_nightly_command():
    from latentmill.jobs import nightly

    job = yaml.safe_load((KUBERAY / "rayjob-nightly.yaml").read_text())
    assert job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == "latentmill"
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "latentmill.jobs.nightly"]
    args = nightly.build_parser().parse_args(words[3:])
    assert args.pushgateway and args.input_root.startswith("s3://")
    assert args.config.name == JOB_CLUSTER_YAML.name


def test_ray_versions_agree_everywhere():
    """Job submission needs the same Ray on the client and the cluster."""
    version = ray.__version__
    dockerfile = (ROOT / "infra" / "Dockerfile").read_text()
    assert re.search(rf"^ARG RAY_VERSION={re.escape(version)}$", dockerfile, re.M), "infra/Dockerfile"
    assert f'"ray[default,data]=={version}"' in "\n".join(cluster_config()["setup_commands"]), "ray_cluster.yaml"
    cluster = yaml.safe_load((KUBERAY / "raycluster.yaml").read_text())
    assert cluster["spec"]["rayVersion"] == version, "infra/kuberay/raycluster.yaml"
    assert f"ray{version}" in cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"]
