"""Command line: ``dropmae extract-frames | pack-frames | pretrain | reconstruct | compare-log | attention-study |
stage | config | schema | export-encoder | track | segment | score-tracking | score-vos``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from dropmae.config import Config, ConfigError, load_config, resolve_run
from dropmae.workflow.layout import ATTENTION_STUDY_DIR, ATTENTION_STUDY_RUNS


# sysexits.h EX_TEMPFAIL: the run stopped on a signal with its checkpoint written; rerunning the
# same command resumes it. Scripts can tell it from a finished run (0) and from an error (1, 2).
EXIT_INTERRUPTED = 75


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", action="append", default=[], metavar="FILE",
                        help="YAML config (params.yaml); repeat to overlay files, later ones win")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override one dotted key, e.g. --set pretrain.epochs=[2]")


def _load(args) -> Config:
    # DVC stages run in the repository root and read params.yaml there unless told otherwise.
    paths = args.config or (["params.yaml"] if getattr(args, "config_default", False) else [])
    return load_config(paths, args.overrides)


def cmd_extract_frames(args) -> int:
    from dropmae.data.extract import ExtractionSettings, extract_frames

    config = _load(args)
    source = args.source
    if source is None:
        if args.data_source is None:
            raise ConfigError("give --source PATH (a video tree or CSV list) or --data-source NAME from data.sources")
        if args.data_source not in config.data.sources:
            raise ConfigError(f"data.sources has no source {args.data_source!r}; configured: {sorted(config.data.sources)}")
        source = config.data.sources[args.data_source].videos
    settings = ExtractionSettings(**dataclasses.asdict(config.data.extraction))
    manifest = extract_frames(source, args.output, settings, progress=not args.quiet)
    ok = int((manifest["status"] == "ok").sum())
    print(f"extracted {ok} of {len(manifest)} videos into {args.output} (manifest.csv lists every video)")
    return 0


def cmd_pack_frames(args) -> int:
    from dropmae.data.packed import pack_frames

    info = pack_frames(args.frames, shard_bytes=args.shard_mib << 20)
    print(f"packed {info['frames']} frames of {info['videos']} videos ({info['bytes'] / 2**20:.1f} MiB) "
          f"into {info['shards']} shard(s) under {Path(args.frames) / 'packed'}")
    return 0


def cmd_pretrain(args) -> int:
    from dropmae.engine.pretrain import pretrain

    config = _load(args)
    run = resolve_run(config, args.method, args.epochs, args.data_source)
    data = args.data
    if data is None:
        if run.source is None:
            raise ConfigError("give --data PATH (extracted frames or videos) or --data-source NAME")
        data = str(Path(config.data.frames_root) / run.source) if config.pretrain.input in ("frames", "packed") \
            else config.data.sources[run.source].videos
    outcome = pretrain(config, run, data, args.output, device=args.device, progress=not args.quiet)
    if outcome.status == "interrupted":
        print(f"interrupted ({outcome.reason}) after global step {outcome.global_step}; {outcome.checkpoint} "
              f"written, rerun the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    else:
        print(f"finished {run.method} for {run.epochs} epochs ({outcome.global_step} steps, "
              f"last loss {outcome.last_loss}); checkpoint {outcome.checkpoint}")
    return 0


def cmd_reconstruct(args) -> int:
    from dropmae.engine.pretrain import load_pretrained
    from dropmae.viz.reconstruct import save_reconstruction_grid

    model, state = load_pretrained(args.checkpoint)
    path = save_reconstruction_grid(model, state, args.data, args.output, num_pairs=args.pairs, split=args.split,
                                    checkpoint_name=Path(args.checkpoint).name)
    print(f"wrote {path}")
    return 0


def cmd_compare_log(args) -> int:
    from dropmae.analysis.training_log import TrainingLogError, write_comparison

    output = args.output or Path(args.run_dir) / f"compare_{Path(args.reference).stem}"
    try:
        _, paths = write_comparison(args.run_dir, args.reference, output, args.reference_epochs, args.log_y)
    except TrainingLogError as error:
        print(f"dropmae: compare-log: {error}", file=sys.stderr)
        return 2
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


def cmd_stage(args) -> int:
    """One stage of the experiment DAG with the paths of dropmae.workflow.layout (used by dvc.yaml)."""
    from dropmae.config import check_data_paths
    from dropmae.workflow import layout, stages, tables
    from dropmae.workflow.dvc_stage import fill_stage_arguments

    config = _load(args)
    fill_stage_arguments(args, config)  # under `dvc repro`: the values of the stage DVC runs
    missing = [f"--{name}" for name in getattr(args, "stage_needs", ()) if getattr(args, name) is None]
    if missing:
        raise ConfigError(f"dropmae stage {args.stage}: give {' '.join(missing)} (or run it as a dvc.yaml stage, "
                          "which names its item in DVC_STAGE)")
    if args.stage == "demo-videos":
        stages.build_demo_videos(layout.demo_videos())
        return 0
    if args.stage == "demo-benchmark":
        stages.build_demo_benchmark_stage(layout.demo_videos(), layout.DEMO_BENCHMARK_SUMMARY)
        return 0
    if args.stage in DOWNSTREAM_STAGES:
        check_data_paths(config)
        return _downstream_stage(config, args)
    if args.stage == "probe":
        check_data_paths(config)
        return _probe_stage(config, args)
    if args.stage == "table":
        outputs = {"csv": layout.table_csv(args.table), "markdown": layout.table_markdown(args.table),
                   "layers": layout.ATTENTION_LAYERS, "plot": layout.ATTENTION_PLOT}
        tables.build_table(config, args.table, outputs)
        return 0
    if args.stage == "tracking-curves":
        _require_benchmark(config, "tracking", args.benchmark)
        stages.tracking_curves_stage(config, args.benchmark, layout.tracking_curves_outputs(args.benchmark))
        return 0
    if args.stage == "segmentation-sequences":
        _require_benchmark(config, "segmentation", args.benchmark)
        stages.segmentation_sequences_stage(config, args.benchmark, layout.segmentation_sequences_outputs(args.benchmark))
        return 0
    if args.source not in config.data.sources:
        raise ConfigError(f"data.sources has no source {args.source!r}; configured: {sorted(config.data.sources)}")
    if args.stage == "random-init":  # reads no data
        control = layout.RandomInit(args.source)
        stages.random_init_stage(config, control, control.paths(layout.MODEL), control.paths(layout.CELL_METRICS))
        return 0
    check_data_paths(config)
    if args.stage == "extract-frames":
        stages.extract_source(config, args.source, layout.frames_dir(config, args.source))
        return 0
    cell = layout.Cell(source=args.source, method=args.method, epochs=args.epochs)
    if args.stage == "pretrain":
        stages.pretrain_cell(config, cell, stages.pretrain_data_path(config, cell), cell.paths(layout.MODEL),
                             cell.paths(layout.RUN_SUMMARY))
    else:
        stages.analyse_cell(config, cell, cell.paths(layout.MODEL), cell.paths(layout.RUN_SUMMARY),
                            layout.frames_dir(config, args.source), cell.paths(layout.CELL_METRICS),
                            cell.paths(layout.CELL_ATTENTION), cell.paths(layout.CELL_RECONSTRUCTION),
                            cell.paths(layout.CELL_TEMPORAL_MATCHING))
    return 0


# The fine-tune / evaluate stages of the downstream tasks: stage name -> (task, step).
DOWNSTREAM_STAGES = {"finetune-tracker": ("tracking", "finetune"), "evaluate-tracker": ("tracking", "evaluate"),
                     "finetune-segmenter": ("segmentation", "finetune"),
                     "evaluate-segmenter": ("segmentation", "evaluate")}


def _configured_cell(config: Config, name: str, what: str):
    """The pretraining cell or random-init control ``name`` names (None for scratch and the trivial
    baselines); a cell must be one of data.sources x pretrain.methods x pretrain.epochs."""
    from dropmae.workflow import layout

    try:
        cell = layout.encoder_of_model(name)
    except ValueError as error:
        raise ConfigError(f"{what}: {error}") from None
    if isinstance(cell, layout.RandomInit) and cell.source not in config.data.sources:
        raise ConfigError(f"{what} {name!r}: data.sources has no source {cell.source!r}")
    if isinstance(cell, layout.Cell) and cell not in layout.all_cells(config):
        raise ConfigError(f"{what} {name!r} names no pretraining cell of "
                          "data.sources x pretrain.methods x pretrain.epochs")
    return cell


def _require_benchmark(config: Config, section: str, benchmark: str) -> None:
    evaluate = getattr(config, section).evaluate
    if benchmark not in evaluate:
        raise ConfigError(f"{section}.evaluate has no benchmark {benchmark!r}; configured: {sorted(evaluate)}")


def _downstream_stage(config, args) -> int:
    """finetune-tracker / evaluate-tracker / finetune-segmenter / evaluate-segmenter."""
    from dropmae.workflow import layout, stages

    section, step = DOWNSTREAM_STAGES[args.stage]
    task = layout.TRACKING if section == "tracking" else layout.SEGMENTATION
    name = getattr(args, task.wildcard)
    cell = _configured_cell(config, name, task.wildcard)
    if step == "finetune":
        if name == task.trivial:
            raise ConfigError(f"{task.trivial} is not trained: it repeats the first frame's annotation")
        finetune = stages.finetune_tracker_stage if task is layout.TRACKING else stages.finetune_segmenter_stage
        finetune(config, name, None if cell is None else cell.paths(layout.MODEL), task.paths(task.model, name),
                 task.paths(task.summary, name))
        return 0
    _require_benchmark(config, section, args.benchmark)
    model = None if name == task.trivial else task.paths(task.model, name)
    if task is layout.TRACKING:
        evaluate, outputs = stages.evaluate_tracker_stage, (layout.TRACKING_PLOT, layout.TRACKING_RAW)
    else:
        evaluate, outputs = stages.evaluate_segmenter_stage, (layout.SEGMENTATION_OVERLAY, layout.SEGMENTATION_RAW)
    evaluate(config, name, args.benchmark, model, task.paths(task.metrics, name, args.benchmark),
             *(task.paths(template, name, args.benchmark) for template in outputs))
    return 0


def _probe_stage(config, args) -> int:
    from dropmae.workflow import layout, stages

    cell = _configured_cell(config, args.cell, "--cell")
    if cell is None:
        raise ConfigError(f"--cell {args.cell!r}: the probe scores a pretraining cell, <source>/<method>_ep<epochs>, "
                          "or a source's control, <source>/random_init")
    _require_benchmark(config, "segmentation", args.benchmark)
    paths = [cell.paths(template, benchmark=args.benchmark)
             for template in (layout.PROBE_METRICS, layout.PROBE_OVERLAY, layout.PROBE_RAW)]
    stages.probe_stage(config, cell, args.benchmark, cell.paths(layout.MODEL), *paths)
    return 0


def cmd_attention_study(args) -> int:
    from dropmae.analysis.attention_study import run_attention_study
    from dropmae.workflow import layout

    config = _load(args)
    frames = layout.frames_dir(config, layout.attention_study_source(config))
    run_attention_study(config, frames, layout.attention_study_outputs(args.output), args.runs, device=args.device)
    return 0


def cmd_config(args) -> int:
    import yaml

    from dropmae.config import config_to_dict

    print(yaml.safe_dump(config_to_dict(_load(args)), sort_keys=False), end="")
    return 0


def cmd_schema(args) -> int:
    import json

    from dropmae.config import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_export_encoder(args) -> int:
    from dropmae.models.export import export_timm_encoder
    from dropmae.models.external import ExternalCheckpointError

    try:
        result = export_timm_encoder(args.checkpoint, args.output, args.format)
    except (ExternalCheckpointError, FileNotFoundError) as error:
        print(f"dropmae: export-encoder: {error}", file=sys.stderr)
        return 2
    kwargs = ", ".join(f"{key}={value!r}" for key, value in result["timm_kwargs"].items())
    print(result["report"].summary())
    print(f"wrote {args.output}; load it with\n  timm.create_model({result['timm_model']!r}, pretrained=True, "
          f"pretrained_cfg_overlay={{'file': {str(args.output)!r}}}, {kwargs})")
    return 0


def _clip_command(run) -> int:
    """Run a clip command; bad input (a file, box or mask it cannot use) is one line on stderr."""
    from dropmae.clip_commands import ClipInputError
    from dropmae.segmentation.datasets import SegmentationDataError
    from dropmae.tracking.datasets import TrackingDataError
    from dropmae.tracking.metrics import MetricsError

    try:
        run()
    except (ClipInputError, SegmentationDataError, TrackingDataError, MetricsError, FileNotFoundError) as error:
        print(f"dropmae: {error}", file=sys.stderr)
        return 2
    return 0


def cmd_track(args) -> int:
    from dropmae.clip_commands import parse_box, track_clip

    def run():
        result = track_clip(args.tracker, parse_box(args.box), args.output, video=args.video, frames=args.frames,
                            name=args.name, output_video=args.output_video, device=args.device,
                            progress=not args.quiet)
        print(f"tracked {result['frames']} frames ({result['fps'] or 0:.1f} fps); boxes in {result['result']}"
              + (f", video {result['video']}" if result["video"] else ""))

    return _clip_command(run)


def cmd_segment(args) -> int:
    from dropmae.clip_commands import segment_clip

    def run():
        result = segment_clip(args.segmenter, args.mask, args.output, video=args.video, frames=args.frames,
                              output_video=args.output_video, device=args.device, progress=not args.quiet)
        print(f"segmented {result['frames']} frames, objects {result['objects']}; masks in {result['results']}"
              + (f", video {result['video']}" if result["video"] else ""))

    return _clip_command(run)


def cmd_score_tracking(args) -> int:
    from dropmae.clip_commands import score_tracking

    def run():
        metrics = score_tracking(args.format, args.root, args.results, args.output, args.split, args.name)
        if args.format == "got10k":
            print(f"AO {metrics['ao']:.4f}  SR0.5 {metrics['sr50']:.4f}  SR0.75 {metrics['sr75']:.4f}")
        else:
            print(f"AUC {metrics['auc']:.2f}  P {metrics['precision']:.2f}  P_norm {metrics['norm_precision']:.2f}")
        print(f"wrote metrics.json, per_sequence.csv and plots to {args.output}")

    return _clip_command(run)


def cmd_score_vos(args) -> int:
    from dropmae.clip_commands import score_vos

    def run():
        metrics = score_vos(args.root, args.results, args.output, args.split, args.format)
        print(f"J&F {metrics['J&F-Mean']:.4f}  J {metrics['J-Mean']:.4f}  F {metrics['F-Mean']:.4f}")
        print(f"wrote global_results-{args.split}.csv, per-sequence_results-{args.split}.csv, metrics.json "
              f"to {args.output}")

    return _clip_command(run)


def _add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    clip = parser.add_mutually_exclusive_group(required=True)
    clip.add_argument("--video", metavar="FILE", help="a video file (any format FFmpeg decodes)")
    clip.add_argument("--frames", metavar="DIR", help="a folder of .jpg / .png frames (natural sort order)")
    parser.add_argument("--output-video", metavar="FILE.mp4", help="also write an annotated H.264 mp4")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dropmae", description=__doc__)
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also DROPMAE_DEBUG=1), not only its message")
    commands = parser.add_subparsers(dest="command", required=True)

    extract = commands.add_parser("extract-frames", help="decode videos into JPEG frames plus a manifest")
    _add_config_arguments(extract)
    extract.add_argument("--source", help="a Kinetics-style video tree or a CSV list (path[,label])")
    extract.add_argument("--data-source", help="a name from data.sources instead of --source")
    extract.add_argument("--output", required=True, help="folder for frames/ and manifest.csv")
    extract.add_argument("--quiet", action="store_true", help="no progress bar")
    extract.set_defaults(handler=cmd_extract_frames)

    pack = commands.add_parser("pack-frames", help="pack extracted frames into shard files + an index for training")
    pack.add_argument("frames", help="an extract-frames output folder (manifest.csv, frames/)")
    pack.add_argument("--shard-mib", type=int, default=1024, help="largest shard size in MiB (default 1024)")
    pack.set_defaults(handler=cmd_pack_frames)

    train = commands.add_parser("pretrain", help="pretrain TwinMAE or DropMAE (resumes from checkpoint-last)")
    _add_config_arguments(train)
    train.add_argument("--method", choices=["twinmae", "dropmae"], help="needed when pretrain.methods lists several")
    train.add_argument("--epochs", type=int, help="needed when pretrain.epochs lists several")
    train.add_argument("--data", help="extracted frames folder (pretrain.input: frames) or video source (video)")
    train.add_argument("--data-source", help="a name from data.sources; data comes from data.frames_root/NAME")
    train.add_argument("--output", required=True, help="run folder (checkpoints, log.jsonl)")
    train.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(handler=cmd_pretrain)

    recon = commands.add_parser("reconstruct", help="PNG grid of original / masked / reconstructed frames")
    recon.add_argument("--checkpoint", required=True)
    recon.add_argument("--data", required=True, help="extracted frames folder")
    recon.add_argument("--output", required=True, help="PNG path")
    recon.add_argument("--pairs", type=int, default=4)
    recon.add_argument("--split", default="val", help="manifest split to draw pairs from (default: held-out)")
    recon.set_defaults(handler=cmd_reconstruct)

    compare = commands.add_parser("compare-log", help="our per-epoch training loss against a published MAE-style "
                                  "log.txt (JSON lines with epoch and train_loss): table and plot")
    compare.add_argument("run_dir", help="a run folder with log.jsonl (and summary.json once finished)")
    compare.add_argument("reference", help="JSON lines, one object per epoch with 'epoch' (0-based) and 'train_loss'")
    compare.add_argument("--output", help="folder for loss_comparison.{csv,md,png} (default RUN_DIR/compare_<name>)")
    compare.add_argument("--reference-epochs", type=int,
                         help="epochs the reference run planned (default: its last logged epoch + 1)")
    compare.add_argument("--log-y", action="store_true", help="logarithmic loss axis in the plot")
    compare.set_defaults(handler=cmd_compare_log)

    stage = commands.add_parser("stage", help="one stage of the experiment DAG (what dvc.yaml runs)")
    stage_kinds = stage.add_subparsers(dest="stage", required=True)
    for name, needs in (("demo-videos", ()), ("extract-frames", ("source",)), ("random-init", ("source",)),
                        ("pretrain", ("source", "cell")), ("analyse", ("source", "cell")), ("table", ("table",)),
                        ("demo-benchmark", ()), ("finetune-tracker", ("tracker",)),
                        ("evaluate-tracker", ("tracker", "benchmark")), ("finetune-segmenter", ("segmenter",)),
                        ("evaluate-segmenter", ("segmenter", "benchmark")), ("probe", ("probe_cell", "benchmark")),
                        ("tracking-curves", ("benchmark",)), ("segmentation-sequences", ("benchmark",))):
        sub = stage_kinds.add_parser(name)
        _add_config_arguments(sub)
        # Not required by argparse: under `dvc repro` they come from DVC_STAGE (dvc_stage.py);
        # cmd_stage checks them after that.
        argument_names = {"source": ["source"], "cell": ["method", "epochs"], "tracker": ["tracker"],
                          "segmenter": ["segmenter"], "probe_cell": ["cell"], "benchmark": ["benchmark"]}
        sub.set_defaults(handler=cmd_stage, config_default=True,
                         stage_needs=[argument for need in needs for argument in argument_names.get(need, [])])
        if "source" in needs:
            sub.add_argument("--source", help="a name from data.sources")
        if "cell" in needs:
            sub.add_argument("--method", choices=["twinmae", "dropmae"])
            sub.add_argument("--epochs", type=int)
        if "tracker" in needs:
            sub.add_argument("--tracker",
                             help="<source>/<method>_ep<epochs> (a pretraining cell), <source>/random_init, scratch, "
                                  "or first_box")
        if "segmenter" in needs:
            sub.add_argument("--segmenter",
                             help="<source>/<method>_ep<epochs> (a pretraining cell), <source>/random_init, scratch, "
                                  "or first_mask")
        if "probe_cell" in needs:
            sub.add_argument("--cell",
                             help="<source>/<method>_ep<epochs> (a pretraining cell) or <source>/random_init")
        if "benchmark" in needs:
            section = "segmentation" if name.endswith(("segmenter", "probe")) or name.startswith("segmentation") \
                else "tracking"
            sub.add_argument("--benchmark", help=f"a name from {section}.evaluate")
        if "table" in needs:
            sub.add_argument("table", choices=["pretraining", "datasources", "attention"])

    study = commands.add_parser("attention-study", help="TwinMAE vs DropMAE decoder attention over seeds and settings "
                                "(params.yaml attention_study; resumes its runs)")
    _add_config_arguments(study)
    study.add_argument("--output", default=ATTENTION_STUDY_DIR, help="folder for runs.csv, summary.csv|md and "
                       f"attention_study.png (default {ATTENTION_STUDY_DIR})")
    study.add_argument("--runs", default=ATTENTION_STUDY_RUNS, help="folder of the pretraining runs, "
                       f"<setting>/seed<k>/<method>/ (default {ATTENTION_STUDY_RUNS})")
    study.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    study.set_defaults(handler=cmd_attention_study, config_default=True)

    resolved = commands.add_parser("config", help="print the validated config after overlays (e.g. a params.yaml for dvc)")
    _add_config_arguments(resolved)
    resolved.set_defaults(handler=cmd_config)

    schema = commands.add_parser("schema", help="print the JSON Schema of params.yaml (rules/schemas/)")
    schema.set_defaults(handler=cmd_schema)
    export = commands.add_parser(
        "export-encoder", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="write a pretrained encoder as a timm ViT safetensors file",
        description="Reads a checkpoint (ours, an MAE-style training snapshot such as the authors' DropMAE "
                    "releases, or a timm ViT state dict / .safetensors) and writes a timm VisionTransformer state "
                    "dict (no class token, global average pooling, frame 0's embedding folded into the position "
                    "table) that timm.create_model loads as pretrained weights. Prints the exact create_model call.",
        epilog="example:\n  dropmae export-encoder --checkpoint results/pretrain/k400/dropmae_ep1600/model.pth "
               "--output dropmae_vitb.safetensors")
    export.add_argument("--checkpoint", required=True, metavar="FILE", help="the checkpoint to export")
    export.add_argument("--output", required=True, metavar="FILE", help="the .safetensors file to write")
    export.add_argument("--format", choices=["dropmae", "mae_snapshot", "timm"],
                        help="the checkpoint's layout (default: detected from its keys)")
    export.set_defaults(handler=cmd_export_encoder)

    described = dict(formatter_class=argparse.RawDescriptionHelpFormatter)
    track = commands.add_parser(
        "track", help="track one object through a clip with a fine-tuned tracker", **described,
        description="Reads a fine-tuned tracker (runs/track/<name>/model.pth), a clip (--video or --frames) and "
                    "the target's first-frame box. Writes GOT-10k result files OUTPUT/<name>/<name>_001.txt (one "
                    "x,y,w,h box per frame, frame 0 = the given box) and <name>_time.txt (seconds per frame), and "
                    "with --output-video an mp4 with the boxes drawn.",
        epilog="example:\n  dropmae track --tracker runs/track/k400/dropmae_ep1600/model.pth --video dog.mp4 "
               "--box 120,80,64,48 --output tracks/ --output-video tracks/dog.mp4")
    track.add_argument("--tracker", required=True, metavar="MODEL", help="a fine-tuned tracker's model.pth")
    track.add_argument("--box", required=True, metavar="x,y,w,h", help="the target in the first frame (pixels)")
    track.add_argument("--output", required=True, metavar="DIR", help="folder for the GOT-10k result files")
    track.add_argument("--name", help="sequence name of the result files (default: the clip's file or folder name)")
    _add_clip_arguments(track)
    track.set_defaults(handler=cmd_track)

    segment = commands.add_parser(
        "segment", help="segment objects through a clip from a first-frame mask with a fine-tuned segmenter",
        **described,
        description="Reads a fine-tuned segmenter (runs/segment/<name>/model.pth), a clip (--video or --frames) and "
                    "the first frame's mask (a palette or greyscale PNG of object ids; 0 background, 255 void). "
                    "Writes one DAVIS palette PNG per frame, OUTPUT/<frame>.png (video frames are named 00000, "
                    "00001, ...), times.txt (seconds per frame), and with --output-video an overlay mp4.",
        epilog="example:\n  dropmae segment --segmenter runs/segment/k400/dropmae_ep1600/model.pth --frames "
               "clip/ --mask clip_masks/00000.png --output masks/ --output-video masks/overlay.mp4")
    segment.add_argument("--segmenter", required=True, metavar="MODEL", help="a fine-tuned segmenter's model.pth")
    segment.add_argument("--mask", required=True, metavar="FIRST.png", help="the first frame's object mask")
    segment.add_argument("--output", required=True, metavar="DIR", help="folder for the palette PNGs")
    _add_clip_arguments(segment)
    segment.set_defaults(handler=cmd_segment)

    score_track = commands.add_parser(
        "score-tracking", help="score any tracker's result files on a tracking benchmark", **described,
        description="Reads a benchmark (--root, in its own layout) and result files (--results): GOT-10k "
                    "<seq>/<seq>_001.txt (or OSTrack's unpacked <seq>.txt), LaSOT / TNL2K / TrackingNet <seq>.txt. "
                    "Scores them with the benchmark's official protocol (GOT-10k: the got10k toolkit's AO, SR0.5, "
                    "SR0.75; others: pytracking's AUC, P, P_norm) and writes OUTPUT/metrics.json, per_sequence.csv, "
                    "success.png and, for LaSOT / TNL2K / TrackingNet, precision.png and norm_precision.png.",
        epilog="example:\n  dropmae score-tracking --format lasot --root data/lasot --results "
               "ostrack/tracking_results/lasot --output scores/lasot")
    score_track.add_argument("--format", required=True, choices=["got10k", "lasot", "tnl2k", "trackingnet"])
    score_track.add_argument("--root", required=True, metavar="DIR", help="the benchmark's root folder")
    score_track.add_argument("--results", required=True, metavar="DIR", help="the tracker's result files")
    score_track.add_argument("--output", required=True, metavar="DIR", help="folder for the scores and plots")
    score_track.add_argument("--split", help="benchmark split (default: got10k val, lasot / tnl2k / trackingnet test)")
    score_track.add_argument("--name", default="tracker", help="the tracker's name in the plots' legends")
    score_track.set_defaults(handler=cmd_score_tracking)

    score_seg = commands.add_parser(
        "score-vos", help="score any segmenter's result PNGs on DAVIS (J&F)", **described,
        description="Reads a DAVIS root (JPEGImages/480p, Annotations/480p, ImageSets) and result PNGs "
                    "RESULTS/<seq>/<frame>.png. Scores them with the DAVIS 2017 semi-supervised protocol (first and "
                    "last frames excluded) and writes davis2017-evaluation's files "
                    "OUTPUT/global_results-<split>.csv and per-sequence_results-<split>.csv, and metrics.json.",
        epilog="example:\n  dropmae score-vos --root data/DAVIS --results my_vos_results --output scores/davis")
    score_seg.add_argument("--root", required=True, metavar="DIR", help="the DAVIS root folder")
    score_seg.add_argument("--results", required=True, metavar="DIR", help="the result PNGs, one folder per sequence")
    score_seg.add_argument("--output", required=True, metavar="DIR", help="folder for the CSV files")
    score_seg.add_argument("--split", default="val", help="DAVIS split (default val)")
    score_seg.add_argument("--format", default="davis2017", choices=["davis2017", "davis2016"],
                           help="DAVIS 2017 (multi-object, default) or 2016 (single object)")
    score_seg.set_defaults(handler=cmd_score_vos)
    return parser


def _expected_errors() -> tuple[type[BaseException], ...]:
    """Errors of input, data, files and runs: a message says what to do, a traceback would not."""
    from dropmae.analysis.training_log import TrainingLogError
    from dropmae.data.extract import ExtractionError
    from dropmae.engine.checkpoint import CheckpointError
    from dropmae.engine.loop import NonFiniteLossError, RunLockedError
    from dropmae.launch.submitit_launch import LaunchError

    return (OSError, ValueError, ExtractionError, CheckpointError, NonFiniteLossError, RunLockedError, LaunchError,
            TrainingLogError)


def _error_message(error: BaseException) -> str:
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {error.filename}" if error.filename else ""
        return f"disk full{where}: {error.strerror or error}. Free some space and rerun; finished work is kept"
    if isinstance(error, OSError) and error.filename is not None:
        return f"{error.filename}: {error.strerror or error}"
    if isinstance(error, (OSError, ValueError)) and not isinstance(error, ConfigError) \
            and type(error).__module__ == "builtins":
        return f"{type(error).__name__}: {error}"
    return str(error)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = args.debug or os.environ.get("DROPMAE_DEBUG") == "1"
    try:
        return args.handler(args)
    except ConfigError as error:
        if debug:
            raise
        print(f"dropmae: configuration error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:
        if debug:
            raise
        print("dropmae: interrupted; rerun the same command to resume", file=sys.stderr)
        return getattr(interruption, "exit_code", 130)  # 128 + the signal, as a shell reports it
    except _expected_errors() as error:
        if debug:
            raise
        print(f"dropmae: error: {_error_message(error)} (--debug shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
