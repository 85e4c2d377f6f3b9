"""Does pretraining pay off? One step of the pretraining -> fine-tuning chain at a time, outside the DAG.

Each call runs one step with the project's own functions and appends one JSON line (its settings
and scores) to OUTPUT/results.jsonl, so settings can be compared run by run without rebuilding the
whole demo. The README's "Does pretraining pay off on the demo?" lists the runs behind its table.

    python benchmarks/demo_payoff.py pretrain tw --method twinmae [--set pretrain.batch_size=16 ...]
    python benchmarks/demo_payoff.py random-init init
    python benchmarks/demo_payoff.py probe tw --checkpoint OUTPUT/pretrain/tw/checkpoint-last.pth
    python benchmarks/demo_payoff.py track tw --checkpoint OUTPUT/pretrain/tw/checkpoint-last.pth
    python benchmarks/demo_payoff.py segment tw --checkpoint OUTPUT/pretrain/tw/checkpoint-last.pth
    python benchmarks/demo_payoff.py size-bias tw --checkpoint OUTPUT/track/tw/run/checkpoint-last.pth
    python benchmarks/demo_payoff.py transfer tw --checkpoint OUTPUT/track/tw/run/checkpoint-last.pth
    python benchmarks/demo_payoff.py score-track tw --checkpoint OUTPUT/track/tw/run/checkpoint-last.pth --set 'tracking.benchmarks={...}'
    python benchmarks/demo_payoff.py score-segment tw --checkpoint OUTPUT/segment/tw/run/checkpoint-last.pth
    python benchmarks/demo_payoff.py mix-blocks tw_k3 --checkpoint PRETRAINED.pth --random-init RANDOM.pth --blocks 3
    python benchmarks/demo_payoff.py unseen-like-frames ul --sequences 40 --benchmark-seed 7
    python benchmarks/demo_payoff.py attention tw --checkpoint OUTPUT/pretrain/tw/checkpoint-last.pth
    python benchmarks/demo_payoff.py compare 'tw_4k_s*' --against 'rnd_s*'

size-bias asks why a tracker loses its target: every third frame of every sequence is tracked from a
search crop cut around the TRUE previous box (no drift can build up), and it reports the median of
predicted / true box side and of the centre error in box sides. A side ratio above 1 compounds:
the next crop is cut around the larger box, so a tracker that is 10% too large per step has doubled
its box in seven frames.

score-track / score-segment score an already fine-tuned tracker / segmenter again on every
benchmark the config evaluates (for example on a larger split, through --set), without fine-tuning.

transfer asks which novelty a tracker fails on: it renders TRANSFER_SEQUENCES fresh sequences (their own
seed, not the benchmark's) for each pairing of backgrounds (the demo clips, the unseen split's photos,
the train photos) with objects (the bank's seen ones, the unseen split's), tracks them, and reports the
mean IoU over frames 1.. of the tracker and of repeating the first box.

mix-blocks asks which part of a pretrained encoder a fine-tuning gains or loses from: it writes
OUTPUT/mix-blocks/NAME/model.pth, the pretrained checkpoint's patch and frame embeddings and its first
--blocks blocks over the random-init checkpoint (the same architecture and seed, never trained), whose
remaining blocks and final norm it keeps. Fine-tune from it with track / segment --checkpoint.

unseen-like-frames is a positive control for the pretraining footage: OUTPUT/unseen-like-frames/NAME/ is a
frame folder (manifest.csv, frames/) with every video of --data plus --sequences pseudo-sequences drawn
as the unseen split draws them (its photos, its reserved objects) from benchmark seed --benchmark-seed
(the benchmark's is 0, so no sequence is one the unseen split scores), all as train videos. Pretrain on
it with pretrain --data; the folder is for measurement only, never for a model the tables report.

attention measures a pretraining checkpoint's decoder as `dropmae attention-study` does (eval mode, ASAD
off, the study's mask seed) on the pairs the DAG's analyse measures (one per val clip, at most
analysis.heldout_pairs): per decoder layer the within- and between-frame shares, the structure
(1 - entropy / log L) and the same-position share. One checkpoint, no seeds or intervals: the study is for those.

compare asks whether one setting beats another beyond the seed's noise: the runs of OUTPUT/results.jsonl
whose names match NAME (a shell pattern, quoted) against those matching --against, per benchmark the mean
difference (AO for trackers, J&F for segmenters and probes, in points) and Welch's t interval of it
(dropmae.analysis.seed_comparison). Name a setting's seeds alike (tw_4k_s0, tw_4k_s1, ...) to compare them.

Config: params.yaml + config/demo.yaml unless --config is given, then --set overrides (for example
a larger val split built with dropmae.demo.benchmark: --set 'tracking.benchmarks={...}'). Trackers
and segmenters are scored on every tracking.evaluate / segmentation.evaluate benchmark; the
probe on every segmentation.evaluate benchmark. Needs data/frames/demo and data/demo-benchmark
(`snakemake data/frames/demo/manifest.csv data/demo-benchmark/summary.json --profile profiles/local
--configfile config/demo.yaml`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dropmae.analysis.seed_comparison import compare_groups, differences_markdown
from dropmae.config import load_config, resolve_run
from dropmae.engine.pretrain import pretrain
from dropmae.workflow import stages
from dropmae.workflow.layout import Cell, RandomInit


def _scores(metrics: dict, keys: tuple[str, ...]) -> dict:
    return {key: metrics.get(key) for key in keys}


def one_step_size_bias(tracker_checkpoint: str, config, benchmark: str, frame_step: int = 3) -> dict:
    """Medians of predicted / true box side and of centre error / true side, each frame tracked from a crop
    around the true previous box (see the module's docstring)."""
    import numpy as np

    from dropmae.data.images import read_rgb
    from dropmae.tracking.datasets import read_benchmark
    from dropmae.tracking.tracker import DropTracker, TrackerSettings
    from dropmae.tracking.train import load_finetuned_tracker

    model, tracker_config = load_finetuned_tracker(tracker_checkpoint)
    tracker = DropTracker(model, TrackerSettings.from_config(tracker_config.tracking))
    bench = config.tracking.benchmarks[benchmark]
    side_ratios, centre_errors = [], []
    for sequence in read_benchmark(bench.format, bench.root, config.tracking.evaluate[benchmark].split):
        tracker.initialize(read_rgb(sequence.frames[0]), sequence.boxes[0])
        for index in range(1, len(sequence.frames), frame_step):
            previous, truth = sequence.boxes[index - 1], sequence.boxes[index]
            if not (sequence.visible[index - 1] and sequence.visible[index]):
                continue
            tracker.state = previous.copy()
            predicted = tracker.track(read_rgb(sequence.frames[index]))
            true_side = np.sqrt(truth[2] * truth[3])
            side_ratios.append(np.sqrt(predicted[2] * predicted[3]) / true_side)
            centre_errors.append(np.linalg.norm(predicted[:2] + predicted[2:] / 2 - truth[:2] - truth[2:] / 2) / true_side)
    return {"side_ratio": float(np.median(side_ratios)), "centre_error": float(np.median(centre_errors)),
            "frames": len(side_ratios)}


TRANSFER_SEQUENCES = 24
TRANSFER_SEED = 7  # the sequences' SeedSequence([TRANSFER_SEED, TRANSFER_SPLIT_ID, k]), no benchmark split's
TRANSFER_SPLIT_ID = 9


def transfer(tracker_checkpoint: str, videos_root: str = "data/demo-videos") -> dict:
    """Mean IoU of the tracker and of the first box on each background x object pairing (see the docstring)."""
    import numpy as np

    from dropmae.demo import benchmark as demo
    from dropmae.tracking.tracker import DropTracker, TrackerSettings
    from dropmae.tracking.train import load_finetuned_tracker
    from dropmae.workflow.stages import demo_benchmark_settings

    settings = demo_benchmark_settings()
    bank = demo.load_object_bank()
    objects = {"seen": [t for i, t in enumerate(bank) if not demo.is_unseen_object(i)],
               "unseen": [t for i, t in enumerate(bank) if demo.is_unseen_object(i)]}
    backgrounds = {"clips": demo.load_background_clips(videos_root, settings.frame_size),
                   "unseen_photos": demo.load_unseen_clips(settings), "train_photos": demo.load_train_photo_clips(settings)}
    model, tracker_config = load_finetuned_tracker(tracker_checkpoint)
    tracker = DropTracker(model, TrackerSettings.from_config(tracker_config.tracking))
    scores = {}
    for background_name, clips in backgrounds.items():
        for object_name, textures in objects.items():
            tracked, first_box = [], []
            for k in range(TRANSFER_SEQUENCES):
                rng = np.random.default_rng(np.random.SeedSequence([TRANSFER_SEED, TRANSFER_SPLIT_ID, k]))
                sequence = demo.render_sequence(textures, clips, settings, rng)
                boxes = sequence.boxes
                tracker.initialize(sequence.tracking_frames[0], boxes[0])
                predicted = np.stack([tracker.track(frame) for frame in sequence.tracking_frames[1:]])
                tracked.append(demo.box_iou_xywh(predicted, boxes[1:]))
                first_box.append(demo.box_iou_xywh(np.repeat(boxes[:1], len(boxes) - 1, axis=0), boxes[1:]))
            scores[f"{background_name}+{object_name}"] = {"tracker": float(np.concatenate(tracked).mean()),
                                                          "first_box": float(np.concatenate(first_box).mean())}
    return scores


def mix_blocks(pretrained: str, random_init: str, blocks: int, output: Path) -> dict:
    """Write a pretraining checkpoint whose embeddings and first ``blocks`` blocks are ``pretrained``'s and
    the rest ``random_init``'s (see the docstring); returns what it took."""
    from dropmae.engine.checkpoint import load_checkpoint

    source, base = load_checkpoint(pretrained), load_checkpoint(random_init)
    state = dict(base["model"])
    taken = [key for key in source["model"]
             if key.startswith(("patch_embed.", "frame_embed"))
             or (key.startswith("blocks.") and int(key.split(".")[1]) < blocks)]
    state.update({key: source["model"][key] for key in taken})
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**source, "model": state}, output)
    return {"blocks": blocks, "tensors_from_pretrained": len(taken), "random_init": random_init, "output": str(output)}


def unseen_like_frames(frames_root: str, sequences: int, benchmark_seed: int, output: Path,
                       videos_root: str = "data/demo-videos") -> dict:
    """Build the positive-control frame folder of the docstring under ``output``; returns its counts."""
    import dataclasses
    import os
    import shutil

    import pandas as pd

    from dropmae.data.manifest import FRAMES_DIR, MANIFEST_COLUMNS, MANIFEST_NAME, frame_path, read_manifest
    from dropmae.demo.benchmark import UNSEEN, build_demo_benchmark
    from dropmae.workflow.stages import demo_benchmark_settings

    if benchmark_seed == demo_benchmark_settings().seed:
        raise ValueError(f"--benchmark-seed {benchmark_seed} is the demo benchmark's own: its unseen split would be pretrained on")
    settings = dataclasses.replace(demo_benchmark_settings(), seed=benchmark_seed, train_sequences=1, val_sequences=1,
                                   train_photo_sequences=0, unseen_sequences=sequences)
    rendered = output.parent / f".{output.name}-benchmark"
    build_demo_benchmark(videos_root, rendered, settings)
    shutil.rmtree(output, ignore_errors=True)
    manifest = read_manifest(frames_root)
    for video_id in manifest.loc[manifest["status"] == "ok", "video_id"]:  # the footage itself, linked
        link = output / FRAMES_DIR / video_id
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(frame_path(frames_root, video_id, 0).parent.resolve(), link)
    rows = []
    split_root = rendered / UNSEEN / "got10k" / "val"
    for sequence in sorted(path for path in split_root.iterdir() if path.is_dir()):
        video_id = f"unseenlike/{sequence.name}"
        jpegs = sorted(sequence.glob("*.jpg"))
        for index, jpeg in enumerate(jpegs):
            target = frame_path(output, video_id, index)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(jpeg.resolve(), target)
        width, height = settings.frame_size
        rows.append({"video_id": video_id, "source_path": str(sequence), "label": "unseenlike", "split": "train",
                     "frame_count": len(jpegs), "width": width, "height": height, "status": "ok", "reason": ""})
    pd.concat([manifest, pd.DataFrame(rows, columns=MANIFEST_COLUMNS)]).to_csv(output / MANIFEST_NAME, index=False)
    return {"videos": int((manifest["split"] == "train").sum()) + len(rows), "unseen_like_sequences": len(rows),
            "benchmark_seed": benchmark_seed}


def score_finetuned(config, task: str, name: str, checkpoint, out: Path) -> dict:
    """A fine-tuned tracker (task "track") or segmenter ("segment") scored on every benchmark its
    section evaluates: benchmark -> its scores; files under ``out``."""
    evaluate, section, keys = {
        "track": (stages.evaluate_tracker_stage, config.tracking, ("ao", "sr50", "sr75")),
        "segment": (stages.evaluate_segmenter_stage, config.segmentation, ("jf", "j", "f")),
    }[task]
    scores = {}
    for benchmark in section.evaluate:
        metrics = evaluate(config, name, benchmark, checkpoint, out / f"{benchmark}.json", out / f"{benchmark}.png",
                           out / f"raw_{benchmark}", report=lambda message: None)
        scores[benchmark] = _scores(metrics, keys)
    return scores


def decoder_attention(config, checkpoint: str, frames_dir: str) -> list[dict]:
    """The study's MEASURES of each decoder layer of one pretraining checkpoint on the DAG's held-out pairs."""
    from dropmae.analysis.attention_study import decoder_attention_statistics
    from dropmae.config import config_from_dict
    from dropmae.data.pairs import whole_frame_pairs
    from dropmae.engine.pretrain import load_pretrained

    model, state = load_pretrained(checkpoint)
    trained = config_from_dict(state["config"])  # the checkpoint's own input size and frame gap
    a = config.analysis
    heldout = whole_frame_pairs(frames_dir, trained.model.img_size, trained.pretrain.frame_gap, split="val", seed=a.seed)
    pairs = torch.utils.data.Subset(heldout, range(min(a.heldout_pairs, len(heldout))))
    table = decoder_attention_statistics(model, pairs, num_pairs=len(pairs), batch_size=a.batch_size)
    return [{key: round(float(value), 5) for key, value in row.items()} for row in table.to_dict("records")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["pretrain", "random-init", "probe", "track", "segment", "size-bias", "transfer",
                                         "score-track", "score-segment", "mix-blocks", "unseen-like-frames", "attention",
                                         "compare"])
    parser.add_argument("name", help="the run's name (a folder under OUTPUT/<step>/); compare: a pattern of run names")
    parser.add_argument("--checkpoint", help="a pretraining checkpoint (probe, track, segment; none: no pretraining), "
                        "or a fine-tuned one (size-bias, transfer, score-track, score-segment)")
    parser.add_argument("--method", default="twinmae", choices=["twinmae", "dropmae"])
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--data", default="data/frames/demo", help="extracted frames for pretraining")
    parser.add_argument("--output", default="runs/payoff")
    parser.add_argument("--random-init", help="mix-blocks: the random-init checkpoint the mix starts from")
    parser.add_argument("--blocks", type=int, default=0, help="mix-blocks: blocks taken from --checkpoint")
    parser.add_argument("--sequences", type=int, default=40, help="unseen-like-frames: pseudo-sequences to add")
    parser.add_argument("--benchmark-seed", type=int, default=7, help="unseen-like-frames: their benchmark seed (not 0)")
    parser.add_argument("--against", help="compare: the pattern of the baseline's run names (for example 'rnd_s*')")
    parser.add_argument("--confidence", type=float, default=0.95, help="compare: the interval's confidence")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the demo runs fine-tunings on one)")
    args = parser.parse_args()
    if args.step == "compare":  # reads results.jsonl, runs nothing and appends nothing
        if not args.against:
            parser.error("compare needs --against PATTERN (the baseline's run names)")
        try:
            differences = compare_groups(Path(args.output) / "results.jsonl", args.name, args.against, args.confidence)
        except ValueError as error:  # a bad pattern or file: its message, not a traceback
            parser.error(str(error))
        print(differences_markdown(differences, args.name, args.against), end="")
        print(json.dumps([difference.as_dict() for difference in differences]))
        return

    torch.set_num_threads(args.threads)
    config = load_config(args.config or ["params.yaml", "config/demo.yaml"], args.overrides)
    out = Path(args.output) / args.step / args.name
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    record: dict = {"step": args.step, "name": args.name, "checkpoint": args.checkpoint, "set": args.overrides}
    ignore = lambda message: None  # noqa: E731  (the scores go to results.jsonl)

    if args.step == "pretrain":
        run = resolve_run(config, args.method, config.pretrain.epochs[0])
        outcome = pretrain(config, run, args.data, out, device="cpu", progress=False)
        record.update(method=args.method, steps=outcome.global_step, last_loss=outcome.last_loss)
    elif args.step == "random-init":  # the DAG's control: the pretraining model as seeded, never trained
        stages.random_init_stage(config, RandomInit("demo"), out / "checkpoint-last.pth", out / "metrics.json",
                                 report=ignore)
    elif args.step == "probe":
        for benchmark in config.segmentation.evaluate:
            metrics = stages.probe_stage(config, Cell(source="demo", method=args.method, epochs=1), benchmark, args.checkpoint,
                                         out / f"{benchmark}.json", out / f"{benchmark}.png", out / f"raw_{benchmark}",
                                         report=ignore)
            record[benchmark] = _scores(metrics, ("jf", "j", "f"))
    elif args.step == "mix-blocks":
        if not (args.checkpoint and args.random_init) or args.blocks < 0:
            parser.error("mix-blocks needs --checkpoint (pretrained), --random-init and --blocks >= 0")
        record.update(mix_blocks(args.checkpoint, args.random_init, args.blocks, out / "model.pth"))
    elif args.step == "unseen-like-frames":
        record.update(unseen_like_frames(args.data, args.sequences, args.benchmark_seed, out))
    elif args.step == "transfer":
        record.update(transfer(args.checkpoint))
    elif args.step == "attention":
        if not args.checkpoint:
            parser.error("attention needs --checkpoint (a pretraining checkpoint)")
        record["layers"] = decoder_attention(config, args.checkpoint, args.data)
    elif args.step in ("score-track", "score-segment"):  # a fine-tuned checkpoint, scored again (e.g. on a larger split)
        record.update(score_finetuned(config, args.step.removeprefix("score-"), args.name, args.checkpoint, out))
    elif args.step == "size-bias":
        for benchmark in config.tracking.evaluate:
            record[benchmark] = one_step_size_bias(args.checkpoint, config, benchmark)
    else:  # fine-tune a tracker or a segmenter, then score it on every benchmark its section evaluates
        from dropmae.segmentation.train import finetune_segmenter
        from dropmae.tracking.train import finetune_tracker

        finetune = {"track": finetune_tracker, "segment": finetune_segmenter}[args.step]
        outcome = finetune(config, args.checkpoint, out / "run", device="cpu", progress=False)
        record.update(last_loss=outcome.last_loss, status=outcome.status)
        # a run stopped by a signal is not scored: its half-trained scores would mislead
        if outcome.status == "completed":
            record.update(score_finetuned(config, args.step, args.name, out / "run" / "checkpoint-last.pth", out))
    record["seconds"] = round(time.time() - started, 1)
    line = json.dumps(record)
    print(line)
    with open(Path(args.output) / "results.jsonl", "a") as log:
        log.write(line + "\n")


if __name__ == "__main__":
    main()
