"""Faults on a local Ray instance: per-row failures in every stage, out-of-memory in decode, the error
budget, a denoiser process killed mid-run, a model that cannot load, storage that vanishes mid-run.

Each run ends with the exactly-once checks of `exactly_once.check_output`.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest

from latentmill import schema
from latentmill.io import storage
from latentmill.jobs.cli import EXIT_BUDGET, EXIT_JOB_ERROR, main
from latentmill.pipelines.job import JobError
from tests.helpers import write_table
from tests.integration.exactly_once import (check_output, check_summary, cli_command, faults, run,
                                            stage_actors, wait_for_actor_log)

pytestmark = pytest.mark.slow


def prompts(tmp_path, n: int, prefix: str = "f"):
    ids = [f"{prefix}-{i:02d}" for i in range(n)]
    return write_table(tmp_path / "prompts.parquet", [{"id": i, "prompt": f"prompt {i}"} for i in ids]), ids


def test_row_faults_in_each_stage_oom_in_decode_and_the_error_budget(ray_local, tmp_path, capsys):
    """One CLI run (`main`, in this process on the session's Ray): a row raising in encode, one raising in
    denoise, one with NaN latents and one decoding to a blank image, both rejected by the quality gates with
    no attempt left (max_attempts 1: an error row, as without the gates); decode runs out of memory on its
    first batch and on the tiled retry of that batch. Four failures against --max-failed 2: the job
    completes, every other row is an output, and the exit code is 3."""
    table, ids = prompts(tmp_path, 12)
    job = tmp_path / "job.yaml"
    job.write_text("quality: {reject_nonfinite: true, reject_blank: true, max_attempts: 1}\nstages:\n"
                   + "".join(f"  {s}: {{batch_size: 4, num_cpus: 0.5, torch_threads: 1}}\n"
                             for s in ("encode", "denoise", "decode")))
    out = tmp_path / "out"
    with faults("encode:raise:f-09;denoise:raise:f-03;denoise:nan:f-06;decode:blank:f-11;decode:oom:2"):
        code = main(cli_command(job, "--input", str(table), "--output", str(out), "--max-failed", "2")[3:])
    printed = capsys.readouterr()
    assert code == EXIT_BUDGET, printed.err[-3000:]
    assert "error budget (max_failed) exceeded" in printed.out

    failed = {"f-03", "f-06", "f-09", "f-11"}
    output = check_output(str(out), set(ids) - failed, failed)
    check_summary(output.summary, rows=12, outputs=8, failed=4)
    assert output.summary["failed_by_stage"] == {"encode": 1, "denoise": 2, "decode": 1}
    assert output.summary["attempts"] == {"0": 8}
    assert output.summary["budget_exceeded"] is True
    errors = output.errors
    assert (errors["f-09"][schema.ERROR_STAGE], errors["f-09"][schema.ERROR_TYPE]) == ("encode", "RuntimeError")
    assert errors["f-09"][schema.ERROR_MESSAGE] == "injected fault for row 'f-09'"
    assert (errors["f-03"][schema.ERROR_STAGE], errors["f-03"][schema.ERROR_TYPE]) == ("denoise", "RuntimeError")
    assert (errors["f-06"][schema.ERROR_STAGE], errors["f-06"][schema.ERROR_TYPE]) == ("denoise", "FloatingPointError")
    assert "non-finite latents for row 'f-06'" in errors["f-06"][schema.ERROR_MESSAGE]
    for row in errors.values():
        assert json.loads(row[schema.INPUT_ROW])["id"] == row[schema.ID] and row["run_id"]
    assert (errors["f-11"][schema.ERROR_STAGE], errors["f-11"][schema.ERROR_TYPE]) == ("decode", "BlankImage")
    # Out of memory twice did not fail a row: the batch was retried tiled, then row by row (the decode
    # actor says so in its log).
    assert [row_id for row_id, row in errors.items() if row[schema.ERROR_STAGE] == "decode"] == ["f-11"]
    log = printed.out + printed.err
    # (How many healthy rows that first batch holds depends on which block reaches decode first.)
    assert wait_for_actor_log(r"decode ran out of memory on a batch of \d; retrying with tiled decoding", log)
    assert wait_for_actor_log(r"decode batch of \d failed \(injected out-of-memory error\); retrying row by row", log)


def test_a_killed_denoiser_is_restarted_and_its_batch_retried(ray_local, tmp_path):
    """SIGKILL the denoise actor's process while it works through its rows; Ray restarts it, Ray Data retries its batch, and every row still ends exactly once."""
    table, ids = prompts(tmp_path, 6, "k")
    progress = {"outputs": 0}
    killed: dict = {}

    def kill_denoiser_mid_run() -> None:
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline and not progress.get("done"):
            # The denoiser and the decoder are up (the encoder may be done already): rows are flowing.
            pools = [[a for a in stage_actors(name) if a["State"] == "ALIVE" and a["Pid"]]
                     for name in ("DenoiseWorker", "DecodeWorker")]
            if all(pools):
                time.sleep(1.5)  # about one row into the denoiser's 6 x 1.5 s
                [denoiser] = pools[0]
                killed.update(pid=denoiser["Pid"], actor=denoiser["ActorID"], outputs=progress["outputs"])
                os.kill(denoiser["Pid"], signal.SIGKILL)
                return
            time.sleep(0.2)

    def on_progress(summary) -> None:
        progress["outputs"] = summary.outputs_written

    thread = threading.Thread(target=kill_denoiser_mid_run, daemon=True)
    thread.start()
    try:
        with faults("denoise:sleep:1.5"):
            summary = run(str(table), str(tmp_path / "out"), batch_size=1, on_progress=on_progress,
                          stages={"encode": {"batch_size": 4}})
    finally:
        progress["done"] = True
        thread.join(timeout=10)
    assert killed and killed["outputs"] < len(ids), killed  # it died with rows still to do
    check_summary(summary, rows=6, outputs=6, failed=0)
    check_output(str(tmp_path / "out"), set(ids), set())
    [actor] = [a for a in stage_actors("DenoiseWorker") if a["ActorID"] == killed["actor"]]
    assert actor["NumRestarts"] >= 1


@pytest.fixture
def broken_model(model_cache, tmp_path):
    """The tiny image checkpoint whose unet weights are a valid file of the wrong tensors: every up-front
    check passes (the files are there and well-formed), and only loading them fails, in the actor."""
    import shutil

    import numpy as np
    from safetensors.numpy import save_file

    from latentmill.models import materialize

    model = tmp_path / "broken"
    shutil.copytree(materialize("builtin:tiny-image"), model)
    save_file({"conv_in.weight": np.zeros(1, dtype=np.float32)}, model / "unet" / "diffusion_pytorch_model.safetensors")
    return model


def test_a_model_that_cannot_load_stops_the_job_with_a_clear_message(ray_local, broken_model, tmp_path, capsys):
    table, _ = prompts(tmp_path, 4)
    started = time.monotonic()
    code = main(["run", "--no-progress", "--input", str(table), "--output", str(tmp_path / "out"),
                 "--model", str(broken_model)])
    err = capsys.readouterr().err
    assert code == EXIT_JOB_ERROR, err
    # Ray Data logs the actor's traceback on its own; latentmill's message is the last thing printed.
    message = err[err.rindex("latentmill: "):]
    assert message.startswith(f"latentmill: model could not be loaded, job stopped: the denoise stage could not "
                              f"load the model {broken_model}: ValueError: "), err[-2000:]
    assert "conv_in.weight expected shape torch.Size([32, 4, 3, 3]), but got torch.Size([1])" in message
    assert message.rstrip().endswith("Check the checkpoint's files (re-save it with save_pretrained, or download "
                                     "it again)")
    assert "Traceback" not in message and "RayTaskError" not in message and "ActorDiedError" not in message
    assert not (tmp_path / "out" / "media").exists() and not (tmp_path / "out" / "manifest").exists()
    assert time.monotonic() - started < 240  # failed fast, not retried forever


def test_storage_that_vanishes_mid_run_stops_the_job(ray_local, s3, tmp_path):
    """The output bucket is deleted once the first object is in: a fatal storage error, so the job
    stops with a message naming the bucket instead of turning every row into an error row."""
    fs, _ = storage.resolve("s3://", s3.storage_options())
    fs.mkdir("vanishing")
    table, _ = prompts(tmp_path, 8, "v")
    settings = {"endpoint_url": s3.endpoint_url, "key": s3.access_key, "secret": s3.secret_key}
    deleted = threading.Event()

    def delete_bucket_after_first_object() -> None:
        watcher, _ = storage.resolve("s3://", dict(s3.storage_options(), skip_instance_cache=True))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if watcher.find("vanishing/out/media"):
                    watcher.rmdir("vanishing")  # SeaweedFS deletes a bucket with its objects
                    deleted.set()
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.2)

    thread = threading.Thread(target=delete_bucket_after_first_object, daemon=True)
    thread.start()
    with faults("decode:sleep:1"), pytest.raises(JobError) as caught:
        run(str(table), "s3://vanishing/out", batch_size=1, storage=settings)
    thread.join(timeout=5)
    assert deleted.is_set()
    message = str(caught.value)
    assert message.startswith("storage failed, job stopped: "), message
    assert "Bucket 'vanishing' does not exist" in message and s3.secret_key not in message


@pytest.mark.parametrize("where", ["job file", "environment"])
def test_storage_denied_stops_the_job_with_exit_code_1(s3, model_cache, tmp_path, capsys, monkeypatch, where):
    """Wrong credentials: refused before any model or actor starts, with the fix and without the secret."""
    table, _ = prompts(tmp_path, 2)
    job = tmp_path / "job.yaml"
    wrong = "not-the-right-secret-0123456789"
    if where == "job file":
        job.write_text(f"storage: {{endpoint_url: '{s3.endpoint_url}', key: {s3.access_key}, secret: {wrong}}}\n")
    else:
        job.write_text("{}\n")
        for name, value in dict(s3.env(), AWS_SECRET_ACCESS_KEY=wrong).items():
            monkeypatch.setenv(name, value)
    code = main(["run", "--no-progress", "--config", str(job), "--input", str(table), "--output",
                 "s3://latentmill/faults/denied"])
    err = capsys.readouterr().err
    assert code == EXIT_JOB_ERROR
    message = err[err.rindex("latentmill: "):]  # after botocore's INFO lines
    assert message.startswith("latentmill: Output location s3://latentmill/faults/denied is not writable: "
                              "Access denied"), err[-2000:]
    assert "storage.key/storage.secret in the job file" in message and "Traceback" not in message
    assert wrong not in err and s3.secret_key not in err
