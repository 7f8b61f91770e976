"""The benchmark's arithmetic on fixed inputs (pure: no Ray)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from latentmill.bench import arithmetic as ar
from latentmill.bench.monitor import ProcessMonitor, worker_kind
from latentmill.models.simulated import SIMULATED_PROFILES, parse_name


def test_normalize_curve_sorts_and_drops_repeats():
    assert ar.normalize_curve([(2.0, 8), (1.0, 4), (3.0, 8), (4.0, 12)]) == [(1.0, 4), (2.0, 8), (4.0, 12)]


def test_first_output_and_time_to_rows():
    curve = [(10.0, 4), (11.0, 8), (12.0, 12)]
    assert ar.first_output_seconds(curve) == 10.0
    assert ar.time_to_rows(curve, 5) == 11.0
    assert ar.time_to_rows(curve, 13) is None


def test_steady_rate_excludes_ramp_and_drain():
    # 10 s of start-up, then 4 rows every second for 25 s, then a slow tail.
    curve = [(10.0 + i, 4 * (i + 1)) for i in range(25)] + [(40.0, 104)]
    start, end, rows = ar.steady_window(curve, lo=0.2, hi=0.9)
    # 20% of 104 rows = 20.8 -> the arrival completing row 24 (t=15); 90% = 93.6 -> row 96 (t=33).
    assert (start, end, rows) == (15.0, 33.0, 72)
    assert ar.steady_rate(curve) == pytest.approx(4.0)
    # Not before every actor is up.
    assert ar.steady_window(curve, not_before=20.5)[0] == 21.0
    assert ar.steady_rate(curve, not_before=20.5) == pytest.approx(4.0)


def test_steady_rate_is_the_slope_not_the_endpoints():
    # Steady 4 rows/s, but the window's first arrival came late and its rows arrive in a catch-up burst.
    curve = [(float(t), 4 * t) for t in range(1, 11)]
    curve[1] = (2.6, 8)  # the arrival completing 20% of the rows came late
    start, end, rows = ar.steady_window(curve, lo=0.2, hi=0.9)
    assert (start, end, rows) == (2.6, 9.0, 28)
    assert rows / (end - start) == pytest.approx(4.375)  # the two-point rate: inflated by the late start
    assert ar.steady_rate(curve, lo=0.2, hi=0.9) == pytest.approx(4.0, rel=0.05)
    assert ar.slope([(0, 1), (1, 3), (2, 5)]) == pytest.approx(2.0)


def test_a_short_runs_last_batches_arriving_together_do_not_count():
    # 48 rows on one H200 (BENCHMARKS.md section 7): one batch of 8 every 6-7 s, the last two together.
    curve = [(52.23, 8), (58.95, 16), (65.19, 24), (72.02, 32), (77.66, 40), (77.67, 48)]
    assert ar.steady_window(curve)[1:] == (77.66, 24)
    assert ar.steady_rate(curve) == pytest.approx(1.27, abs=0.02)  # 1.50 with the last arrival in
    assert ar.steady_window([(1.0, 4), (2.0, 8)]) == (1.0, 2.0, 4)  # two arrivals: no drain to leave out


def test_scaling_sizes_decoders_on_the_host_time_of_the_runs_output_size():
    from latentmill.bench.scaling import host_row_seconds

    small = host_row_seconds("sdxl-30", time_scale=0.001, size=64)["decode"]
    real = host_row_seconds("sdxl-30", time_scale=0.001)["decode"]  # a 1024x1024 PNG
    assert 0 <= small < real


def test_steady_rate_degenerate_curves():
    assert ar.steady_rate([]) is None
    assert ar.steady_rate([(5.0, 48)]) is None  # everything in one batch: no rate to measure
    assert ar.steady_rate([(1.0, 4), (2.0, 8)], not_before=3.0) is None
    with pytest.raises(ValueError):
        ar.steady_window([(1.0, 1), (2.0, 2)], lo=0.9, hi=0.2)


def test_busy_fractions():
    assert ar.busy_fraction(30.0, 2, 20.0) == pytest.approx(0.75)
    assert ar.busy_fraction(1.0, 0, 10.0) is None
    # Row i arrived at the i-th point; each row carries 0.5 s (a batch of 2 taking 1 s).
    curve = [(1.0, 2), (2.0, 4), (3.0, 6), (4.0, 8)]
    seconds = [0.5] * 8
    # Rows that arrived in (1, 3]: rows 2..5 -> 2 s of busy time.
    assert ar.busy_in_window(seconds, curve, 1.0, 3.0) == pytest.approx(2.0)
    assert ar.busy_fraction(ar.busy_in_window(seconds, curve, 1.0, 3.0), 1, 2.0) == pytest.approx(1.0)
    assert ar.busy_in_window(seconds, curve, 5.0, 6.0) == 0.0


def test_ratios_and_speedup():
    assert ar.speedup(60.0, 40.0) == pytest.approx(1.5)  # baseline 60 s, ours 40 s
    assert ar.ratio(3.0, 4.0) == pytest.approx(0.75)
    assert ar.ratio(None, 4.0) is None and ar.ratio(3.0, 0) is None


def test_efficiency_and_linearity():
    one = 4 / 1.2  # one device finishing a batch of 4 rows every 1.2 s
    assert ar.efficiency(51.2, 16, one) == pytest.approx(0.96)
    rates = {1: 3.2, 4: 12.8, 8: 24.0, 16: 48.0}
    linear = ar.linearity(rates)
    assert linear[1] == 1.0 and linear[4] == pytest.approx(1.0)
    assert linear[8] == pytest.approx(24 / 25.6) and linear[16] == pytest.approx(48 / 51.2)
    assert ar.linearity({4: 10.0}) == {4: None}


def test_growth_median_and_table():
    assert ar.growth(200.0, 230.0) == pytest.approx(0.15)
    assert ar.median([3.0, 1.0, 2.0]) == 2.0
    assert ar.median([4.0, 1.0, None, 2.0, 3.0]) == 2.5
    assert ar.median([None]) is None
    table = ar.markdown_table(["a", "b"], [["x", 0.123456], ["y", None]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x | 0.123 |", "| y | n/a |"]


def test_worker_kind_from_ray_process_titles():
    assert worker_kind(["ray::MapWorker(MapBatches(DenoiseWorker))"]) == "DenoiseWorker"
    assert worker_kind(["ray::MapWorker(MapBatches(DecodeWorker)).submit"]) == "DecodeWorker"
    assert worker_kind(["ray::MapWorker(MapBatches(PeerPipelineWorker))"]) == "PeerPipelineWorker"
    assert worker_kind(["ray::IDLE"]) == "IDLE"
    assert worker_kind(["ray::MapBatches(validate_batch)"]) == "MapBatches(validate_batch)"
    assert worker_kind(["ray::ReadParquet->MapBatches(validate_batch)"]) == "ReadParquet->MapBatches(validate_batch)"
    assert worker_kind(["ray::HashShuffleMap"]) == "HashShuffleMap"
    assert worker_kind(["ray::IdLedger.add"]) == "IdLedger"
    assert worker_kind(["/usr/bin/python", "x.py"]) is None
    assert worker_kind([]) is None


def test_a_pooled_workers_memory_counts_under_the_task_it_is_running():
    """Ray reuses a task worker for the next task (a read, then an end-of-run shuffle) and retitles it:
    each title's peak is what the process held while it had that title."""
    later = "import time; b = bytearray(200 * MB); b[::4096] = b'x' * len(b[::4096]); time.sleep(2.5)"
    first = ("import os, time; b = bytearray(20 * MB); b[::4096] = b'x' * len(b[::4096]); time.sleep(2.5); "
             f"os.execv({sys.executable!r}, ['ray::HashShuffleMap', '-c', {'MB = 2**20; ' + later!r}])")
    with ProcessMonitor(interval=0.1, uss=True, gpu=False) as monitor:  # exec keeps the process id
        process = subprocess.Popen(["ray::ReadParquet->MapBatches(validate_batch)", "-c", "MB = 2**20; " + first],
                                   executable=sys.executable)
        assert process.wait(timeout=30) == 0
    summary = monitor.summary()
    read = "ReadParquet->MapBatches(validate_batch)"
    assert summary[read]["actors"] == summary["HashShuffleMap"]["actors"] == 1
    assert 20 <= summary[read]["peak_uss_mb"] < 100
    assert summary["HashShuffleMap"]["peak_uss_mb"] >= 200


@pytest.mark.parametrize("name", sorted(SIMULATED_PROFILES))
def test_simulated_profiles_keep_published_shares(name):
    profile = SIMULATED_PROFILES[name]
    costs = profile.stage_costs()
    # A denoiser batch at the reference size takes the calibrated time (>= 1 s).
    t0, t1 = costs["denoise"]
    assert t0 + profile.denoise_batch * t1 == pytest.approx(profile.denoise_batch_seconds)
    assert profile.denoise_batch_seconds >= 1.0
    # Batch-of-one times are in the published proportions.
    ones = {stage: sum(cost) for stage, cost in costs.items()}
    total = sum(ones.values())
    shares = [ones[s] / total * sum(profile.shares) for s in ("encode", "denoise", "decode")]
    assert shares == pytest.approx(list(profile.shares))


def test_simulated_names_and_scale():
    profile, scale = parse_name("sim-sdxl-30@0.01")
    assert profile.name == "sdxl-30" and scale == 0.01
    fast = profile.stage_costs(scale)["denoise"]
    assert sum(fast) == pytest.approx(sum(profile.stage_costs()["denoise"]) * 0.01)
    with pytest.raises(ValueError, match="known: sim-sd15-50"):
        parse_name("sim-nope")
    with pytest.raises(ValueError, match="> 0"):
        parse_name("sim-lcm-4@0")


def test_simulated_family_moves_real_shapes_without_torch(tmp_path, monkeypatch):
    import time

    import numpy as np

    from latentmill.models import resolve_model
    from latentmill.rows import Request

    monkeypatch.setenv("LATENTMILL_CACHE", str(tmp_path))
    ref = resolve_model("builtin:sim-wan-50@0.001")
    family = ref.family()
    assert family.is_video and family.generation_defaults()["num_frames"] == 81
    request = Request("r1", "a prompt", "", 7, 50, 5.0, 480, 832, 81, 16.0)
    assert family.check_request(request) is None
    assert "4k+1" in family.check_request(Request("r1", "p", "", 7, 50, 5.0, 480, 832, 80, 16.0))
    assert family.prepare_runtime(0.5, "float16", 1) == ("simulated", "float16")
    started = time.perf_counter()
    encoded = family.encode([request, request])
    latents = family.denoise([request, request], encoded.tensors)
    # Frames at the requested output size (small here): decoded media cost what they cost.
    small = Request("r2", "a prompt", "", 8, 50, 5.0, 32, 48, 9, 16.0)
    frames = family.decode(np.stack(latents), [small, small])
    # At half a device, twice the scaled time: (t0 + 2 t1) * 2 per stage.
    costs = family.spec["stage_costs"]
    expected = sum(2 * (c["t0"] + 2 * c["t1"]) for c in costs.values())
    assert time.perf_counter() - started >= expected * 0.99
    assert [row.shape for row in encoded.tensors["prompt_embeds"]] == [(512, 4096)] * 2
    assert encoded.tensors["prompt_embeds"][0].dtype == np.float16
    assert encoded.tensors["negative_prompt_embeds"][0].shape == (512, 4096)  # guidance 5: negatives shipped
    assert latents[0].shape == (16, 21, 60, 104) and latents[0].dtype == np.float16
    assert frames.shape == (2, 9, 32, 48, 3) and frames.dtype == np.float32
    assert 0 <= frames.min() and frames.max() <= 1
    assert not np.array_equal(frames[0, 0], frames[0, 1])  # the picture moves: the video encoder has work
    assert frames.std() > 0.1  # a textured picture, not a flat one that every encoder compresses for free


def test_simulated_actor_path_never_imports_torch(tmp_path):
    import os
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from latentmill.actors.stages import DenoiseWorker\n"
        "from latentmill.models import resolve_model\n"
        "from latentmill.rows import Request\n"
        "f = resolve_model('builtin:sim-sdxl-30@0.001').family()\n"
        "f.prepare_runtime(1.0, 'float16', 1)\n"
        "r = Request('a', 'p', '', 1, 30, 5.0, 1024, 1024, 1, 0.0)\n"
        "f.decode(np.stack(f.denoise([r], f.encode([r]).tensors)), [r])\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'imported torch'\n"
    )
    env = {**os.environ, "LATENTMILL_CACHE": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def _scaling_point(devices: int, rate: float) -> dict:
    """A scaling.json point whose arrival curve runs at `rate` rows/s after 10 s of start-up."""
    pool = {"size": 1, "device_share": 1.0}
    curve = [(10.0 + k, int(rate * (k + 1))) for k in range(40)]
    return {
        "profile": "sdxl-30", "devices": devices, "rows": curve[-1][1], "curve": curve,
        "pools_up_seconds": 5.0, "denoise_batch_seconds": 1.2, "one_device_rows_per_s": 10 / 3,
        "ideal_rows_per_s": devices * 10 / 3, "first_output_seconds": 10.0,
        "steady_rows_per_s": 999.0, "efficiency": 999.0,  # stale figures that `report` replaces
        "plan": {"pools": {"encode": pool, "denoise": {**pool, "size": devices}, "decode": pool}},
        "busy_fraction_steady": {}, "memory": {}, "driver_peak_rss_mb": 250.0,
    }


def test_bench_report_rederives_scaling_figures_from_the_curves(tmp_path, capsys):
    import json

    from latentmill.jobs.cli import main

    results = tmp_path / "scaling.json"
    report = {"command": "latentmill bench scaling", "machine": "test", "linearity": {},
              "points": [_scaling_point(1, 3.2), _scaling_point(4, 12.0)]}
    results.write_text(json.dumps(report))
    assert main(["bench", "report", str(results)]) == 0
    fresh = json.loads(results.read_text())
    one, four = fresh["points"]
    assert one["steady_rows_per_s"] == pytest.approx(3.2, rel=0.05)
    assert four["efficiency"] == pytest.approx(12.0 / (4 * 10 / 3), rel=0.05)
    assert fresh["linearity"]["sdxl-30"]["4"] == pytest.approx(12.0 / (4 * 3.2), rel=0.05)
    markdown = (tmp_path / "scaling.md").read_text()
    assert "| sdxl-30 | 4 |" in markdown and "999" not in markdown
    assert markdown in capsys.readouterr().out

    (tmp_path / "other.json").write_text("{}")
    assert main(["bench", "report", str(tmp_path / "other.json")]) == 2


def test_simulated_whole_pipeline_runs_every_stage_for_the_peer(tmp_path, monkeypatch):
    import numpy as np

    from latentmill.models import resolve_model

    monkeypatch.setenv("LATENTMILL_CACHE", str(tmp_path))
    family = resolve_model("builtin:sim-flux-28@0.001").family()
    assert family.profile["shares"][1] > 95  # the transformer is almost all of FLUX.1-dev's time
    family.prepare_runtime(1.0, "bfloat16", 1)
    pipe = family.reference_pipeline()
    pipe.set_progress_bar_config(disable=True)
    result = pipe(prompt=["a", "b"], negative_prompt=["", ""], height=32, width=48, num_inference_steps=28,
                  guidance_scale=1.0, generator=[family.reference_generator(s) for s in (1, 2)])
    assert result.frames is None and result.images.shape == (2, 32, 48, 3)
    assert 0 <= result.images.min() and result.images.max() <= 1
    t0, t1 = family.stage_cost("denoise")
    assert result.stage_seconds["denoise"] >= (t0 + 2 * t1) * 0.99
    assert set(result.stage_seconds) == {"encode", "denoise", "decode"}
    assert not np.array_equal(result.images[0], result.images[1])  # rows differ by their seed


def test_object_store_pages_are_told_apart_from_the_drivers_own(tmp_path):
    """A store page only the driver touched is private to it: without the split it would count as the
    driver's own memory."""
    import mmap

    import psutil

    from latentmill.bench.monitor import own_and_store

    store_file = tmp_path / "plasmaTEST"
    store_file.write_bytes(b"\0" * (32 * 2**20))
    me = psutil.Process()
    own_before, store_before = own_and_store(me)
    with open(store_file, "r+b") as handle, mmap.mmap(handle.fileno(), 0) as pages:
        pages[:: mmap.PAGESIZE] = b"x" * len(range(0, len(pages), mmap.PAGESIZE))  # touch (dirty) every page
        own_after, store_after = own_and_store(me)
    assert store_after - store_before >= 32 * 2**20
    assert own_after - own_before < 16 * 2**20


def test_driver_memory_report_separates_each_process_types_rss_and_uss(tmp_path):
    from types import SimpleNamespace

    from latentmill.bench.driver_memory import _write

    def point(rows, driver, read_rss, read_uss):
        return {"rows": rows, "peak_rss_mb": driver, "peak_uss_mb": driver - 100, "peak_object_store_rss_mb": 8.0,
                "rss_at_end_mb": driver, "wall_seconds": 10.0,
                "rows_per_s": rows / 10, "outputs_written": rows, "rows_failed": 0,
                "workers": {"ReadParquet": {"processes": 2, "peak_rss_mb": read_rss, "peak_uss_mb": read_uss}}}

    args = SimpleNamespace(rows="1000,10000", model="builtin:sim-sd15-50@0.002", batch_size=256, size=64)
    report = _write(tmp_path, [point(1000, 300.0, 200.0, 100.0), point(10000, 330.0, 320.0, 105.0)], args)
    assert report["growth_first_to_last"] == pytest.approx(0.10)
    markdown = (tmp_path / "driver_memory.md").read_text()
    assert "Peak RSS growth from 1000 to 10000 rows: +10.0%" in markdown
    assert report["uss_growth_first_to_last"] == pytest.approx(0.15)
    assert "Peak USS growth from 1000 to 10000 rows: +15.0%" in markdown
    header = next(line for line in markdown.splitlines() if line.startswith("| Ray process type"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == [
        "Ray process type", "peak RSS MiB at 1000 rows", "peak RSS MiB at 10000 rows",
        "peak USS MiB at 1000 rows", "peak USS MiB at 10000 rows",
        "peak object-store RSS MiB at 1000 rows", "peak object-store RSS MiB at 10000 rows"]
    row = next(line for line in markdown.splitlines() if line.startswith("| ReadParquet"))
    assert [cell.strip() for cell in row.strip("|").split("|")][1:] == ["200", "320", "100", "105", "n/a", "n/a"]
