"""infra/job-cluster.yaml's example model is SDXL: its pools' settings suit SDXL on the cluster's GPUs.

SDXL makes 1024x1024 images by default. Its VAE overflows in float16 (its config says force_upcast), so the
decode pool runs it in float32 (or bfloat16), and decoding at 1024x1024 in float32 needs about 4 GiB of
activations per image (measured: ~1.0 GiB at 512x512 on the CPU, and activations grow with the pixels).
A small-GPU node (L4, 24 GB) holds two actors at 0.5 GPU each, two decoders possibly: each has half.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from latentmill.config import load_config

ROOT = Path(__file__).resolve().parents[2]
JOB_CLUSTER_YAML = ROOT / "infra" / "job-cluster.yaml"
URIS = {"input": {"uri": "s3://bucket/prompts"}, "output": {"uri": "s3://bucket/out"}}

GPU_GIB = {"g6.4xlarge": 22.0, "p4de.24xlarge": 79.0}  # usable memory of the one GPU type of each node type
CUDA_CONTEXT_GIB = 0.6
SDXL_VAE = {"weights_gib": 0.33, "decode_gib_per_image": {"float32": 4.0, "bfloat16": 2.0}}
SDXL_SIZE = 1024


def gpu_of_node_type() -> dict[str, float]:
    """Custom resource (small_gpu, large_gpu) -> GiB of the GPU behind it, from ray_cluster.yaml."""
    types = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())["available_node_types"]
    out = {}
    for spec in types.values():
        for name in spec["resources"]:
            if name.endswith("_gpu"):
                out[name] = GPU_GIB[spec["node_config"]["InstanceType"]]
    return out


def test_the_example_model_is_sdxl():
    config = load_config(JOB_CLUSTER_YAML, URIS)
    assert "stable-diffusion-xl" in config.model.path


def test_the_sdxl_vae_decodes_in_a_dtype_it_supports():
    config = load_config(JOB_CLUSTER_YAML, URIS)
    assert config.stages.decode.dtype in SDXL_VAE["decode_gib_per_image"], "SDXL's VAE overflows in float16"


def test_a_decode_batch_fits_the_gpu_share_of_its_actor():
    config = load_config(JOB_CLUSTER_YAML, URIS)
    pool = config.stages.decode
    (gpu_resource,) = [name for name in pool.resources if name.endswith("_gpu")]
    share = gpu_of_node_type()[gpu_resource] * pool.num_gpus
    per_image = SDXL_VAE["decode_gib_per_image"][pool.dtype]
    needed = CUDA_CONTEXT_GIB + SDXL_VAE["weights_gib"] + pool.batch_size * per_image
    assert needed <= share, (f"decode batch_size {pool.batch_size} of 1024x1024 SDXL images in {pool.dtype} needs "
                             f"~{needed:.1f} GiB; the actor's share of its GPU is {share:.1f} GiB")
