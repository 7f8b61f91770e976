"""Dataset synthesis: N samples from one encoding, kept input columns, and the shard layouts read back
with the readers users use (webdataset, Ray Data, Hugging Face datasets), exactly once across a driver
killed mid-run on a real S3 server.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import tarfile
import time

import pyarrow.parquet as pq
import pytest

from latentmill import schema
from latentmill.io import storage
from latentmill.jobs.cli import EXIT_OK, main
from latentmill.jobs.inspection import status
from latentmill.pipelines.job import JobError
from tests.helpers import write_table
from tests.integration.exactly_once import cli_command, faults, run, session_env

pytestmark = pytest.mark.slow

ROWS, SAMPLES, SHARD_SIZE = 12, 4, 10
LICENSES = ("cc0", "cc-by")


def prompt_table(folder, rows: int = ROWS):
    """`rows` rows, the first two with one prompt (equal prompts in a batch are encoded once)."""
    ids = [f"r{i:02d}" for i in range(rows)]
    prompts = [f"prompt {i}" for i in ids]
    prompts[1] = prompts[0]
    table = write_table(folder / "prompts.parquet", [{"id": i, "prompt": p, "license": LICENSES[n % 2]}
                                                     for n, (i, p) in enumerate(zip(ids, prompts))])
    return table, {f"{i}-s{k}" for i in ids for k in range(SAMPLES)}


def read_shards(fs, root: str) -> tuple[list[dict], dict[str, set[str]], list[str]]:
    """Every committed shard's sidecar rows, the members of each key across all tars, and every file
    under shards/ (so a test can see leftovers)."""
    folder = storage.join(root, "shards")
    files = sorted(p for p in fs.find(folder) if p != folder)
    rows, members = [], {}
    for path in files:
        name = path.rsplit("/", 1)[-1]
        if name.endswith(".parquet"):
            table = pq.read_table(io.BytesIO(fs.cat_file(path)))
            rows += table.drop_columns([c for c in ("image",) if c in table.column_names]).to_pylist()
        elif name.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(fs.cat_file(path))) as tar:
                for member in tar.getnames():
                    key, suffix = member.split(".", 1)
                    assert suffix not in members.setdefault(key, set()), f"{member} twice"
                    members[key].add(suffix)
    return rows, members, files


def check_webdataset(fs, root: str, expected: set[str]) -> list[dict]:
    """One committed sample per expected id, each with png + json + txt in exactly one tar; every tar has
    its sidecar and stats; nothing staged or uncommitted is left."""
    rows, members, files = read_shards(fs, root)
    ids = [row[schema.ID] for row in rows]
    assert len(ids) == len(set(ids)) and set(ids) == expected, (len(ids), sorted(set(ids) ^ expected)[:5])
    assert set(members) == {row[schema.SHARD_KEY] for row in rows}
    assert all(suffixes == {"png", "json", "txt"} for suffixes in members.values())
    tars = [f for f in files if f.endswith(".tar")]
    assert {f[:-4] + ".parquet" for f in tars} | {f[:-4] + "_stats.json" for f in tars} <= set(files)
    assert len(files) == 3 * len(tars), files
    staging = storage.join(root, "staging")
    assert not [p for p in (fs.find(staging) if fs.exists(staging) else []) if p != staging], "staged media left"
    return rows


@pytest.mark.parametrize("layout", ["webdataset", "parquet"])
def test_a_sharded_dataset_reads_back_with_the_readers_users_use(ray_local, tmp_path, layout):
    import ray.data

    table, expected = prompt_table(tmp_path)
    out = tmp_path / "out"
    summary = run(str(table), str(out), input={"samples_per_prompt": SAMPLES, "keep_columns": ["license"]},
                  output={"layout": layout, "shard_size": SHARD_SIZE})
    assert (summary.rows_read, summary.requests, summary.outputs_written) == (ROWS, 48, ROWS * SAMPLES)
    assert summary.prompts_encoded == ROWS - 1  # one encoding per distinct prompt, for all its samples
    shards = sorted((out / "shards").iterdir())
    if layout == "webdataset":
        import webdataset

        rows = check_webdataset(*storage.resolve(str(out)), expected)
        tars = [str(p) for p in shards if p.suffix == ".tar"]
        assert len(tars) == 5  # 4 full shards of 10 and the rest; a shard never mixes in a half-written one
        samples = list(webdataset.WebDataset(tars, shardshuffle=False).decode("pil"))
        assert sorted(s["__key__"] for s in samples) == sorted(row[schema.SHARD_KEY] for row in rows)
        for sample in samples:
            assert sample["png"].size == (sample["json"][schema.WIDTH], sample["json"][schema.HEIGHT])
            assert sample["txt"] == sample["json"][schema.PROMPT] and sample["json"]["license"] in LICENSES
        assert ray.data.read_webdataset(tars).count() == 48
        assert len({sample["json"][schema.SEED] for sample in samples}) == 48  # every sample has its own seed
    else:
        import datasets

        files = [str(p) for p in shards if p.suffix == ".parquet"]
        assert len(files) == 5 and len([p for p in shards if p.name.endswith("_stats.json")]) == 5
        dataset = datasets.load_dataset("parquet", data_files=files, split="train")
        assert isinstance(dataset.features["image"], datasets.Image) and len(dataset) == 48
        assert set(dataset["id"]) == expected and set(dataset["license"]) == set(LICENSES)
        assert dataset[0]["image"].size == (dataset[0]["width"], dataset[0]["height"])
        assert len(set(dataset[schema.SEED])) == 48  # every sample has its own seed
    first = json.loads((out / "shards" / "00000_stats.json").read_text())
    assert (first["samples"], first["layout"]) == (SHARD_SIZE, layout)
    assert status(str(out)).done == 48  # `latentmill status` counts committed shards
    stats = json.loads((out / "stats.json").read_text())
    assert (stats["samples"], stats["failed"], stats["prompts_encoded"], stats["layout"]) == (48, 0, ROWS - 1, layout)
    assert stats["bytes_written"] == summary.bytes_written > 0 and stats["command"]
    assert set(stats["seconds_by_stage"]) == {"encode", "denoise", "decode"}
    assert all(seconds > 0 for seconds in stats["seconds_by_stage"].values())


def test_a_kept_column_that_is_missing_or_taken_is_refused_by_name(model_cache, tmp_path):
    """Refused before Ray starts, naming the column."""
    table, _ = prompt_table(tmp_path, rows=2)
    for kept, words in ((["licence"], "'licence', which no file"), (["seed"], "'seed', which is also a manifest")):
        with pytest.raises(JobError, match=words):
            run(str(table), str(tmp_path / "out"), input={"keep_columns": kept})


KILLED_ROWS = 8  # 32 samples: 3 full shards and the rest


def test_a_driver_killed_mid_run_leaves_no_duplicate_and_the_rerun_completes(ray_local, s3, tmp_path, capsys):
    """SIGKILL the driver once a shard is committed; the same command then removes the uncommitted shard
    and the staged media, and finishes with every sample in exactly one committed shard.

    On S3 only: the resume code lists and deletes through the same fsspec calls on local disk, where a
    local write's temporary files are the one difference (tests/unit/test_output_stores.py covers those),
    and the sharded layouts on local disk are written and read back by the test above."""
    table, expected = prompt_table(tmp_path, rows=KILLED_ROWS)
    job = tmp_path / "job.yaml"
    job.write_text("stages:\n" + "".join(f"  {s}: {{batch_size: 2, num_cpus: 0.5, torch_threads: 1}}\n"
                                         for s in ("encode", "denoise", "decode")))
    uri, options = f"s3://latentmill/runs/killed-{tmp_path.name}", s3.storage_options()
    job.write_text(job.read_text() + f"storage: {{endpoint_url: '{s3.endpoint_url}', key: '{s3.access_key}', "
                   f"secret: '{s3.secret_key}'}}\n")
    fs, root = storage.resolve(uri, options)
    command = cli_command(job, "--input", str(table), "--output", uri, "--samples-per-prompt", str(SAMPLES),
                          "--layout", "webdataset", "--shard-size", str(SHARD_SIZE))
    # (each denoise batch of 2 sleeps 0.5 s: 11 batches still to do when the first shard commits)
    driver = subprocess.Popen(command, env=session_env(LATENTMILL_FAULTS="denoise:sleep:0.5"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 400
    while not fs.exists(storage.join(root, "shards", "00000.parquet")):
        assert driver.poll() is None, f"the job ended before it could be killed:\n{driver.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no committed shard after 400 s"
        time.sleep(0.1)
        fs.invalidate_cache()
    driver.send_signal(signal.SIGKILL)
    driver.communicate(timeout=60)
    time.sleep(2)  # the killed job's actors finish dying
    fs.invalidate_cache()
    committed, _, _ = read_shards(fs, root)
    assert SHARD_SIZE <= len(committed) < len(expected)

    # The same command again, in this process on the same Ray (the same `main` the killed driver ran).
    assert main(command[3:]) == EXIT_OK, capsys.readouterr().err[-3000:]
    fs.invalidate_cache()
    rows = check_webdataset(fs, root, expected)
    assert all(row[schema.OUTPUT_URI].startswith(uri + "/shards/") for row in rows)
    summary = json.loads(fs.cat_file(storage.join(root, "summary.json")))
    assert summary["already_done"] == len(committed)
    assert summary["outputs_written"] == len(expected) - len(committed)


def test_the_quality_gate_generates_a_rejected_sample_again_with_the_next_seed(ray_local, tmp_path):
    """NaN latents for one row and a blank image for another, on their first attempt: each is generated again
    with a new seed (`attempt` 1). With an embedding cache, the new attempt takes its prompt's embeddings from
    it: no text encoding. (With no attempt left a rejected sample is an error row: tests/integration/
    test_faults.py's row faults.)"""
    from latentmill.pipelines.validate import derived_seed

    ids = [f"q-{i:02d}" for i in range(8)]
    table = write_table(tmp_path / "prompts.parquet", [{"id": i, "prompt": f"prompt {i}"} for i in ids])
    with faults("denoise:nan:q-03;decode:blank:q-05"):
        summary = run(str(table), str(tmp_path / "out"), cache={"embeddings": str(tmp_path / "embeddings")},
                      quality={"reject_nonfinite": True, "reject_blank": True, "max_attempts": 3})
    manifest = {row[schema.ID]: row for row in pq.read_table(tmp_path / "out" / "manifest").to_pylist()}
    rejected = {"q-03", "q-05"}
    assert (summary.rows_read, summary.outputs_written, summary.rows_failed) == (8, 8, 0) and set(manifest) == set(ids)
    for row_id, row in manifest.items():
        first_seed = derived_seed(0, row_id)
        expected = (1, derived_seed(first_seed, row_id)) if row_id in rejected else (0, first_seed)
        assert (row[schema.ATTEMPT], row[schema.SEED]) == expected, row_id
        assert row[schema.EMBEDDINGS_CACHED] == (row_id in rejected), row_id
