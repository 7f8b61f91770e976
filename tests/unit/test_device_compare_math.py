"""The equal-budget compare's arithmetic on fixed inputs (pure: no Ray)."""

from __future__ import annotations

import pytest

from latentmill.bench import arithmetic as ar


def test_bound_is_devices_over_the_stages_device_seconds_per_row():
    # SDXL-like: 0.001 s text, 0.3 s denoise, 0.03 s VAE per row; 8 devices.
    assert ar.bound_rows_per_s(8, {"encode": 0.001, "denoise": 0.3, "decode": 0.03}) == pytest.approx(8 / 0.331)
    with pytest.raises(ValueError):
        ar.bound_rows_per_s(8, {"encode": 0.0, "denoise": 0.0, "decode": 0.0})


def test_pools_rate_is_the_slowest_stage():
    seconds = {"encode": 0.001, "denoise": 0.3, "decode": 0.03}
    # 7 whole denoiser devices, 1 device split 0.125 / 0.875: the denoisers bound it at 7 / 0.3 rows/s,
    # 0.962 of the 8-device bound (the quantisation whole denoiser devices cost).
    rate = ar.pools_rows_per_s({"encode": 0.125, "denoise": 7.0, "decode": 0.875}, seconds)
    assert rate == pytest.approx(7 / 0.3)
    assert rate / ar.bound_rows_per_s(8, seconds) == pytest.approx(7 * 0.331 / (8 * 0.3))
    assert ar.pools_rows_per_s({"encode": 1, "denoise": 4, "decode": 1}, {"encode": 0, "denoise": 1, "decode": 0.5}) == 2


def test_prices_parse_in_order_and_refuse_nonsense():
    assert list(ar.parse_prices("h100=2.5, l4=0.8").items()) == [("h100", 2.5), ("l4", 0.8)]
    for bad in ("h100", "h100=abc", "=2", "h100=-1", ""):
        with pytest.raises(ValueError):
            ar.parse_prices(bad)


def test_cost_per_1000_outputs():
    prices = {"h100": 2.5, "l4": 0.8}
    # The peer: 8 H100s at 20 rows/s -> $20/h -> 72,000 rows/h -> $0.2778 per 1,000.
    assert ar.cost_per_1000(20.0, {"h100": 8}, prices) == pytest.approx(20 / 72)
    # The split: 7 H100s + 1 L4 at 19 rows/s.
    assert ar.cost_per_1000(19.0, {"h100": 7, "l4": 1}, prices) == pytest.approx((7 * 2.5 + 0.8) / 3.6 / 19)
    assert ar.cost_per_1000(None, {"h100": 8}, prices) is None
    assert ar.cost_per_1000(0.0, {"h100": 8}, prices) is None


def test_whole_denoisers_fill_the_budget():
    from latentmill.planning import Budget, StageCost, recommend_device_pools

    # SDXL-like shares 0.1 : 91 : 9 (device seconds per row at batch 4), 0.2 s of host work per decoded row.
    costs = {"encode": StageCost(0.0, 0.0012), "denoise": StageCost(0.0, 1.2), "decode": StageCost(0.0, 0.119)}
    batches = {"encode": 4, "denoise": 4, "decode": 4}
    plan = recommend_device_pools(costs, batches, Budget(devices=8, kind="gpu"), {"decode": 0.2})
    pools = {stage: (pool.size, pool.device_share) for stage, pool in plan.pools.items()}
    # 7 whole denoisers; the eighth device split: encoders 1/8, decoders 7 x 1/8 (their media encoding
    # holds only an eighth of a device each).
    assert pools == {"encode": (1, 0.125), "denoise": (7, 1.0), "decode": (7, 0.125)}
    assert plan.devices_used == pytest.approx(8.0) and plan.bottleneck == "denoise"
    assert plan.pools["decode"].row_seconds == pytest.approx(0.119 + 0.125 * 0.2)
    with pytest.raises(Exception, match="whole denoiser"):
        recommend_device_pools(costs, batches, Budget(devices=1.1, kind="gpu"))


def test_shares_pack_whole_devices():
    from latentmill.planning import Budget, StageCost, recommend_device_pools
    from latentmill.planning.optimise import packable_shares

    assert packable_shares(0.125) == [1.0, 0.5, 0.25, 0.125]
    # LCM-like: the VAE costs more than the denoiser. Two decoders of 0.625 would need two devices (Ray
    # places a fractional actor on one device), so every share is 1, 1/2, 1/4 or 1/8.
    costs = {"encode": StageCost(0.0, 0.004), "denoise": StageCost(0.0, 1.2), "decode": StageCost(0.0, 1.47)}
    batches = {"encode": 8, "denoise": 8, "decode": 8}
    for devices in (8, 16):
        plan = recommend_device_pools(costs, batches, Budget(devices=devices, kind="gpu"), {"decode": 0.27})
        assert all(pool.device_share in packable_shares(0.125) for pool in plan.pools.values())
        assert plan.devices_used <= devices


def test_denoisers_that_may_share_a_device_leave_its_rest_to_the_vae():
    from latentmill.planning import Budget, StageCost, denoiser_devices, recommend_device_pools
    from latentmill.planning.optimise import fits_devices

    # LCM-like (VAE 55%): whole denoisers quantise badly, 3 of 8 devices where 3.6 would be ideal.
    costs = {"encode": StageCost(0.0, 0.004), "denoise": StageCost(0.0, 1.2), "decode": StageCost(0.0, 1.47)}
    batches = {"encode": 8, "denoise": 8, "decode": 8}
    whole = recommend_device_pools(costs, batches, Budget(devices=8, kind="gpu"), {"decode": 0.27})
    shared = recommend_device_pools(costs, batches, Budget(devices=8, kind="gpu", whole_denoise_devices=False),
                                    {"decode": 0.27})
    assert (whole.pools["denoise"].size, whole.pools["denoise"].device_share) == (3, 1.0)
    pools = {stage: (pool.size, pool.device_share) for stage, pool in shared.pools.items()}
    assert pools == {"encode": (1, 0.125), "denoise": (6, 0.5), "decode": (9, 0.5)}  # 3 + 4.5 devices
    assert shared.throughput_rows_s > 1.05 * whole.throughput_rows_s
    assert fits_devices(pools.values(), shared.budget)
    assert denoiser_devices(shared) == 3  # two denoisers to a device: three devices rented for them
    # SDXL-like (VAE 9%): sharing gains nothing, so the denoisers keep whole devices.
    sdxl = {"encode": StageCost(0.0, 0.0012), "denoise": StageCost(0.0, 1.2), "decode": StageCost(0.0, 0.119)}
    plan = recommend_device_pools(sdxl, batches, Budget(devices=8, kind="gpu", whole_denoise_devices=False),
                                  {"decode": 0.2})
    assert (plan.pools["denoise"].size, plan.pools["denoise"].device_share) == (7, 1.0)
    assert denoiser_devices(plan) == 7
