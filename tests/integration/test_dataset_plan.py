"""The Ray Data plan latentmill builds: the operators a user's job pays for before the first row."""

from __future__ import annotations

import pytest

from latentmill.config import load_config
from latentmill.pipelines.job import prepare
from latentmill.pipelines.plan import build_dataset

pytestmark = pytest.mark.slow


def _operators(dag) -> list:
    ops, stack = [], [dag]
    while stack:
        op = stack.pop()
        ops.append(op)
        stack.extend(op.input_dependencies)
    return list(reversed(ops))


def test_read_and_validation_start_no_extra_worker_pools(ray_local, tmp_path):
    import ray.data

    config = load_config(None, {"input": {"uri": "examples/prompts.parquet"},
                                "output": {"uri": str(tmp_path / "out")}, "model": {"path": "builtin:tiny-image"}})
    options, table, model, _, rules = prepare(config)
    context = ray.data.DataContext.get_current()
    before = context.use_datasource_v2
    dataset = build_dataset(config, table, rules, model, options)
    assert context.use_datasource_v2 == before  # the user's Ray Data settings are left as they were

    operators = _operators(dataset._logical_plan.dag)
    names = [op.name for op in operators]
    # latentmill's own read of the checked files (Ray's newer Parquet read starts a pool of 32
    # footer-reader actors per read; the classic one samples a file on the driver).
    assert names[:2] == ["ReadParquet", "MapBatches(validate_batch)"], names
    validate = operators[1]
    # Fractional CPUs would let dozens of validation tasks (each a new worker process) run at once.
    assert validate.ray_remote_args.get("num_cpus", 1) >= 1
    # A read task's rows reach validation as one block when the two fuse: validation takes them in
    # bounded batches, so its memory does not grow with the share of the table a read task reads.
    assert validate.batch_size is not None and validate.batch_size <= 4_096, validate.batch_size
    assert [n for n in names if "Worker" in n] == [
        "MapBatches(TextEncodeWorker)", "MapBatches(DenoiseWorker)", "MapBatches(DecodeWorker)"]
