"""The GPU check: full-size SDXL on one GPU, latentmill's pools vs the peer pattern vs the denoiser alone.

Run through `benchmarks/gpu-check.sh` (one command, about 7 minutes on one H100/H200). Steps, each timed and
skipped when the time limit would be passed:

1. build SDXL base 1.0 at full size with random weights from the configs in `benchmarks/configs/` (the
   parameter counts are printed next to the published ones);
2. `latentmill bench compare --gpus 1` with fractional pools on the one device (encode 0.25 + denoise
   0.25 + decode 0.5 GPU): (a) latentmill, (b) one whole pipeline per actor, (c) the denoiser alone;
3. per stage, in this process: peak GPU memory of each stage's load plus one batch, the decode in float16
   (SDXL's VAE is upcast to float32 as diffusers does; the frames must be finite) and in bfloat16;
4. a model-FLOPs utilisation estimate from the UNet's counted FLOPs per step and the measured rates;
5. the denoise pool's speed options (`compile`, `attention_backend`), in this process, batch by batch;
6. FLUX.1-dev's transformer alone at full size: FLOPs, seconds per step, peak memory, MFU, plain and compiled;
7. the planned decode: the planner's memory fit from one row against a whole batch's measured peak, and the
   mode (full, sliced, tiled) a decode actor picks for budgets that fit the batch, one row, or less.

Everything lands in `--out` as `gpu-check.json` and `gpu-check.md`. With `--model builtin:tiny-sdxl` the same
script runs on a CPU in a minute (that is how the suite keeps it working).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs" / "sdxl-base-1.0"
PUBLISHED_PARAMETERS = {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                        "text_encoder_2": 694_659_840}
FLUX_CONFIG = ROOT / "benchmarks" / "configs" / "flux.1-dev" / "transformer" / "config.json"
FLUX_PUBLISHED_PARAMETERS = 11_901_408_320
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense bf16, the vendor's SXM datasheets


def log(message: str) -> None:
    print(f"[gpu-check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def environment() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                            "cuda": torch.version.cuda, "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    gpus=torch.cuda.device_count())
    for name in ("diffusers", "transformers", "ray"):
        try:
            info[name] = __import__(name).__version__
        except ImportError:
            info[name] = None
    return info


def build_sdxl(dest: Path) -> dict[str, Any]:
    """SDXL base 1.0 with random weights in float16, initialised on the GPU (seconds, not minutes)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from latentmill.models.tiny_builds.tokenizers import train_clip_tokenizer

    def config(name: str) -> dict[str, Any]:
        return json.loads((CONFIGS / name / ("scheduler_config.json" if name == "scheduler" else "config.json")).read_text())

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(config("unet")).half()
        vae = AutoencoderKL.from_config(config("vae")).half()
        text_encoder = CLIPTextModel(CLIPTextConfig(**config("text_encoder"))).half()
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config("text_encoder_2"))).half()
    tokenizer = train_clip_tokenizer()  # a tokenizer trained here: the real vocabulary is a download
    tokenizer_2 = train_clip_tokenizer()
    tokenizer_2.pad_token = "!"
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler.from_config(config("scheduler")),
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.save_pretrained(dest, safe_serialization=True)
    counts = {name: sum(p.numel() for p in module.parameters())
              for name, module in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder),
                                   ("text_encoder_2", text_encoder_2))}
    del pipe, unet, vae, text_encoder, text_encoder_2
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"seconds": time.perf_counter() - started, "parameters": counts,
            "matches_published": counts == PUBLISHED_PARAMETERS,
            "bytes_on_disk": sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())}


def plan_file(path: Path, batch: int, gpu: bool) -> Path:
    """The three pools on one device: encode 0.25, denoise 0.25, decode 0.5 of it (Ray's fractional GPUs)."""
    import yaml

    dtype = "bfloat16" if gpu else "float32"
    share = (lambda fraction: {"num_gpus": fraction, "num_cpus": 2}) if gpu else (lambda _: {"num_cpus": 0.5})
    stages = {
        "encode": {"size": 1, "batch_size": batch, "dtype": dtype, **share(0.25)},
        "denoise": {"size": 1, "batch_size": batch, "dtype": dtype, **share(0.25)},
        "decode": {"size": 1, "batch_size": max(1, batch // 2), "dtype": dtype, **share(0.5)},
    }
    path.write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return path


def run_compare(args, model: str, out: Path, gpu: bool) -> dict[str, Any]:
    plan = plan_file(out / "plan.yaml", args.batch_size, gpu)
    command = [sys.executable, "-m", "latentmill.jobs.cli", "bench", "compare", "--model", model,
               "--rows", str(args.rows), "--height", str(args.height), "--width", str(args.width),
               "--steps", str(args.steps), "--guidance", str(args.guidance), "--batch-size", str(args.batch_size),
               "--plan", str(plan), "--repeats", "1", "--contenders", args.contenders, "--out", str(out / "compare")]
    if gpu:
        command += ["--gpus", "1"]
    log("running: " + " ".join(command))
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, timeout=args.compare_timeout)
    report = json.loads((out / "compare" / "compare.json").read_text()) if result.returncode == 0 else {}
    return {"returncode": result.returncode, "seconds": time.perf_counter() - started, "command": " ".join(command),
            "report": report}


def requests_for(family, args, rows: int):
    from latentmill.pipelines.validate import derived_seed
    from latentmill.rows import request_from

    defaults = {"negative_prompt": "", "num_frames": 1, "fps": 0.0, "height": args.height, "width": args.width,
                "num_inference_steps": args.steps, "guidance_scale": args.guidance}
    defaults.update({name: default for name, (_, default) in family.extra_parameters.items()})
    return [request_from({**defaults, "id": f"row-{i}", "prompt": f"a photo of a cat number {i}",
                          "seed": derived_seed(0, f"row-{i}")}, tuple(family.extra_parameters)) for i in range(rows)]


class GpuMemory:
    """Peak GPU memory of one block of work in this process (torch's allocator)."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.peak_mib = None
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = torch.cuda.max_memory_allocated() / 2**20


def stage_checks(args, model: str) -> dict[str, Any]:
    """Each stage alone, as its actor runs it: peak memory, seconds per batch, finite frames per dtype."""
    import numpy as np
    import torch

    from latentmill.models import resolve_model

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    compute = "bfloat16" if gpu else "float32"
    ref = resolve_model(model)
    results: dict[str, Any] = {}
    family = ref.family()
    requests = requests_for(family, args, args.batch_size)
    with GpuMemory(device) as memory:
        family.load_encoder(device, getattr(torch, compute))
        encoded = family.encode(requests).tensors
    results["encode"] = {"dtype": compute, "peak_gpu_mib": memory.peak_mib}
    del family
    family = ref.family()
    with GpuMemory(device) as memory:
        family.load_denoiser(device, getattr(torch, compute))
        started = time.perf_counter()
        latents = family.denoise(requests, encoded)
        seconds = time.perf_counter() - started
    results["denoise"] = {"dtype": compute, "peak_gpu_mib": memory.peak_mib, "batch_seconds_first": seconds}
    del family
    stacked = np.stack(latents)
    for dtype in (("float16", "bfloat16") if gpu else ("float32",)):
        family = ref.family()
        decode_batch = stacked[: max(1, args.batch_size // 2)]
        with GpuMemory(device) as memory:
            family.load_decoder(device, getattr(torch, dtype))
            family.decode(decode_batch[:1], requests[:1])  # warm-up
            started = time.perf_counter()
            frames = family.decode(decode_batch, requests[: len(decode_batch)])
            seconds = time.perf_counter() - started
        results[f"decode_{dtype}"] = {
            "dtype": dtype, "peak_gpu_mib": memory.peak_mib, "batch": len(decode_batch), "batch_seconds": seconds,
            "frames_finite": bool(np.isfinite(frames).all()),
            "vae_dtype_after": str(next(family.vae.parameters()).dtype) if getattr(family, "vae", None) is not None
            else None,
            "force_upcast": bool(getattr(getattr(family, "vae", None), "config", {}).get("force_upcast", False))
            if getattr(family, "vae", None) is not None else None,
        }
        del family
        if gpu:
            torch.cuda.empty_cache()
    return results


def unet_flops(model: str, args) -> float | None:
    """FLOPs of one UNet forward for one image at the benchmark's size (torch's FLOP counter)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from latentmill.models import materialize

    path = materialize(model)
    if not (path / "unet").is_dir():
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    unet = UNet2DConditionModel.from_pretrained(path / "unet", torch_dtype=dtype).to(device)
    factor = 8
    sample = torch.randn(1, unet.config.in_channels, args.height // factor, args.width // factor, device=device,
                         dtype=dtype)
    text = torch.randn(1, 77, unet.config.cross_attention_dim, device=device, dtype=dtype)
    pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
    added = {"text_embeds": torch.randn(1, pooled, device=device, dtype=dtype),
             "time_ids": torch.tensor([[args.height, args.width, 0, 0, args.height, args.width]], device=device,
                                      dtype=dtype)}
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        unet(sample, torch.tensor([500], device=device), encoder_hidden_states=text, added_cond_kwargs=added)
    del unet
    return float(counter.get_total_flops())


def speed_options(args, model: str, deadline: float) -> list[dict[str, Any]]:
    """Denoise batches with each speed option on, in this process (compile's first batch includes compiling)."""
    import torch

    from latentmill.models import resolve_model

    if not torch.cuda.is_available():
        return []
    ref = resolve_model(model)
    variants = [("none", False, None), ("attention_backend=_native_cudnn", False, "_native_cudnn"),
                ("compile", True, None)]
    rows = []
    for label, compile_blocks, backend in variants:
        if time.time() > deadline - 90:
            rows.append({"option": label, "skipped": "time limit"})
            continue
        family = ref.family()
        encoder = ref.family()
        requests = requests_for(family, args, args.batch_size)
        encoder.load_encoder("cuda", torch.bfloat16)
        encoded = encoder.encode(requests).tensors
        del encoder
        family.load_denoiser("cuda", torch.bfloat16)
        try:
            family.speed_up_denoiser(compile_blocks, backend)
            times = []
            for _ in range(args.option_batches):
                torch.cuda.synchronize()
                started = time.perf_counter()
                family.denoise(requests, encoded)
                torch.cuda.synchronize()
                times.append(time.perf_counter() - started)
            rows.append({"option": label, "batch_seconds": times, "rows_per_s": args.batch_size / times[-1]})
        except Exception as exc:  # noqa: BLE001 - report the option as not working here, go on
            rows.append({"option": label, "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"})
        del family
        torch.cuda.empty_cache()
    return rows


def flux_denoiser(args) -> dict[str, Any] | None:
    """FLUX.1-dev's transformer alone at full size (random weights): FLOPs, step time, memory, plain and compiled."""
    import torch
    from diffusers import FluxTransformer2DModel
    from torch.utils.flop_counter import FlopCounterMode

    if not torch.cuda.is_available():
        return None
    torch.manual_seed(0)
    torch.cuda.reset_peak_memory_stats()
    with torch.device("cuda"):
        model = FluxTransformer2DModel.from_config(json.loads(FLUX_CONFIG.read_text())).to(torch.bfloat16).eval()
    parameters = sum(p.numel() for p in model.parameters())
    rows, cols, batch = args.height // 16, args.width // 16, args.flux_batch
    grid = torch.stack(torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij"), -1).reshape(-1, 2)
    device, dtype = "cuda", torch.bfloat16

    def inputs(size: int) -> dict[str, Any]:
        return {"hidden_states": torch.randn(size, rows * cols, 64, device=device, dtype=dtype),
                "encoder_hidden_states": torch.randn(size, 512, 4096, device=device, dtype=dtype),
                "pooled_projections": torch.randn(size, 768, device=device, dtype=dtype),
                "timestep": torch.full((size,), 0.5, device=device, dtype=dtype),
                "guidance": torch.full((size,), 3.5, device=device, dtype=dtype),
                "img_ids": torch.cat([torch.zeros(rows * cols, 1), grid.float()], 1).to(device, dtype),
                "txt_ids": torch.zeros(512, 3, device=device, dtype=dtype), "return_dict": False}

    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(**inputs(1))
    flops = float(counter.get_total_flops())
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in torch.cuda.get_device_name()), 989.0)
    batch_inputs = inputs(batch)

    def timed(label: str) -> dict[str, Any]:
        seconds = []
        with torch.no_grad():
            for _ in range(args.option_batches + 1):
                torch.cuda.synchronize()
                started = time.perf_counter()
                model(**batch_inputs)
                torch.cuda.synchronize()
                seconds.append(time.perf_counter() - started)
        step = seconds[-1]
        return {"option": label, "step_seconds": seconds,
                "images_per_s": batch / (step * args.flux_steps),
                "mfu": flops * batch / step / (peak_tflops * 1e12)}

    runs = [timed("none")]
    try:
        model.compile_repeated_blocks(fullgraph=True)
        runs.append(timed("compile"))
    except Exception as exc:  # noqa: BLE001 - report compile as not working here, keep the plain figures
        runs.append({"option": "compile", "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"})
    result = {"parameters": parameters, "matches_published": parameters == FLUX_PUBLISHED_PARAMETERS,
              "batch": batch, "steps": args.flux_steps, "flops_per_image_step": flops,
              "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20, "runs": runs}
    return result  # the model's memory goes with this frame


def decode_memory(args, model: str) -> dict[str, Any]:
    """The planned decode on the GPU: the planner's fit from one row against the measured peak of a whole batch,
    and the mode a decode actor picks up front for budgets that fit the batch, one row, or less."""
    import numpy as np
    import torch

    from latentmill import schema
    from latentmill.actors.decode_memory import peak_memory
    from latentmill.actors.stages import stage_workers
    from latentmill.config import DecodePeakMemory
    from latentmill.io.hidden import HiddenOptions
    from latentmill.models import resolve_model
    from latentmill.planning.calibrate import calibration_rows, calibration_rules, measure_decode_memory

    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"

    def empty_cache() -> None:
        if gpu:
            torch.cuda.empty_cache()

    ref = resolve_model(model)
    family = ref.family()
    rules = calibration_rules(family, {"height": args.height, "width": args.width,
                                       "num_inference_steps": args.steps, "guidance_scale": args.guidance})
    rows = args.batch_size // 2 or 1
    batch = calibration_rows(rules, rows)
    workers = stage_workers()
    common = {"model": ref, "num_gpus": 1.0 if gpu else 0, "dtype": "bfloat16" if gpu else "float32",
              "torch_threads": 2}
    output = args.workdir / "decode-memory"

    def decoder(**extra):
        return workers[schema.STAGE_DECODE](**common, output_uri=str(output), storage_options=HiddenOptions({}),
                                            image_format="png", video_format="mp4", **extra)

    encoder = workers[schema.STAGE_ENCODE](**common)
    denoised = workers[schema.STAGE_DENOISE](**common)(encoder(batch))
    del encoder
    empty_cache()
    first = {key: value[:1] for key, value in denoised.items()}
    measure = decoder()
    fit = measure_decode_memory(measure, first)
    with peak_memory(device) as whole:
        measure(denoised)
    elements = int(np.asarray(denoised[schema.LATENTS]).size)
    predicted = fit["fixed_bytes"] + fit["bytes_per_latent_element"] * elements
    weights = sum(t.numel() * t.element_size() for m in measure.family.loaded_modules().values()
                  for t in (*m.parameters(), *m.buffers()))
    del measure
    empty_cache()
    one_row = fit["fixed_bytes"] + fit["bytes_per_latent_element"] * elements / rows
    budgets = {"fits the batch": weights + predicted * 1.1, "fits one row": weights + (one_row + predicted) / 2,
               "fits less than one row": weights + one_row * 0.5}
    peak = DecodePeakMemory(**{k: v for k, v in fit.items() if k != "samples"})
    choices = []
    for label, budget in budgets.items():
        worker = decoder(memory_budget_gb=budget / 2**30, peak_memory=peak)
        with peak_memory(device) as used:
            out = worker(denoised)
        choices.append({"budget": label, "budget_mib": budget / 2**20, "mode": sorted(set(out[schema.DECODE_MODE])),
                        "peak_above_weights_mib": used.bytes / 2**20,
                        "within_budget": used.bytes <= budget - weights,
                        "errors": [str(m) for m in out[schema.ERROR_MESSAGE] if m]})
        del worker
        empty_cache()
    return {"rows": rows, "dtype": common["dtype"], "fit": fit, "predicted_batch_mib": predicted / 2**20,
            "measured_batch_mib": whole.bytes / 2**20, "prediction_error": predicted / whole.bytes - 1,
            "vae_weights_mib": weights / 2**20, "choices": choices}


def markdown(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [f"GPU check: {env.get('gpu') or 'no GPU'} ({env.get('gpu_memory_gib')} GiB), torch {env['torch']}, "
             f"CUDA {env['cuda']}, diffusers {env['diffusers']}, transformers {env['transformers']}, "
             f"Ray {env['ray']}, Python {env['python']}.", "",
             f"Command: `{result['command']}`", ""]
    build = result.get("build")
    if build:
        lines += [f"Checkpoint: SDXL base 1.0 configs, random weights, built in {build['seconds']:.0f} s "
                  f"({build['bytes_on_disk'] / 2**30:.1f} GiB); parameters {build['parameters']} "
                  f"(published counts {'matched' if build['matches_published'] else 'NOT matched'}).", ""]
    compare = (result.get("compare") or {}).get("report") or {}
    if compare:
        c, r = compare["contenders"], compare["ratios"]
        lines += [f"Compare ({result['params']}, {result['rows']} rows, batch {result['batch_size']}), "
                  f"one GPU for every contender:", "",
                  "| contender | wall s | first output s | steady img/s per GPU | MFU (bf16 989 TFLOP/s) |",
                  "|---|---|---|---|---|"]
        names = {"a": "(a) latentmill, pools 0.25/0.25/0.5 GPU", "b": "(b) peer: whole pipeline, 1 GPU",
                 "c": "(c) denoiser alone, in-process"}
        for key in ("a", "b", "c"):
            if key in c:
                mfu = (result.get("mfu") or {}).get(key)
                lines.append(f"| {names[key]} | {fmt(c[key]['wall_seconds'])} | {fmt(c[key]['first_output_seconds'])} "
                             f"| {fmt(c[key]['steady_rows_per_s'])} | {fmt(mfu)} |")
        failed = {run["label"]: run.get("rows_failed") for run in compare.get("runs", []) if run.get("rows_failed")}
        lines += ["", f"a / b steady img/s: {fmt(r.get('a_over_b_steady_rate'))}; a / c: "
                      f"{fmt(r.get('a_over_c_steady_rate_one_denoiser'))}."
                      + (f" Rows failed: {failed}." if failed else ""), ""]
        busy = []
        for run in compare.get("runs", []):
            for pool, values in (run.get("pools") or {}).items():
                busy.append(f"{run['label']} {pool} {fmt(values.get('busy_fraction_steady'))}")
        if busy:
            lines += ["Busy fraction in the steady window: " + "; ".join(busy) + ".", ""]
        memory = compare.get("memory") or {}
        if memory:
            lines += ["Peak GPU memory per actor type (nvidia-smi): " + "; ".join(
                f"{kind} {fmt(v.get('peak_gpu_mb'))} MiB" for kind, v in memory.items()) + ".", ""]
    stages = result.get("stages") or {}
    if stages.get("error"):
        lines += [f"Stage checks failed: {stages['error']}", ""]
    elif stages:
        lines += ["| stage (in-process, load + one batch) | dtype | peak GPU MiB (torch) | notes |", "|---|---|---|---|"]
        for name, values in stages.items():
            if not isinstance(values, dict):
                lines.append(f"| {name} | | | {values} |")
                continue
            notes = []
            if "frames_finite" in values:
                notes.append(f"frames finite: {values['frames_finite']}; batch {values['batch']} in "
                             f"{fmt(values['batch_seconds'])} s; VAE after decode: {values['vae_dtype_after']}")
            if "batch_seconds_first" in values:
                notes.append(f"first batch {fmt(values['batch_seconds_first'])} s")
            lines.append(f"| {name} | {values['dtype']} | {fmt(values['peak_gpu_mib'])} | {'; '.join(notes)} |")
        lines.append("")
    if result.get("unet_flops_per_image_step"):
        lines += [f"UNet FLOPs per image per forward at {result['params']['height']}x{result['params']['width']}: "
                  f"{result['unet_flops_per_image_step'] / 1e12:.2f} TFLOP (torch FLOP counter).", ""]
    speed = result.get("speed_options") or []
    if speed:
        lines += ["| denoise option (in-process, batch of %d) | seconds per batch, in order | img/s | error |"
                  % result["batch_size"], "|---|---|---|---|"]
        for row in speed:
            lines.append(f"| {row['option']} | {', '.join(fmt(t) for t in row.get('batch_seconds', []))} "
                         f"| {fmt(row.get('rows_per_s'))} | {row.get('error') or row.get('skipped') or ''} |")
        lines.append("")
    flux = result.get("flux_denoiser")
    if flux and "runs" in flux:
        lines += [f"FLUX.1-dev transformer alone ({flux['parameters']:,} parameters, published count matched: "
                  f"{flux['matches_published']}), batch {flux['batch']} at {result['params']['height']}x"
                  f"{result['params']['width']}, {flux['flops_per_image_step'] / 1e12:.1f} TFLOP per image per "
                  f"step, peak {fmt(flux['peak_gpu_mib'])} MiB:", "",
                  f"| option | seconds per step, in order | img/s at {flux['steps']} steps | MFU | error |",
                  "|---|---|---|---|---|"]
        for row in flux["runs"]:
            lines.append(f"| {row['option']} | {', '.join(fmt(t) for t in row.get('step_seconds', []))} "
                         f"| {fmt(row.get('images_per_s'))} | {fmt(row.get('mfu'))} | {row.get('error', '')} |")
        lines.append("")
    planned = result.get("decode_memory")
    if planned and "choices" in planned:
        lines += [f"Planned decode ({planned['rows']} rows, {planned['dtype']}): the fit from one row predicts "
                  f"{fmt(planned['predicted_batch_mib'])} MiB for the batch, measured "
                  f"{fmt(planned['measured_batch_mib'])} MiB ({planned['prediction_error']:+.1%}); VAE weights "
                  f"{fmt(planned['vae_weights_mib'])} MiB.", "",
                  "| decode budget | MiB | mode picked | peak above weights, MiB | within budget | errors |",
                  "|---|---|---|---|---|---|"]
        for row in planned["choices"]:
            lines.append(f"| {row['budget']} | {fmt(row['budget_mib'])} | {', '.join(row['mode'])} "
                         f"| {fmt(row['peak_above_weights_mib'])} | {row['within_budget']} | {len(row['errors'])} |")
        lines.append("")
    lines += ["Step seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in result["step_seconds"].items()), ""]
    return "\n".join(lines)


def fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/gpu-check"))
    parser.add_argument("--model", help="a checkpoint to use instead of building full-size SDXL "
                                        "(e.g. builtin:tiny-sdxl for a quick run on a CPU)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/latentmill-gpu-check"),
                        help="where the built checkpoint goes (about 7 GiB)")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--contenders", default="a,b,c", help="which of the compare's contenders to run")
    parser.add_argument("--time-limit", type=float, default=420.0, help="seconds; later steps are skipped past it")
    parser.add_argument("--only", default="compare,stages,flops,speed-options,flux-denoiser,decode-memory",
                        help="which steps to run (a rerun that measures what an earlier one skipped)")
    parser.add_argument("--flux-batch", type=int, default=4, help="images per forward of the FLUX.1-dev step")
    parser.add_argument("--flux-steps", type=int, default=28, help="steps per image, for its images/s")
    parser.add_argument("--option-batches", type=int, default=2,
                        help="batches per denoise speed option (compile's first includes compiling)")
    parser.add_argument("--compare-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    deadline = time.time() + args.time_limit
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    gpu = torch.cuda.is_available()
    result: dict[str, Any] = {"command": "python benchmarks/gpu_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
                              "environment": environment(), "rows": args.rows, "batch_size": args.batch_size,
                              "params": {"height": args.height, "width": args.width, "steps": args.steps,
                                         "guidance": args.guidance},
                              "step_seconds": {}}
    log(json.dumps(result["environment"]))

    wanted = {name.strip() for name in args.only.split(",")}

    def step(name: str, function, minimum: float = 30.0):
        if name.replace(" ", "-") not in wanted and name != "build":
            return None
        if time.time() > deadline - minimum:
            log(f"skipping {name}: time limit")
            return None
        log(f"{name} ...")
        started = time.perf_counter()
        try:
            value = function()
        except Exception as exc:  # noqa: BLE001 - one failed step must not hide the others' figures
            import traceback

            traceback.print_exc()
            value = {"error": f"{type(exc).__name__}: {exc}"}
        result["step_seconds"][name] = time.perf_counter() - started
        log(f"{name} done in {result['step_seconds'][name]:.0f} s")
        save()
        return value

    def save() -> None:
        (args.out / "gpu-check.json").write_text(json.dumps(result, indent=2, default=str))
        try:
            (args.out / "gpu-check.md").write_text(markdown(result))
        except Exception as exc:  # noqa: BLE001 - the JSON above holds every figure anyway
            (args.out / "gpu-check.md").write_text(f"(no table: {type(exc).__name__}: {exc}; see gpu-check.json)\n")

    model = args.model
    if not model:
        dest = args.workdir / "sdxl-base-1.0-random"
        result["build"] = step("build", lambda: build_sdxl(dest))
        model = str(dest)
    result["compare"] = step("compare", lambda: run_compare(args, model, args.out, gpu), minimum=120)
    result["stages"] = step("stages", lambda: stage_checks(args, model), minimum=45)
    flops = step("flops", lambda: unet_flops(model, args), minimum=20)
    result["unet_flops_per_image_step"] = flops if isinstance(flops, float) else None
    compare = (result.get("compare") or {}).get("report") or {}
    if flops and compare and gpu:
        name = result["environment"]["gpu"] or ""
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), 989.0) * 1e12
        per_image = flops * args.steps * (2 if args.guidance > 1 else 1)
        result["mfu"] = {key: (values["steady_rows_per_s"] or 0) * per_image / peak
                         for key, values in compare["contenders"].items()}
    result["speed_options"] = step("speed options", lambda: speed_options(args, model, deadline), minimum=90)
    result["flux_denoiser"] = step("flux denoiser", lambda: flux_denoiser(args), minimum=60)
    result["decode_memory"] = step("decode memory", lambda: decode_memory(args, model), minimum=60)
    save()
    print((args.out / "gpu-check.md").read_text())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
