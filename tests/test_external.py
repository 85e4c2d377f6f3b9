"""External pretrained encoders: the authors' DropMAE snapshots, MAE snapshots and timm ViTs, read
weights-only and mapped onto our encoder (key names and shapes as the authors' public model
definition and timm's ViT have them; the files are written here with torch.save / safetensors)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from dropmae.models.dropmae import DropMAE
from dropmae.models.encoder import resample_position_table
from dropmae.models.external import ExternalCheckpointError, detect_format, load_external_encoder
from dropmae.segmentation.model import dropseg_from_checkpoint
from dropmae.segmentation.probe import frame_encoder_from_checkpoint
from dropmae.tracking.model import droptrack_from_checkpoint

DECODER_DIM = 32


def micro_dropmae(seed: int = 0) -> DropMAE:
    torch.manual_seed(seed)
    model = DropMAE(img_size=32, patch_size=8, encoder="micro", decoder_embed_dim=DECODER_DIM, decoder_depth=1,
                    decoder_num_heads=2)
    with torch.no_grad():  # frame embeddings that differ from each other, so a swap would show
        model.frame_embed.normal_(std=0.5)
    return model.eval()


def authors_layout(model: DropMAE) -> dict[str, torch.Tensor]:
    """``model``'s weights under the authors' DropMAE names: a class-token slot in both position
    tables, temporal_pos_embed_x / _z [1, 1, D] (x: first frame), decoder_temporal_pos_embed_x / _z."""
    ours = model.state_dict()
    dim = model.frame_embed.shape[1]
    state = {key: value.clone() for key, value in ours.items()
             if key not in ("pos_embed", "frame_embed", "decoder_pos_embed", "decoder_frame_embed")}
    state["cls_token"] = torch.randn(1, 1, dim)
    state["pos_embed"] = torch.cat([torch.zeros(1, 1, dim), ours["pos_embed"]], dim=1)
    state["decoder_pos_embed"] = torch.cat([torch.zeros(1, 1, DECODER_DIM), ours["decoder_pos_embed"]], dim=1)
    state["temporal_pos_embed_x"] = ours["frame_embed"][0].reshape(1, 1, dim).clone()
    state["temporal_pos_embed_z"] = ours["frame_embed"][1].reshape(1, 1, dim).clone()
    state["decoder_temporal_pos_embed_x"] = ours["decoder_frame_embed"][0].reshape(1, 1, DECODER_DIM).clone()
    state["decoder_temporal_pos_embed_z"] = ours["decoder_frame_embed"][1].reshape(1, 1, DECODER_DIM).clone()
    return state


def save_authors_snapshot(model: DropMAE, path: Path) -> Path:
    """A training snapshot as MAE-style code saves it: model, optimizer, epoch, scaler and the argparse args."""
    args = argparse.Namespace(model="mae_vit_micro_patch8", input_size=32, mask_ratio=0.75, norm_pix_loss=True,
                              batch_size=64, epochs=1600, blr=1.5e-4, data_path="/datasets/k400", P=0.1)
    torch.save({"model": authors_layout(model), "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]},
                "epoch": 1599, "scaler": {"scale": 65536.0}, "args": args}, path)
    return path


def encode_first_frame(model_state: dict, frames: torch.Tensor, model: DropMAE) -> torch.Tensor:
    """Our encoder on single frames as the first frame of a pair: tokens after the final norm."""
    model.load_state_dict(model_state, strict=False)
    with torch.no_grad():
        tokens = model.patch_embed(frames) + model.pos_embed + model.frame_embed[0]
        for block in model.blocks:
            tokens = block(tokens)
        return model.norm(tokens)


def test_authors_snapshot_with_args_namespace_loads_weights_only(tmp_path):
    original = micro_dropmae()
    path = save_authors_snapshot(original, tmp_path / "dropmae_k700_800ep.pth")
    with pytest.raises(Exception, match="weights_only|Unsupported global"):  # what a plain weights-only load says
        torch.load(path, weights_only=True)
    checkpoint, report = load_external_encoder(path)
    assert report.format == "mae_snapshot" and (report.encoder, report.patch_size, report.img_size) == ("micro", 8, 32)
    assert report.missing == [] and report.unexpected == []
    assert "cls_token" in report.dropped and "decoder_temporal_pos_embed_x" in report.dropped
    assert any("class-token slot" in line for line in report.conversions)
    weights = checkpoint["model"]
    assert torch.equal(weights["frame_embed"], original.frame_embed.detach())  # x -> row 0, z -> row 1
    assert torch.equal(weights["pos_embed"], original.pos_embed)
    assert not any(key.startswith("decoder") for key in weights)
    # The same encoder output on a frame as the model the snapshot was made from.
    frames = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    fresh = micro_dropmae(seed=5)
    expected = encode_first_frame(original.state_dict(), frames, micro_dropmae())
    assert torch.allclose(encode_first_frame(weights, frames, fresh), expected, atol=1e-6)


def test_authors_snapshot_fills_tracker_segmenter_and_probe(tmp_path):
    original = micro_dropmae()
    checkpoint, _ = load_external_encoder(save_authors_snapshot(original, tmp_path / "snapshot.pth"))
    tracker, track_report = droptrack_from_checkpoint(checkpoint, template_size=16, search_size=48, ce_locations=(1,),
                                                      head_channels=8)
    assert track_report.missing == [] and track_report.unexpected == []
    assert torch.equal(tracker.frame_embed.detach(), original.frame_embed.detach())
    assert torch.equal(tracker.pos_embed_search.detach(), resample_position_table(original.pos_embed, 6))
    assert torch.equal(tracker.blocks[3].mlp.fc2.weight, original.blocks[3].mlp.fc2.weight)
    segmenter, seg_report = dropseg_from_checkpoint(checkpoint, image_size=32, decoder_channels=8)
    assert seg_report.missing == [] and torch.equal(segmenter.pos_embed.detach(), original.pos_embed)
    probe = frame_encoder_from_checkpoint(checkpoint)  # our sin-cos table: the probe may rebuild it
    assert torch.equal(probe.first_frame_embed, original.frame_embed.detach()[0])


def test_timm_vit_state_dict_and_safetensors(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=96, depth=4, num_heads=3,
                            img_size=32, patch_size=8, num_classes=10).eval()
    state = vit.state_dict()
    save_file(state, str(tmp_path / "vit.safetensors"))
    torch.save(state, tmp_path / "vit.pth")
    torch.save({"state_dict": state, "epoch": 299, "arch": "vit_micro"}, tmp_path / "train_checkpoint.pth")
    for name in ("vit.safetensors", "vit.pth", "train_checkpoint.pth"):
        checkpoint, report = load_external_encoder(tmp_path / name)
        assert report.format == "timm" and report.encoder == "micro" and report.unexpected == []
        assert {"cls_token", "head.weight", "head.bias"} <= set(report.dropped)
        assert any("zeros" in line for line in report.conversions)
        weights = checkpoint["model"]
        assert torch.equal(weights["pos_embed"], state["pos_embed"][:, 1:])
        assert torch.equal(weights["frame_embed"], torch.zeros(2, 96))
        assert torch.equal(weights["blocks.2.attn.qkv.weight"], state["blocks.2.attn.qkv.weight"])


def test_timm_vit_without_class_token_gives_timms_features(tmp_path):
    """A class-token-free, global-pool timm ViT: our encoder before its last norm is timm's forward_features."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=96, depth=4, num_heads=3, img_size=32,
                            patch_size=8, class_token=False, global_pool="avg", num_classes=0).eval()
    save_file(vit.state_dict(), str(tmp_path / "vit.safetensors"))
    checkpoint, report = load_external_encoder(tmp_path / "vit.safetensors", format="timm")
    assert any("fc_norm" in line for line in report.conversions)
    model = micro_dropmae(seed=3)
    model.load_state_dict(checkpoint["model"], strict=False)
    frames = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens = model.patch_embed(frames) + model.pos_embed + model.frame_embed[0]
        for block in model.blocks:
            tokens = block(tokens)
        assert torch.allclose(tokens, vit.forward_features(frames), atol=1e-5)


def test_our_checkpoint_passes_through(tmp_path):
    model = micro_dropmae()
    config = {"model": {"encoder": "micro", "patch_size": 8, "img_size": 32}}
    torch.save({"model": model.state_dict(), "config": config, "epoch": 1}, tmp_path / "model.pth")
    checkpoint, report = load_external_encoder(tmp_path / "model.pth")
    assert report.format == "dropmae" and checkpoint["config"] == config
    assert torch.equal(checkpoint["model"]["frame_embed"], model.frame_embed.detach())
    assert "decoder_embed.weight" in report.dropped


def test_format_detection_and_contradiction(tmp_path):
    path = save_authors_snapshot(micro_dropmae(), tmp_path / "snapshot.pth")
    assert detect_format({"model": {}, "epoch": 3}) == "mae_snapshot"
    assert detect_format({"pos_embed": torch.zeros(1)}) == "timm"
    with pytest.raises(ExternalCheckpointError, match="named format 'timm' but its keys are those of 'mae_snapshot'"):
        load_external_encoder(path, format="timm")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda state: state.pop("blocks.1.attn.qkv.weight"), r"lacks encoder weights \['blocks.1.attn.qkv.weight'\]"),
        (lambda state: state.__setitem__("blocks.0.mlp.fc1.weight", torch.zeros(5, 96)), r"blocks.0.mlp.fc1.weight \(5, 96\)"),
        (lambda state: state.__setitem__("blocks.0.ls1.gamma", torch.ones(96)), r"layers our ViT does not have: \['blocks.0.ls1.gamma'\]"),
        (lambda state: state.pop("temporal_pos_embed_z"), r"lacks \['temporal_pos_embed_z'\]"),
        (lambda state: state.__setitem__("pos_embed", torch.zeros(1, 20, 96)), r"pos_embed \(1, 20, 96\).*not a square grid"),
    ],
)
def test_a_broken_snapshot_is_named(tmp_path, change, message):
    state = authors_layout(micro_dropmae())
    change(state)
    path = tmp_path / "broken.pth"
    torch.save({"model": state, "epoch": 0}, path)
    with pytest.raises(ExternalCheckpointError, match=message) as error:
        load_external_encoder(path)
    assert str(path) in str(error.value)


def test_only_the_args_namespace_is_admitted(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": authors_layout(micro_dropmae()), "args": Path("/somewhere")}, path)
    with pytest.raises(ExternalCheckpointError, match="cannot be read as weights only"):
        load_external_encoder(path)
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ExternalCheckpointError, match="corrupt.pth"):
        load_external_encoder(tmp_path / "corrupt.pth")


# ------------------------------------------------------------------------------ timm export
def test_export_round_trip_through_timm_create_model(tmp_path, capsys):
    """Our checkpoint -> export-encoder -> timm.create_model(pretrained=True, file=...) -> our features."""
    from dropmae.cli import main

    original = micro_dropmae()
    config = {"model": {"encoder": "micro", "patch_size": 8, "img_size": 32}}
    torch.save({"model": original.state_dict(), "config": config}, tmp_path / "model.pth")
    output = tmp_path / "encoder.safetensors"
    assert main(["export-encoder", "--checkpoint", str(tmp_path / "model.pth"), "--output", str(output)]) == 0
    assert "timm.create_model('vit_tiny_patch16_224'" in capsys.readouterr().out
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=True, pretrained_cfg_overlay={"file": str(output)},
                            class_token=False, global_pool="avg", num_classes=0, embed_dim=96, depth=4, num_heads=3,
                            patch_size=8, img_size=32).eval()  # timm loads strictly: no missing or extra key
    frames = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        tokens = original.patch_embed(frames) + original.pos_embed + original.frame_embed[0]
        for block in original.blocks:
            tokens = block(tokens)
        features, pooled = vit.forward_features(frames), vit(frames)
    assert (features - tokens).abs().max() < 1e-5
    assert (pooled - original.norm(tokens.mean(dim=1))).abs().max() < 1e-5


def test_export_of_an_authors_snapshot_names_a_registered_vit(tmp_path):
    from dropmae.models.export import export_timm_encoder, timm_model_arguments

    assert timm_model_arguments("base", 16, 224) == ("vit_base_patch16_224", {"class_token": False,
                                                                             "global_pool": "avg", "num_classes": 0})
    result = export_timm_encoder(save_authors_snapshot(micro_dropmae(), tmp_path / "snapshot.pth"),
                                 tmp_path / "encoder.safetensors")
    vit = timm.create_model(result["timm_model"], pretrained=True,
                            pretrained_cfg_overlay={"file": str(tmp_path / "encoder.safetensors")}, **result["timm_kwargs"])
    assert torch.equal(vit.pos_embed.detach(), micro_dropmae().pos_embed + micro_dropmae().frame_embed[0].detach())


def test_export_of_a_broken_file_says_which(tmp_path, capsys):
    from dropmae.cli import main

    (tmp_path / "broken.pth").write_bytes(b"nothing")
    assert main(["export-encoder", "--checkpoint", str(tmp_path / "broken.pth"), "--output", str(tmp_path / "x")]) == 2
    assert "broken.pth" in capsys.readouterr().err


def test_ostrack_experiment_names_are_the_same_recipes(tmp_path):
    from dropmae.config import load_config
    from dropmae.presets import OSTRACK_EXPERIMENT_NAMES

    params = Path(__file__).resolve().parents[1] / "params.yaml"
    for alias, name in OSTRACK_EXPERIMENT_NAMES.items():
        by_alias = load_config([params], [f"tracking.preset={alias}"]).tracking
        by_name = load_config([params], [f"tracking.preset={name}"]).tracking
        assert {**vars(by_alias), "preset": None} == {**vars(by_name), "preset": None}
    assert load_config([params], ["tracking.preset=vitb_384_mae_ce_32x4_ep300"]).tracking.epochs == 300
