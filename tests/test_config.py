"""Configuration: params.yaml and the demo overlay load; every bad kind is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from dropmae.config import ConfigError, config_from_dict, load_config, parse_override, resolve_run

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_is_the_paper_recipe():
    config = load_config(REPO / "params.yaml")
    assert config.model.encoder == "base" and config.model.img_size == 224 and config.model.patch_size == 16
    assert (config.model.decoder_dim, config.model.decoder_depth, config.model.decoder_heads) == (512, 8, 16)
    p = config.pretrain
    assert p.mask_ratio == 0.75 and p.asad_p == 0.1 and p.frame_gap == 50 and p.blr == 1.5e-4
    assert p.weight_decay == 0.05 and p.warmup_epochs == 40 and p.crop_scale == [0.2, 1.0]
    assert p.methods == ["twinmae", "dropmae"] and p.epochs == [400, 800, 1600]


def test_demo_overlay_and_set_overrides():
    config = load_config([REPO / "params.yaml", REPO / "config" / "demo.yaml"], ["pretrain.epochs=[3]"])
    assert config.model.encoder == "micro"
    assert config.pretrain.epochs == [3]
    assert config.pretrain.mask_ratio == 0.75  # untouched keys keep the recipe
    assert "demo" in config.data.sources


@pytest.mark.parametrize(
    "values, key",
    [
        ({"pretrain": {"epochz": [1]}}, "pretrain.epochz"),
        ({"modle": {}}, "modle"),
        ({"data": {"extraction": {"shortside": 3}}}, "data.extraction.shortside"),
        ({"pretrain": {"epochs": 400}}, "pretrain.epochs"),
        ({"pretrain": {"epochs": [400, "800"]}}, "pretrain.epochs[1]"),
        ({"pretrain": {"batch_size": 64.5}}, "pretrain.batch_size"),
        ({"pretrain": {"norm_pix_loss": "yes"}}, "pretrain.norm_pix_loss"),
        ({"model": {"img_size": "224"}}, "model.img_size"),
    ],
)
def test_unknown_keys_and_wrong_types_are_named(values, key):
    with pytest.raises(ConfigError) as error:
        config_from_dict(values)
    assert key in str(error.value)


@pytest.mark.parametrize(
    "values, key",
    [
        ({"pretrain": {"epochs": [0]}}, "pretrain.epochs"),
        ({"pretrain": {"epochs": [400, -1]}}, "pretrain.epochs"),
        ({"pretrain": {"epochs": []}}, "pretrain.epochs"),
        ({"pretrain": {"asad_p": 1.0}}, "pretrain.asad_p"),
        ({"pretrain": {"asad_p": -0.1}}, "pretrain.asad_p"),
        ({"pretrain": {"mask_ratio": 1.0}}, "pretrain.mask_ratio"),
        ({"pretrain": {"mask_ratio": 0.0}}, "pretrain.mask_ratio"),
        ({"pretrain": {"methods": ["mae"]}}, "pretrain.methods"),
        ({"pretrain": {"masking": "tube"}}, "pretrain.masking"),
        ({"pretrain": {"frame_gap": 1}}, "pretrain.frame_gap"),
        ({"pretrain": {"crop_scale": [0.5, 0.2]}}, "pretrain.crop_scale"),
        ({"pretrain": {"color_jitter_p": 1.5}}, "pretrain.color_jitter_p"),
        ({"pretrain": {"grayscale_p": -0.2}}, "pretrain.grayscale_p"),
        ({"pretrain": {"input": "packed", "decode_on_device": True, "grayscale_p": 0.2},
          "data": {"extraction": {"pack": True}}}, "pretrain.decode_on_device"),
        ({"pretrain": {"precision": "fp8"}}, "pretrain.precision"),
        ({"model": {"encoder": "huge"}}, "model.encoder"),
        ({"model": {"img_size": 100}}, "model.img_size"),
        ({"model": {"decoder_heads": 7}}, "model.decoder_heads"),
        ({"data": {"extraction": {"jpeg_quality": 0}}}, "data.extraction.jpeg_quality"),
        ({"data": {"extraction": {"val_fraction": 1.0}}}, "data.extraction.val_fraction"),
    ],
)
def test_out_of_range_values_are_named(values, key):
    with pytest.raises(ConfigError) as error:
        config_from_dict(values)
    assert key in str(error.value)


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("pretrain: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listing)
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("pretrain.epochs")
    assert parse_override("pretrain.asad_p=0.2") == {"pretrain": {"asad_p": 0.2}}


def test_resolve_run_picks_one_cell():
    config = config_from_dict({})
    with pytest.raises(ConfigError, match="--method"):
        resolve_run(config, None, 400)
    with pytest.raises(ConfigError, match="--epochs"):
        resolve_run(config, "dropmae", None)
    run = resolve_run(config, "twinmae", 800)
    assert run.drop_probability(config) == 0.0
    assert resolve_run(config, "dropmae", 800).drop_probability(config) == 0.1
    with pytest.raises(ConfigError, match="data.sources"):
        resolve_run(config, "dropmae", 800, source="k999")


def test_extraction_section_matches_the_extractor_settings():
    """data.extraction is passed to the extractor key for key; the two must not drift."""
    import dataclasses

    from dropmae.config import ExtractionConfig
    from dropmae.data.extract import ExtractionSettings

    assert {f.name for f in dataclasses.fields(ExtractionConfig)} == {f.name for f in dataclasses.fields(ExtractionSettings)}


def test_segmentation_presets_merge_under_written_keys():
    paper = load_config(REPO / "params.yaml").segmentation
    assert paper.preset == "davis_youtube" and paper.train["davis17"].weight == 5.0 and paper.image_size == 384
    assert paper.probe.topk == 5 and paper.probe.frame_short_side == 480
    demo = load_config([REPO / "params.yaml", REPO / "config" / "demo.yaml"],
                       ["segmentation.probe.topk=3", "segmentation.epochs=7"]).segmentation
    assert list(demo.benchmarks) == ["demo", "demo_unseen"]  # the overlay replaced the paper's benchmarks whole
    assert demo.image_size == 64 and demo.epochs == 7  # preset value, then a written key over it
    # a written probe key keeps the preset's other probe keys
    assert demo.probe.topk == 3 and demo.probe.neighbourhood == 4 and demo.probe.frame_short_side is None


def test_config_reads_plain_data_only():
    """dropmae.config validates against the presets and the model specs without importing torch (or a task)."""
    import subprocess
    import sys

    probe = "import sys, dropmae.config; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('dropmae.')))"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == str(["dropmae.config", "dropmae.config.cell", "dropmae.config.loading", "dropmae.config.schema",
                          "dropmae.config.sections", "dropmae.config.validation", "dropmae.models", "dropmae.models.specs",
                          "dropmae.presets"])

    from dropmae.models import dropmae, encoder, specs

    assert encoder.ENCODER_SPECS is specs.ENCODER_SPECS and dropmae.MASKING_MODES is specs.MASKING_MODES


@pytest.mark.parametrize(
    "segmentation, key",
    [
        ({"preset": "stcn"}, "segmentation.preset"),
        ({"benchmarks": {"d": {"format": "davis2018", "root": "x"}}}, "segmentation.benchmarks.d.format"),
        ({"evaluate": {"nowhere": {"split": "val"}}}, "segmentation.evaluate.nowhere"),
        ({"image_size": 100}, "segmentation.image_size"),
        ({"bootstrap_start_epoch": 10, "bootstrap_end_epoch": 5}, "segmentation.bootstrap_end_epoch"),
        ({"crop_scale": [0.5, 1.5]}, "segmentation.crop_scale"),
        ({"probe": {"topk": 0}}, "segmentation.probe.topk"),
        ({"probe": {"radius": 3}}, "segmentation.probe.radius"),
    ],
)
def test_bad_segmentation_values_are_named(segmentation, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        config_from_dict({"segmentation": segmentation})
