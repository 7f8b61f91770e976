"""Row validation: every bad row becomes an error row that names the column and the fix."""

import json

import pytest

from latentmill import schema
from latentmill.config import GenerationDefaults, Limits
from latentmill.models.sd import StableDiffusion
from latentmill.models.wan import Wan
from latentmill.pipelines.validate import RowRules, derived_id, derived_seed, resolve_defaults, validate_batch
from tests.helpers import rows_table

IMAGE_DEFAULTS = {"num_inference_steps": 4, "guidance_scale": 5.0, "height": 64, "width": 64}


def image_family():
    """Family objects need only their component configs to validate rows."""
    family = StableDiffusion.__new__(StableDiffusion)
    family.index = {"_class_name": "StableDiffusionPipeline", "scheduler": ["diffusers", "PNDMScheduler"]}
    family.configs = {"vae": {"block_out_channels": [8, 8, 8, 8]}, "unet": {"in_channels": 4}}
    return family


def video_family():
    family = Wan.__new__(Wan)
    family.index = {"_class_name": "WanPipeline"}
    family.configs = {
        "vae": {"scale_factor_temporal": 4, "scale_factor_spatial": 8},
        "transformer": {"patch_size": [1, 2, 2], "in_channels": 16},
    }
    return family


def rules(family=None, limits=None, **defaults):
    family = family or image_family()
    model_defaults = dict(IMAGE_DEFAULTS, **({"num_frames": 9, "fps": 8.0} if family.is_video else {}))
    return RowRules(
        prompt_column="prompt",
        id_column="id",
        defaults=resolve_defaults(GenerationDefaults(**defaults), model_defaults, family.extra_parameters),
        job_seed=7,
        limits=limits or Limits(),
        family=family,
    )


def run(rows, row_rules=None):
    out = validate_batch(rows_table(rows), row_rules or rules())
    return [{name: out[name][i] for name in out} for i in range(len(rows))]


def test_valid_row_takes_model_defaults_and_derived_seed():
    [row] = run([{"prompt": "a red fox"}])
    assert row[schema.ERROR_STAGE] == ""
    assert (row[schema.HEIGHT], row[schema.WIDTH], row[schema.STEPS]) == (64, 64, 4)
    assert row[schema.ID] == derived_id("a red fox", {})
    assert row[schema.SEED] == derived_seed(7, row[schema.ID])
    assert json.loads(row[schema.INPUT_ROW]) == {"prompt": "a red fox"}


def test_null_override_means_default():
    rows = run([{"prompt": "a", "height": 128}, {"prompt": "b"}])
    assert [r[schema.HEIGHT] for r in rows] == [128, 64]


def test_derived_ids_are_stable_and_depend_on_content():
    first = run([{"prompt": "a"}, {"prompt": "b"}])
    again = run([{"prompt": "b"}, {"prompt": "a"}])
    assert first[0][schema.ID] == again[1][schema.ID]
    assert first[0][schema.ID] != first[1][schema.ID]
    with_seed = run([{"prompt": "a", "seed": 3}])
    assert with_seed[0][schema.ID] != first[0][schema.ID]


def test_per_row_overrides_win_over_job_defaults():
    [row] = run(
        [{"prompt": "p", "id": "x1", "seed": 42, "height": 128, "width": 32, "num_inference_steps": 9,
          "guidance_scale": 1.5, "negative_prompt": "blurry"}],
        rules(num_inference_steps=3),
    )
    assert row[schema.ERROR_STAGE] == ""
    assert (row[schema.ID], row[schema.SEED], row[schema.HEIGHT], row[schema.WIDTH]) == ("x1", 42, 128, 32)
    assert (row[schema.STEPS], row[schema.GUIDANCE], row[schema.NEGATIVE_PROMPT]) == (9, 1.5, "blurry")


def test_job_defaults_win_over_model_defaults():
    [row] = run([{"prompt": "p"}], rules(num_inference_steps=3, height=32))
    assert (row[schema.STEPS], row[schema.HEIGHT]) == (3, 32)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": None}, "is null"),
        ({"prompt": ""}, "is empty"),
        ({"prompt": "   \t"}, "is empty"),
        ({"prompt": "p", "height": 60}, "multiples of 8"),
        ({"prompt": "p", "height": 4096}, "exceeds limits.max_height"),
        ({"prompt": "p", "num_inference_steps": 0}, "num_inference_steps must be >= 1"),
        ({"prompt": "p", "num_inference_steps": 100000}, "limits.max_steps"),
        ({"prompt": "p", "guidance_scale": -1.0}, "guidance_scale must be >= 0"),
        ({"prompt": "p", "seed": -5}, "seed must be between"),
    ],
)
def test_invalid_rows_become_error_rows(row, message):
    [out] = run([row])
    assert out[schema.ERROR_STAGE] == schema.STAGE_VALIDATE
    assert out[schema.ERROR_TYPE] == "InvalidRow"
    assert message in out[schema.ERROR_MESSAGE]
    assert out[schema.ID]  # an error row still has an id to report


def test_wrong_override_types_are_named():
    [out] = run([{"prompt": "p", "height": "tall"}])
    assert "column 'height' must be a number, got 'tall' (str)" in out[schema.ERROR_MESSAGE]
    [out] = run([{"prompt": "p", "num_inference_steps": 2.5}])
    assert "must be a whole number" in out[schema.ERROR_MESSAGE]
    [out] = run([{"prompt": "p", "negative_prompt": 3}])
    assert "column 'negative_prompt' must be text" in out[schema.ERROR_MESSAGE]


def test_non_text_prompt_column():
    [out] = run([{"prompt": 12}])
    assert "must be text, got 12 (int)" in out[schema.ERROR_MESSAGE]


def test_good_rows_survive_bad_neighbours():
    rows = run([{"prompt": "ok"}, {"prompt": None}, {"prompt": "also ok", "height": 33}, {"prompt": "fine"}])
    assert [r[schema.ERROR_STAGE] for r in rows] == ["", "validate", "validate", ""]


def test_custom_prompt_column_and_limits():
    row_rules = RowRules(
        prompt_column="Prompt", id_column="id", defaults=rules().defaults, job_seed=0,
        limits=Limits(max_height=64, max_width=64), family=image_family(),
    )
    good, big = run([{"Prompt": "x"}, {"Prompt": "y", "height": 128}], row_rules)
    assert good[schema.PROMPT] == "x" and good[schema.ERROR_STAGE] == ""
    assert "max_height" in big[schema.ERROR_MESSAGE]


def test_video_frame_rule_comes_from_the_family():
    row_rules = rules(video_family())
    ok, bad = run([{"prompt": "v", "num_frames": 13}, {"prompt": "v", "num_frames": 12}], row_rules)
    assert ok[schema.ERROR_STAGE] == "" and ok[schema.NUM_FRAMES] == 13
    assert "4k+1" in bad[schema.ERROR_MESSAGE] and "9 or 13" in bad[schema.ERROR_MESSAGE]


def wan22_5b_family():
    family = video_family()
    family.index["expand_timesteps"] = True
    family.configs["vae"] = {"scale_factor_temporal": 4, "scale_factor_spatial": 16, "z_dim": 48}
    return family


def ltx_family():
    from latentmill.models.ltx import LTXVideo

    family = LTXVideo.__new__(LTXVideo)
    family.index = {"_class_name": "LTXPipeline"}
    family.configs = {"vae": {"spatio_temporal_scaling": [True, True, True, False], "patch_size": 4,
                              "patch_size_t": 1, "latent_channels": 128},
                      "transformer": {"patch_size": 1, "patch_size_t": 1}}
    return family


def cogvideox_family():
    from latentmill.models.cogvideox import CogVideoX

    family = CogVideoX.__new__(CogVideoX)
    family.index = {"_class_name": "CogVideoXPipeline"}
    family.configs = {"vae": {"block_out_channels": [128, 256, 256, 512], "temporal_compression_ratio": 4},
                      "transformer": {"patch_size": 2, "patch_size_t": 2, "in_channels": 16}}
    return family


def hunyuan_video15_family():
    from latentmill.models.hunyuan_video15 import HunyuanVideo15

    family = HunyuanVideo15.__new__(HunyuanVideo15)
    family.index = {"_class_name": "HunyuanVideo15Pipeline"}
    family.configs = {"vae": {"spatial_compression_ratio": 16, "temporal_compression_ratio": 4, "latent_channels": 32},
                      "transformer": {"patch_size": 1, "patch_size_t": 1}}
    return family


@pytest.mark.parametrize(("family", "frame_rule", "frame_fix", "size_multiple"), [
    (wan22_5b_family, "4k+1", "use 9 or 13", 32),
    (ltx_family, "8k+1", "use 9 or 17", 32),
    (cogvideox_family, "8k+1", "use 9 or 17", 16),
    (hunyuan_video15_family, "4k+1", "use 9 or 13", 16),
])
def test_video_family_rules_name_the_rule_and_a_valid_value(family, frame_rule, frame_fix, size_multiple):
    row_rules = rules(family())
    ok, frames, size = run([{"prompt": "v", "num_frames": 17, "height": 2 * size_multiple},
                            {"prompt": "v", "num_frames": 12},
                            {"prompt": "v", "width": size_multiple + 8}], row_rules)
    assert ok[schema.ERROR_STAGE] == "" and ok[schema.NUM_FRAMES] == 17
    assert f"num_frames 12 must be {frame_rule}" in frames[schema.ERROR_MESSAGE]
    assert frame_fix in frames[schema.ERROR_MESSAGE]
    assert f"round them to a multiple of {size_multiple}" in size[schema.ERROR_MESSAGE]


def test_image_rows_ignore_frame_columns():
    [row] = run([{"prompt": "p", "num_frames": 12}])
    assert row[schema.ERROR_STAGE] == "" and row[schema.NUM_FRAMES] == 1


def flux_family():
    from latentmill.models.flux import Flux

    family = Flux.__new__(Flux)
    family.index = {"_class_name": "FluxPipeline"}
    family.configs = {"vae": {"block_out_channels": [8, 8, 8, 8]}}
    return family


def flux_rules(**model_parameters):
    return RowRules(prompt_column="prompt", id_column="id", job_seed=7, limits=Limits(), family=flux_family(),
                    defaults=resolve_defaults(GenerationDefaults(model_parameters=model_parameters),
                                              IMAGE_DEFAULTS, flux_family().extra_parameters))


def test_family_parameters_take_job_defaults_and_per_row_overrides():
    ok, override = run([{"prompt": "a"}, {"prompt": "b", "true_cfg_scale": 3}], flux_rules(true_cfg_scale=2.0))
    [wrong] = run([{"prompt": "c", "true_cfg_scale": "x"}], flux_rules())
    assert (ok["true_cfg_scale"], ok["max_sequence_length"]) == (2.0, 512)
    assert override["true_cfg_scale"] == 3.0 and override[schema.ERROR_STAGE] == ""
    assert wrong[schema.ERROR_STAGE] == schema.STAGE_VALIDATE
    assert "column 'true_cfg_scale' must be a number" in wrong[schema.ERROR_MESSAGE]
    assert schema.manifest_columns(("true_cfg_scale",)).index("true_cfg_scale") == len(schema.REQUEST_COLUMNS)


def test_unknown_or_mistyped_model_parameters_stop_with_the_known_ones():
    from latentmill.pipelines.validate import DefaultsError

    with pytest.raises(DefaultsError, match="has true_cfg, which this model does not take .*max_sequence_length, true_cfg_scale"):
        flux_rules(true_cfg=2.0)
    with pytest.raises(DefaultsError, match="'max_sequence_length' must be a whole number"):
        flux_rules(max_sequence_length=1.5)
    with pytest.raises(DefaultsError, match="extra parameters: none"):
        resolve_defaults(GenerationDefaults(model_parameters={"true_cfg_scale": 2.0}), IMAGE_DEFAULTS, {})


def test_param_flags_become_model_parameters():
    from latentmill.config import load_config
    from latentmill.jobs.cli import build_parser, run_overrides

    args = build_parser().parse_args(["run", "-i", "t.parquet", "-o", "out", "--param", "true_cfg_scale=4",
                                      "--param", "max_sequence_length=256"])
    config = load_config(None, run_overrides(args))
    assert config.defaults.model_parameters == {"true_cfg_scale": 4, "max_sequence_length": 256}
    resolved = resolve_defaults(config.defaults, IMAGE_DEFAULTS, flux_family().extra_parameters)
    assert (resolved["true_cfg_scale"], resolved["max_sequence_length"]) == (4.0, 256)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--param", "no-equals-sign"])
