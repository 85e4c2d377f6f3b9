"""The optimised pretraining path computes what the plain path computes.

The packed loader's pairs are the plain loader's pixel for pixel (tests/test_packed.py); here
the model step: torch.compile (and bf16 autocast on a GPU) against eager fp32 on the same
batch, with the same masking and ASAD draws.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch._inductor.config

from dropmae.data.pairs import PackedFramePairDataset, normalize_frames
from dropmae.models.dropmae import DropMAE

DEMO_SHAPES = dict(img_size=64, patch_size=8, encoder="micro", decoder_embed_dim=64, decoder_depth=2,
                   decoder_num_heads=4)


def _loss_and_grads(model: DropMAE, frames: torch.Tensor, seed: int, autocast_dtype=None, run=None):
    """Loss and parameter gradients of one step of ``run`` (default ``model``; e.g. its compiled form)."""
    torch.manual_seed(seed)  # the masking noise and ASAD's race noise
    model.zero_grad(set_to_none=True)
    with torch.autocast(frames.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = (model if run is None else run)(normalize_frames(frames))[0]
    loss.backward()
    return loss.detach().float(), {name: p.grad.detach().float().clone() for name, p in model.named_parameters()}


@pytest.fixture(scope="module")
def packed_batch(tmp_path_factory, demo_tree) -> torch.Tensor:
    from dropmae.data.extract import ExtractionSettings, extract_frames

    root = tmp_path_factory.mktemp("fast_path")
    extract_frames(demo_tree, root, ExtractionSettings(short_side=80, pack=True), progress=False)
    dataset = PackedFramePairDataset(root, input_size=64, max_gap=20, split=None, seed=0)
    return torch.stack([dataset[i] for i in range(4)])  # uint8 [4, 2, 3, 64, 64]


# Inductor draws its own random numbers unless told to fall back to eager's; with the fallback
# both paths mask the same tokens and ASAD drops the same entries.
EAGER_RANDOM = torch._inductor.config.patch(fallback_random=True)


@EAGER_RANDOM
@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_compiled_step_gives_the_eager_loss_and_gradients(packed_batch, device):
    torch.manual_seed(0)
    model = DropMAE(**DEMO_SHAPES, asad_p=0.1).to(device).train()
    packed_batch = packed_batch.to(device)
    # Plain fp32 on the GPU too: a TF32 patch-embedding convolution would round differently in each path.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        eager_loss, eager_grads = _loss_and_grads(model, packed_batch, seed=7)
        compiled_loss, compiled_grads = _loss_and_grads(model, packed_batch, seed=7, run=torch.compile(model))
    # Tolerance: fp32 with fused kernels reorders sums; 1e-5 relative is far below any recipe change.
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # A different draw gives a different loss: the comparison above is not vacuous.
    other_loss, _ = _loss_and_grads(model, packed_batch, seed=8)
    assert abs(other_loss - eager_loss) > 1e-4


def test_training_model_with_asad_compiles_to_one_graph():
    """A graph break would cut the decoder into pieces that torch.compile fuses separately and
    run the ASAD chain eagerly between them (asad_weights once wrote into strided views with
    out=, which Dynamo does not trace: 7 breaks in this 2-layer decoder)."""
    torch.manual_seed(0)
    model = DropMAE(**DEMO_SHAPES, asad_p=0.1).train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 2, 3, 64, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_step_is_close_to_fp32(packed_batch):
    torch.manual_seed(0)
    # TwinMAE: with ASAD, bf16 logits could move the race's threshold and drop other entries,
    # which measures the sampling, not the arithmetic.
    model = DropMAE(**DEMO_SHAPES, asad_p=0.0).cuda().train()
    frames = packed_batch.cuda()
    fp32_loss, _ = _loss_and_grads(model, frames, seed=7)
    bf16_loss, _ = _loss_and_grads(model, frames, seed=7, autocast_dtype=torch.bfloat16)
    # bf16 keeps 8 mantissa bits: the per-patch MSE agrees to about 1%.
    torch.testing.assert_close(bf16_loss, fp32_loss, rtol=2e-2, atol=1e-3)


@EAGER_RANDOM
def test_packed_compiled_pretraining_logs_the_plain_losses(frames_root, tmp_path):
    """Whole training runs: packed uint8 input + torch.compile against files + eager, step by step."""
    import json
    import shutil

    from conftest import tiny_config

    from dropmae.config import Cell, config_from_dict, config_to_dict
    from dropmae.data.packed import pack_frames
    from dropmae.engine.pretrain import pretrain

    packed_root = tmp_path / "frames"
    shutil.copytree(frames_root, packed_root)
    pack_frames(packed_root)
    plain = tiny_config(epochs=[1])
    values = config_to_dict(plain)
    values["pretrain"].update(input="packed", compile=True)
    values["data"]["extraction"]["pack"] = True
    fast = config_from_dict(values)
    run = Cell("dropmae", 1)
    pretrain(plain, run, frames_root, tmp_path / "plain", progress=False)
    pretrain(fast, run, packed_root, tmp_path / "fast", progress=False)

    def step_losses(folder):
        lines = (folder / "log.jsonl").read_text().splitlines()
        return [record["loss"] for record in map(json.loads, lines) if record["event"] == "step"]

    plain_losses, fast_losses = step_losses(tmp_path / "plain"), step_losses(tmp_path / "fast")
    assert len(plain_losses) >= 2
    # Same pairs, same masks and drops; fp32 fused kernels differ by rounding that grows a
    # little over the steps.
    np.testing.assert_allclose(fast_losses, plain_losses, rtol=1e-4)

    # Decoding on the device (here the CPU stands in for the GPU): the same pairs, boxes and
    # flips, resampled bilinearly; the per-patch normalised loss moves by well under 5%.
    values["pretrain"]["decode_on_device"] = True
    pretrain(config_from_dict(values), run, packed_root, tmp_path / "device", progress=False)
    np.testing.assert_allclose(step_losses(tmp_path / "device"), plain_losses, rtol=5e-2)


@pytest.mark.parametrize("shared_crop", [False, True])
def test_crop_parameters_drawn_without_decoding_are_the_cpu_paths(tmp_path_factory, demo_tree, shared_crop):
    import io

    import torchvision.transforms.v2.functional as TF
    from PIL import Image

    from dropmae.data.extract import ExtractionSettings, extract_frames
    from dropmae.data.pairs import seeded_cpu_rng

    root = tmp_path_factory.mktemp("params")
    extract_frames(demo_tree, root, ExtractionSettings(short_side=80, pack=True), progress=False)
    dataset = PackedFramePairDataset(root, input_size=48, max_gap=20, split=None, seed=2, shared_crop=shared_crop,
                                     repeats=2)
    encoded = PackedFramePairDataset(root, input_size=48, max_gap=20, split=None, seed=2, shared_crop=shared_crop,
                                     repeats=2, decode_on_device=True)
    flips = 0
    for index in range(len(dataset)):
        crops = dataset[index].flatten(0, 1)  # [4, 3, 48, 48]: two pairs
        item = encoded[index]
        assert len(item.jpegs) == 4 and item.crops.shape == (4, 4)
        for frame, (jpeg, box, flip) in enumerate(zip(item.jpegs, item.crops.tolist(), item.flips.tolist())):
            image = Image.open(io.BytesIO(jpeg.numpy().tobytes())).convert("RGB")
            view = TF.resized_crop(image, *box, size=[48, 48], interpolation=TF.InterpolationMode.BICUBIC)
            view = TF.pil_to_tensor(TF.horizontal_flip(view) if flip else view)
            assert torch.equal(view, crops[frame]), (index, frame)
            flips += flip
        if shared_crop:
            assert torch.equal(item.crops[0], item.crops[1]) and item.flips[0] == item.flips[1]
    assert 0 < flips < 4 * len(dataset)
    with seeded_cpu_rng(5):
        first = torch.rand(3)
    with seeded_cpu_rng(5):
        assert torch.equal(torch.rand(3), first)


def test_device_decoding_gives_the_cpu_crops_within_a_few_grey_levels(tmp_path_factory, demo_tree):
    from dropmae.data.device_decode import collate_encoded, decode_pairs
    from dropmae.data.extract import ExtractionSettings, extract_frames

    root = tmp_path_factory.mktemp("device_decode")
    extract_frames(demo_tree, root, ExtractionSettings(short_side=80, pack=True), progress=False)
    cpu = PackedFramePairDataset(root, input_size=64, max_gap=20, split=None, seed=0)
    device = PackedFramePairDataset(root, input_size=64, max_gap=20, split=None, seed=0, decode_on_device=True)
    count = len(cpu)
    expected = torch.stack([cpu[i] for i in range(count)]).float()
    batch = collate_encoded([device[i] for i in range(count)])
    got = decode_pairs(batch, 64, torch.device("cuda" if torch.cuda.is_available() else "cpu")).cpu().float()
    assert got.shape == expected.shape and got.dtype == torch.float32
    error = (got - expected).abs()
    print(f"device decode vs CPU path: mean {error.mean():.2f}, 99th percentile {error.quantile(0.99):.1f} grey levels")
    # Same boxes and flips, bilinear area resampling against PIL's bicubic: a few grey levels
    # on average, more only along sharp edges.
    assert error.mean() < 2.0 and error.quantile(0.99) < 15
    # Not vacuous: a flip or a box off by a few pixels is far outside the tolerance.
    assert (got.flip(-1) - expected).abs().mean() > 3 * error.mean()
    assert (got.roll(3, dims=-1) - expected).abs().mean() > 3 * error.mean()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_device_decode_waits_for_queued_kernels_that_read_freed_memory():
    """The end-to-end crash of decode_on_device, in small: kernels queued on the current stream
    still read tensors the Python side has freed; the caching allocator offers their blocks to
    the decode's outputs of the same size, and nvJPEG must not write them before those kernels
    ran. Fails without the synchronisation in decode_jpegs_on_device (pytorch/vision PR 9606)."""
    from torchvision.io import decode_jpeg, encode_jpeg

    from dropmae.data.device_decode import decode_jpegs_on_device

    device = torch.device("cuda")
    generator = torch.Generator().manual_seed(0)
    channels, height, width, count = 3, 480, 640, 32
    images = [torch.randint(0, 256, (channels, height, width), generator=generator, dtype=torch.uint8)
              for _ in range(count)]
    jpegs = [encode_jpeg(image, quality=95) for image in images]
    decode_jpegs_on_device(jpegs, device)  # nvJPEG's one-time set-up, outside the race below
    torch.cuda.synchronize()
    fill = 7
    for _ in range(3):
        held = [torch.full((channels, height, width), fill, dtype=torch.uint8, device=device) for _ in range(count)]
        torch.cuda._sleep(400_000_000)  # ~0.2 s of GPU time: the reads below are still queued at the decode
        checksums = torch.stack([tensor.sum(dtype=torch.int64) for tensor in held])
        del held  # their blocks go back to the allocator while the sums above wait to run
        frames = decode_jpegs_on_device(jpegs, device)
        torch.cuda.synchronize()
        assert torch.equal(checksums.cpu(), torch.full((count,), fill * channels * height * width)), \
            "the decode overwrote memory that queued kernels were still reading"
    # The decode itself is right too: nvJPEG against libjpeg, within a grey level or two on average.
    for frame, jpeg in zip(frames, jpegs):
        assert frame.shape == (channels, height, width)
        assert (frame.cpu().float() - decode_jpeg(jpeg).float()).abs().mean() < 2.0
