"""Do the pools fit the cluster (no Ray here): the up-front check, the local Ray's size, the pending
watch on a stand-in of Ray Data's executor, and how init_ray starts or joins Ray."""

from __future__ import annotations

import os
import socket
import time
from types import SimpleNamespace

import pytest

from latentmill.config import load_config
from latentmill.pipelines import job as job_module
from latentmill.pipelines import resources
from latentmill.pipelines.job import JobError
from latentmill.pipelines.resources import ClusterView, NodeType, check_cluster, pool_demands

HEAD = {"CPU": 2.0, "memory": 8e9, "object_store_memory": 2e9, "node:127.0.0.1": 1.0, "node:__internal_head__": 1.0}


def config(**sections):
    return load_config(None, {"input": {"uri": "in.parquet"}, "output": {"uri": "/tmp/out"}, **sections})


# ---- defect 1: the pools' minimum against the cluster, before anything starts --------------------------


def test_default_pools_do_not_fit_a_two_cpu_cluster():
    error, warning = check_cluster(pool_demands(config()), ClusterView(nodes=[HEAD]), 600)
    assert warning is None
    assert error is not None
    assert "the actor pools do not fit this Ray cluster (CPU 2 on 1 node)" in error
    assert "need [CPU 2.75]" in error
    assert "encode 1 x [CPU 0.25], denoise 1 x [CPU 1], decode 1 x [CPU 0.5]" in error
    assert "plus [CPU 1] for reading and validating the prompts" in error
    assert "Fix: lower the pools' requests (encode, denoise, decode: stages.<stage>.num_cpus) or their minimum " \
           "size (stages.<stage>.size), or add nodes with CPU" in error


def test_a_local_ray_too_small_for_the_pools_names_its_setting():
    error, _ = check_cluster(pool_demands(config()), ClusterView(nodes=[HEAD], local=True), 600)
    assert "or raise ray.local_num_cpus" in error


def test_default_pools_fit_four_cpus():
    node = dict(HEAD, CPU=4.0)
    assert check_cluster(pool_demands(config()), ClusterView(nodes=[node]), 600) == (None, None)


def test_a_gpu_pool_on_a_machine_without_a_gpu_is_refused_with_the_fix():
    demands = pool_demands(config(stages={"denoise": {"num_gpus": 1, "num_cpus": 1}}))
    error, _ = check_cluster(demands, ClusterView(nodes=[dict(HEAD, CPU=8.0)], local=True), 600)
    assert "the denoise pool asks for [CPU 1, GPU 1] per actor, but no node has enough GPU" in error
    assert "set stages.denoise.num_gpus: 0 to run it on the CPU" in error
    assert "ray.local_num_gpus" in error


def test_a_custom_resource_no_node_advertises_is_refused():
    demands = pool_demands(config(stages={"decode": {"resources": {"small_gpu": 0.5}, "num_cpus": 0.25}}))
    error, _ = check_cluster(demands, ClusterView(nodes=[dict(HEAD, CPU=8.0), {"CPU": 4.0, "GPU": 1.0}]), 600)
    assert "the decode pool asks for [CPU 0.25, small_gpu 0.5] per actor, but no node has enough small_gpu" in error
    assert "start nodes that advertise it (ray start --resources '{\"small_gpu\": N}')" in error
    assert "CPU 12, GPU 1 on 2 nodes: [CPU 8]; [CPU 4, GPU 1]" in error


def test_an_actor_must_fit_one_node_not_the_sum_of_two():
    demands = pool_demands(config(stages={"denoise": {"num_cpus": 3}}))
    error, _ = check_cluster(demands, ClusterView(nodes=[{"CPU": 2.0}, {"CPU": 2.0}]), 600)
    assert "the denoise pool asks for [CPU 3] per actor, but no node has enough CPU" in error


def test_node_types_an_autoscaler_publishes_count_and_unknown_ones_only_warn():
    job = config(stages={"denoise": {"num_gpus": 1, "num_cpus": 1, "resources": {"large_gpu": 1}, "size": [1, 32]}})
    head_only = [dict(HEAD, CPU=16.0)]
    large = NodeType("gpu_large", {"CPU": 96.0, "GPU": 8.0, "large_gpu": 8.0}, 4)
    assert check_cluster(pool_demands(job), ClusterView(nodes=head_only, node_types=[large]), 600) == (None, None)
    small = NodeType("gpu_small", {"CPU": 16.0, "GPU": 1.0, "small_gpu": 1.0}, 8)
    error, _ = check_cluster(pool_demands(job), ClusterView(nodes=head_only, node_types=[small]), 600)
    assert "no node has enough large_gpu" in error and "the autoscaler may add: gpu_small" in error
    error, warning = check_cluster(pool_demands(job), ClusterView(nodes=head_only, autoscaling_unknown=True), 600)
    assert error is None
    assert "the denoise pool asks for [CPU 1, GPU 1, large_gpu 1]" in warning
    assert "waiting at most ray.pending_timeout_s (600 s)" in warning


def test_the_local_ray_is_sized_so_the_pools_fit(monkeypatch):
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 2)
    assert resources.local_num_cpus(config()) == 4
    big = config(stages={"denoise": {"size": 4, "num_cpus": 1}})  # 4 + 0.25 + 0.5 + 1 for reading
    assert resources.local_num_cpus(big) == 6
    assert resources.local_num_cpus(config(ray={"local_num_cpus": 3})) == 3
    assert config().ray.pending_timeout_s == 600


# ---- defect 1: the pending watch, on a stand-in of Ray Data's executor -----------------------------------


class FakeOp:
    def __init__(self, name, running=0, pending=0, active=0, completed=False):
        self.name, self.running, self.pending, self.active, self.completed = name, running, pending, active, completed
        self.metrics = SimpleNamespace(num_outputs_taken=0, num_tasks_finished=0)

    def num_active_tasks(self):
        return self.active

    def has_completed(self):
        return self.completed

    def get_actor_info(self):
        return SimpleNamespace(running=self.running, restarting=0, pending=self.pending)


class FakeState:
    def total_enqueued_input_blocks(self):
        return 0

    def total_enqueued_output_blocks(self):
        return 0


def executor(*ops):
    return SimpleNamespace(_topology={op: FakeState() for op in ops})


WORKERS = {"encode": "TextEncodeWorker", "denoise": "DenoiseWorker", "decode": "DecodeWorker"}


@pytest.fixture
def watch(monkeypatch):
    monkeypatch.setattr(resources, "cluster_view", lambda local: ClusterView(nodes=[{"CPU": 4.0}]))
    fake_ray = SimpleNamespace(available_resources=lambda: {"CPU": 3.25})
    monkeypatch.setitem(__import__("sys").modules, "ray", fake_ray)
    demands = pool_demands(config(stages={"denoise": {"num_gpus": 1, "num_cpus": 1}}))
    return resources._Watch(demands, 10, WORKERS, local=False)


def test_a_pool_ray_cannot_place_stops_the_run_after_the_timeout(watch, monkeypatch):
    monkeypatch.setattr(resources, "unmet_demand", lambda: [{"CPU": 1.0, "GPU": 1.0}])
    ops = executor(FakeOp("MapBatches(TextEncodeWorker)", running=1),
                   FakeOp("MapBatches(DenoiseWorker)", pending=1),
                   FakeOp("MapBatches(DecodeWorker)", running=1))
    start = time.monotonic()
    watch.start(start)
    assert watch.check(ops, start + 9) is None
    message = watch.check(ops, start + 10.5)
    assert "the denoise pool has had no actor running for 10 s: Ray cannot place an actor that asks for " \
           "[CPU 1, GPU 1]" in message
    assert "The cluster has CPU 4 on 1 node; free now: CPU 3.25." in message
    assert "raise ray.pending_timeout_s (now 10 s)" in message
    with pytest.raises(resources.ResourcesPending):
        watch.next_check = 0
        watch.step(ops, start + 11)


def test_a_pool_that_is_loading_its_model_is_not_pending(watch, monkeypatch):
    monkeypatch.setattr(resources, "unmet_demand", lambda: [])  # placed: its shape is no unmet demand
    ops = executor(FakeOp("MapBatches(TextEncodeWorker)", running=1),
                   FakeOp("MapBatches(DenoiseWorker)", pending=1),
                   FakeOp("MapBatches(DecodeWorker)", running=1))
    start = time.monotonic()
    watch.start(start)
    assert watch.check(ops, start + 60) is None


def test_nothing_running_and_a_task_held_back_stops_the_run(watch, monkeypatch):
    monkeypatch.setattr(resources, "unmet_demand", lambda: [])
    ops = executor(FakeOp("Input"), FakeOp("ReadParquet->MapBatches(validate_batch)"),
                   FakeOp("MapBatches(TextEncodeWorker)", running=1),
                   FakeOp("MapBatches(DenoiseWorker)", running=1),
                   FakeOp("MapBatches(DecodeWorker)", running=1))
    start = time.monotonic()
    watch.start(start)
    watch.check(ops, start)
    assert watch.check(ops, start + 5) is None
    message = watch.check(ops, start + 11)
    assert "nothing has moved for 11 s and nothing is running: ReadParquet->MapBatches(validate_batch) waits " \
           "for resources" in message
    # A running batch (a long denoise step) is not a hang.
    busy = executor(FakeOp("ReadParquet->MapBatches(validate_batch)"),
                    FakeOp("MapBatches(DenoiseWorker)", running=1, active=1))
    watch.start(start)
    assert watch.check(busy, start + 100) is None


# ---- defect 2: a local run starts its own Ray; a bad address is a JobError ---------------------------------


class FakeRay:
    def __init__(self, error=None):
        self.calls, self.error = [], error

    def is_initialized(self):
        return False

    def init(self, **kwargs):
        self.calls.append(kwargs)
        if self.error:
            raise self.error


def test_a_local_run_starts_its_own_ray_even_when_a_cluster_is_running(monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(__import__("sys").modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(resources.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "environ", {name: value for name, value in os.environ.items()
                                        if name != "RAY_max_lineage_bytes"})
    job_module.init_ray(config())
    [call] = fake.calls
    assert call["address"] == "local"  # never the cluster named in /tmp/ray/ray_current_cluster
    assert call["num_cpus"] == 4
    assert os.environ["RAY_max_lineage_bytes"] == str(4 * 2**20)  # read by Ray as it starts


def test_the_lineage_cap_comes_from_the_config_unless_the_environment_sets_one(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ray", FakeRay())
    monkeypatch.setattr(os, "environ", {"RAY_max_lineage_bytes": "1000"})
    job_module.init_ray(config(ray={"max_lineage_mb": 8}))
    assert os.environ["RAY_max_lineage_bytes"] == "1000"
    assert job_module.ray_environment(config(ray={"max_lineage_mb": 8})) == {"RAY_max_lineage_bytes": str(8 * 2**20)}


def test_an_address_nothing_listens_at_is_a_job_error_in_seconds(monkeypatch):
    fake = FakeRay()
    monkeypatch.setitem(__import__("sys").modules, "ray", fake)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    started = time.monotonic()
    with pytest.raises(JobError) as info:
        job_module.init_ray(config(ray={"address": f"127.0.0.1:{port}"}))
    assert time.monotonic() - started < 15
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in str(info.value)
    assert "leave ray.address / --ray-address and RAY_ADDRESS unset to start Ray on this machine" in str(info.value)
    assert fake.calls == []
    with pytest.raises(JobError, match="is not HOST:PORT"):
        job_module.init_ray(config(ray={"address": "headnode"}))


def test_a_refused_connection_names_the_address_and_the_token_settings(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = "127.0.0.1:%d" % server.getsockname()[1]
        fake = FakeRay(ConnectionError(f"Failed to connect to Ray cluster at {address}"))
        monkeypatch.setitem(__import__("sys").modules, "ray", SimpleNamespace(
            is_initialized=fake.is_initialized, init=fake.init, __version__="2.60.0"))
        monkeypatch.setenv("RAY_AUTH_TOKEN", "secret-token")
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        with pytest.raises(JobError) as info:
            job_module.init_ray(config(ray={"address": address}))
    text = str(info.value)
    assert f"could not connect to the Ray cluster at {address}: ConnectionError: Failed to connect" in text
    assert "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN" in text
    assert "RAY_AUTH_TOKEN is set but RAY_AUTH_MODE is not `token`, so Ray does not send it" in text
    assert "secret-token" not in text
    # Ray exits the process (SystemExit) when a GCS never answers: still a JobError.
    fake.error = SystemExit(15)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = "127.0.0.1:%d" % server.getsockname()[1]
        with pytest.raises(JobError, match="the cluster's GCS did not answer"):
            job_module.init_ray(config(ray={"address": address}))
