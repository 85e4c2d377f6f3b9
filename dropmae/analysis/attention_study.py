"""Seeded attention study: when does ASAD shift the decoder's attention across frames?

For every setting of ``attention_study.settings`` (named pretrain.* overrides) and every seed,
TwinMAE and DropMAE are pretrained from the same initialisation in the same data order (the seed
sets both; only ASAD differs) and measured on the same held-out pairs with the same masks, in eval
mode, so ASAD is off, as the paper measures. Per decoder layer, each averaged over pairs, heads and
all query positions:

- within_frame / between_frame: the attention mass on the query's own frame / on the other frame;
- structure: 1 - H / log L, the row entropy H against the uniform row's (0: uniform, 1: one key);
- same_position: the mass on the key at the query's own grid position in the other frame (1 / L
  for a uniform row), the correspondence a static or shared-crop pair makes trivial.

The DropMAE - TwinMAE difference is paired by seed; its 95% interval is Student's t over the
per-seed differences (quantiles from scipy.stats.t).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import t as student_t

from dropmae.analysis.attention import (
    _seeded_inference,
    _single_forward_attention,
    attention_shares,
    collect_decoder_attention,
    display_name,
)
from dropmae.config import METHODS, Cell, Config, ConfigError, config_from_dict, study_epochs, study_pretrain
from dropmae.data.pairs import whole_frame_pairs
from dropmae.engine.checkpoint import LAST_CHECKPOINT, load_checkpoint
from dropmae.engine.pretrain import SUMMARY_FILE, load_pretrained, pretrain, resolve_device
from dropmae.models.dropmae import DropMAE
from dropmae.workflow.layout import attention_study_source
from dropmae.workflow.stages import RUN_ARTIFACTS, run_signature

MEASURES = ("within_frame", "between_frame", "structure", "same_position")
CONFIDENCE = 0.95
MEASURE_SEED = 0  # held-out pairs and masks: the same for every run of the study
ALL_LAYERS = "all"  # the summary's row of the mean over decoder layers
# The pretrain.* keys the study's results depend on (rule params, dvc.yaml params): all but
# those that only change how a run executes or logs, and pretrain.seed / pretrain.methods,
# which the study sets itself; epochs stays (the default budget is the smallest of them).
STUDY_PRETRAIN_KEYS = ("epochs", "mask_ratio", "masking", "asad_p", "norm_pix_loss", "frame_gap", "shared_crop",
                       "crop_scale", "color_jitter_p", "grayscale_p", "repeated_sampling", "input", "decode_on_device",
                       "batch_size", "accum_iter",
                       "blr", "min_lr", "weight_decay", "warmup_epochs", "precision")


# ----------------------------------------------------------------- measuring
def attention_statistics(attention: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """attention [B, H, 2N, 2N] (softmax rows) -> [B, 4]: MEASURES of each pair, means over heads
    and all 2N queries."""
    n = tokens_per_frame
    within, between = attention_shares(attention, n)
    structure = 1 - torch.special.entr(attention).sum(dim=-1) / math.log(2 * n)  # entr(0) = 0
    # Query i of one frame and key i of the other share a grid position: the cross blocks' diagonals.
    same_position = torch.cat((attention[..., :n, n:].diagonal(dim1=-2, dim2=-1),
                               attention[..., n:, :n].diagonal(dim1=-2, dim2=-1)), dim=-1)
    return torch.stack((within, between, structure.mean(dim=(1, 2)), same_position.mean(dim=(1, 2))), dim=1)


def decoder_attention_statistics(model: DropMAE, dataset: Sequence[torch.Tensor], num_pairs: int, batch_size: int,
                                 seed: int = MEASURE_SEED, device: str | torch.device = "cpu") -> pd.DataFrame:
    """MEASURES of every decoder layer over the first ``num_pairs`` pairs of ``dataset``, in eval
    mode (ASAD off) with masks drawn from ``seed``. One row per layer: layer (1-based), MEASURES, pairs."""
    count = min(num_pairs, len(dataset))
    if count == 0:
        raise ValueError("no held-out pairs to measure attention on")
    device = torch.device(device)
    model.to(device)
    sums = torch.zeros(len(model.decoder_blocks), len(MEASURES), dtype=torch.float64)
    with _seeded_inference(model, seed, device), collect_decoder_attention(model) as sinks:
        for start in range(0, count, batch_size):
            frames = torch.stack([dataset[i] for i in range(start, min(start + batch_size, count))])
            model(frames.to(device))
            for layer, sink in enumerate(sinks):
                statistics = attention_statistics(_single_forward_attention(sink), model.tokens_per_frame)
                sums[layer] += statistics.sum(dim=0).double().cpu()
    table = pd.DataFrame((sums / count).numpy(), columns=list(MEASURES))
    table.insert(0, "layer", np.arange(1, len(table) + 1))
    table["pairs"] = count
    return table


# ----------------------------------------------------------------- intervals
def t_interval(mean: np.ndarray, std: np.ndarray, n: np.ndarray, confidence: float = CONFIDENCE):
    """Student t interval of a mean from the sample std (ddof 1) of n values: (low, high), elementwise."""
    n = np.asarray(n, dtype=float)
    half = student_t.ppf(0.5 + confidence / 2, n - 1) * np.asarray(std) / np.sqrt(n)
    return mean - half, mean + half


def _with_layer_means(runs: pd.DataFrame) -> pd.DataFrame:
    """Long form (setting, seed, method, layer, measure, value) plus, per run, the mean over layers
    as layer ALL_LAYERS."""
    long = runs.melt(id_vars=["setting", "seed", "method", "layer"], value_vars=list(MEASURES), var_name="measure")
    means = long.groupby(["setting", "seed", "method", "measure"], as_index=False, sort=False)["value"].mean()
    long["layer"] = long["layer"].astype(str)
    return pd.concat([long, means.assign(layer=ALL_LAYERS)], ignore_index=True)


def summarise(runs: pd.DataFrame, settings: Sequence[str] | None = None) -> pd.DataFrame:
    """Per setting, measure and layer (and ALL_LAYERS): the mean of each method over seeds, the mean
    paired difference DropMAE - TwinMAE, its 95% t interval, the number of seeds, and whether the
    interval excludes 0. Seeds without both methods are left out."""
    keys = ["setting", "measure", "layer"]
    paired = (_with_layer_means(runs).pivot_table(index=[*keys, "seed"], columns="method", values="value")
              .dropna(subset=list(METHODS)).reset_index())
    paired["difference"] = paired["dropmae"] - paired["twinmae"]
    summary = paired.groupby(keys, as_index=False).agg(
        twinmae=("twinmae", "mean"), dropmae=("dropmae", "mean"), difference=("difference", "mean"),
        difference_std=("difference", "std"), seeds=("seed", "nunique"))
    summary["ci_low"], summary["ci_high"] = t_interval(summary["difference"], summary["difference_std"],
                                                       summary["seeds"])
    summary["excludes_zero"] = (summary["ci_low"] > 0) | (summary["ci_high"] < 0)
    order = {"setting": {name: i for i, name in enumerate(settings or dict.fromkeys(runs["setting"]))},
             "measure": {name: i for i, name in enumerate(MEASURES)}}
    summary = summary.sort_values(keys, key=lambda column: column.map(order[column.name]) if column.name in order
                                  else column.map(lambda layer: math.inf if layer == ALL_LAYERS else int(layer)))
    return summary[[*keys, "twinmae", "dropmae", "difference", "ci_low", "ci_high", "seeds", "excludes_zero"]]


# ----------------------------------------------------------------- runs
@dataclass(frozen=True)
class StudyRun:
    """One pretraining of the study: a setting, a seed and a method."""

    setting: str
    seed: int
    method: str

    def folder(self, runs_dir: str | Path) -> Path:
        return Path(runs_dir) / self.setting / f"seed{self.seed}" / self.method


def study_runs(config: Config) -> list[StudyRun]:
    a = config.attention_study
    return [StudyRun(setting, seed, method) for setting in a.settings for seed in a.seeds for method in METHODS]


def run_config(config: Config, run: StudyRun) -> tuple[Config, Cell]:
    """The config a study run trains with (its setting's pretrain.*, the run's seed) and its cell."""
    pretrain_config = dataclasses.replace(study_pretrain(config, run.setting), seed=run.seed)
    cell = Cell(run.method, study_epochs(config, run.setting), attention_study_source(config))
    return dataclasses.replace(config, pretrain=pretrain_config), cell


def _same_training(state: dict, config: Config, cell: Cell) -> bool:
    """Whether a checkpoint was written by a run of this configuration (operational keys aside)."""
    try:
        return run_signature(config_from_dict(state["config"]), cell) == run_signature(config, cell)
    except (ConfigError, KeyError):  # written by another version of the config
        return False


def train_run(config: Config, run: StudyRun, data_path: str | Path, runs_dir: str | Path,
              device: str | torch.device | None, report: Callable[[str], None]) -> Path:
    """Pretrain one study run into its folder, resuming an interrupted one and skipping a finished
    one; a run of another configuration is moved to superseded/<time>/. Returns checkpoint-last."""
    trained, cell = run_config(config, run)
    folder = run.folder(runs_dir)
    last = folder / LAST_CHECKPOINT
    if last.is_file():
        state = load_checkpoint(last)
        if not _same_training(state, trained, cell):
            archive = folder / "superseded" / time.strftime("%Y%m%d-%H%M%S")
            archive.mkdir(parents=True)
            for pattern in RUN_ARTIFACTS:
                for path in folder.glob(pattern):
                    shutil.move(str(path), archive / path.name)
            report(f"{folder}: configured differently before; moved to {archive}")
        elif state["epoch"] >= cell.epochs:
            report(f"{folder}: trained before ({state['global_step']} steps)")
            return last
    started = time.monotonic()
    outcome = pretrain(trained, cell, data_path, folder, device=device, progress=False)
    if outcome.status != "completed":
        raise RuntimeError(f"{folder}: interrupted ({outcome.reason}) at step {outcome.global_step}; "
                           "rerun the study to resume")
    report(f"{run.setting} seed {run.seed} {run.method}: {outcome.global_step} steps in "
           f"{time.monotonic() - started:.0f} s, last loss {outcome.last_loss:.4f}")
    return last


def measure_run(checkpoint: Path, heldout: Sequence[torch.Tensor], config: Config,
                device: torch.device) -> pd.DataFrame:
    """decoder_attention_statistics of a finished run, with its steps and last training loss."""
    model, state = load_pretrained(checkpoint)
    a = config.attention_study
    table = decoder_attention_statistics(model, heldout, a.heldout_pairs, a.batch_size, device=device)
    summary = checkpoint.parent / SUMMARY_FILE
    table["global_step"] = state["global_step"]
    table["final_loss"] = json.loads(summary.read_text())["final_loss"] if summary.is_file() else float("nan")
    return table


def heldout_pairs(frames_dir: str | Path, config: Config) -> torch.utils.data.Dataset:
    """attention_study.heldout_pairs pairs of whole, unflipped val frames at the recipe's input size
    and frame gap; with fewer val videos than that, further pairs per video (drawn from further
    seeds), so the measure does not rest on a handful of pairs."""
    def pairs(seed: int):
        return whole_frame_pairs(frames_dir, config.model.img_size, config.pretrain.frame_gap, split="val", seed=seed)

    first = pairs(MEASURE_SEED)  # raises, naming the folder, when it has no val videos
    rounds = math.ceil(config.attention_study.heldout_pairs / len(first))
    return torch.utils.data.ConcatDataset([first, *(pairs(MEASURE_SEED + k) for k in range(1, rounds))])


RUN_COLUMNS = ["setting", "seed", "method", "epochs", "layer", *MEASURES, "pairs", "global_step", "final_loss"]


def run_attention_study(config: Config, frames_dir: str | Path, outputs: dict[str, str | Path],
                        runs_dir: str | Path, device: str | torch.device | None = None,
                        report: Callable[[str], None] = print) -> pd.DataFrame:
    """Train and measure every run of the study, then write ``outputs`` (roles of
    layout.ATTENTION_STUDY_FILES: runs, summary, markdown, plot). Returns the summary.

    Every run is measured on the same held-out pairs (heldout_pairs: the val split of ``frames_dir``
    at the recipe's pretrain.frame_gap, whatever the setting trains with), so settings differ only
    in training. runs.csv is rewritten after each run, so an interrupted study shows its progress.
    """
    device = resolve_device(device)
    heldout = heldout_pairs(frames_dir, config)
    source = attention_study_source(config)
    paths = {role: Path(path) for role, path in outputs.items()}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    measured = []
    for run in study_runs(config):
        trained, cell = run_config(config, run)
        data_path = frames_dir if trained.pretrain.input in ("frames", "packed") else config.data.sources[source].videos
        checkpoint = train_run(config, run, data_path, runs_dir, device, report)
        table = measure_run(checkpoint, heldout, config, device)
        measured.append(table.assign(setting=run.setting, seed=run.seed, method=run.method, epochs=cell.epochs))
        runs = pd.concat(measured, ignore_index=True)[RUN_COLUMNS]
        runs.to_csv(paths["runs"], index=False)
    summary = summarise(runs, list(config.attention_study.settings))
    summary.to_csv(paths["summary"], index=False)
    paths["markdown"].write_text(summary_markdown(summary, config, runs))
    save_study_plot(runs, summary, paths["plot"])
    report(f"attention study: {len(measured)} runs; wrote {', '.join(str(path) for path in paths.values())}")
    return summary


# ----------------------------------------------------------------- reports
MEASURE_TITLES = {
    "between_frame": "Between-frame share (the paper's figure: DropMAE should be higher)",
    "within_frame": "Within-frame share (1 - between-frame share)",
    "structure": "Structure: 1 - entropy / log(L) (0 = uniform rows)",
    "same_position": "Same-position share: mass on the query's own position in the other frame",
}


def _setting_description(config: Config, setting: str) -> str:
    a = config.attention_study
    written = {key: value for overrides in (a.pretrain, a.settings[setting])
               for key, value in dataclasses.asdict(overrides).items() if value is not None and key != "epochs"}
    changes = ", ".join(f"{key}={value}" for key, value in written.items()) or "pretrain.* as configured"
    return f"`{setting}`: {changes}; epochs {study_epochs(config, setting)}"


def summary_markdown(summary: pd.DataFrame, config: Config, runs: pd.DataFrame) -> str:
    a = config.attention_study
    steps = runs.groupby("setting", sort=False)["global_step"].max()
    length = 2 * (config.model.img_size // config.model.patch_size) ** 2
    lines = [
        "# Attention study: DropMAE - TwinMAE per decoder layer",
        "",
        f"Seeds {a.seeds}: per seed, TwinMAE and DropMAE start from the same weights and see the same pairs "
        "in the same order; only ASAD differs. Measured in eval mode (ASAD off) on the same "
        f"{int(runs['pairs'].max())} held-out pairs and masks for every run, averaged over heads and queries; "
        f"model {config.model.encoder}, {config.model.img_size} px, decoder {config.model.decoder_dim} x "
        f"{config.model.decoder_depth} x {config.model.decoder_heads} heads.",
        "",
        "Settings:",
        *[f"- {_setting_description(config, setting)} ({steps.get(setting, 0)} steps per run)"
          for setting in a.settings],
        "",
        f"How to read: `difference` is the mean over seeds of DropMAE - TwinMAE (paired by seed); the interval is "
        f"the {CONFIDENCE:.0%} Student t interval over those per-seed differences. A shift is shown only where "
        "the interval excludes 0; layer `all` is the mean over layers. A uniform row has between-frame share "
        f"0.5, structure 0 and same-position share 1/L = {1 / length:.4f} (L = {length} tokens).",
    ]
    for measure in MEASURES:
        rows = summary[summary["measure"] == measure]
        table = pd.DataFrame({
            "setting": rows["setting"], "layer": rows["layer"], "TwinMAE": rows["twinmae"].map("{:.4f}".format),
            "DropMAE": rows["dropmae"].map("{:.4f}".format), "difference": rows["difference"].map("{:+.3g}".format),
            f"{CONFIDENCE:.0%} interval": [f"[{low:+.3g}, {high:+.3g}]"
                                            for low, high in zip(rows["ci_low"], rows["ci_high"])],
            "seeds": rows["seeds"], "excludes 0": rows["excludes_zero"].map({True: "yes", False: "no"}),
        })
        lines += ["", f"## {MEASURE_TITLES[measure]}", "", table.to_markdown(index=False, disable_numparse=True)]
    return "\n".join(lines) + "\n"


def save_study_plot(runs: pd.DataFrame, summary: pd.DataFrame, path: str | Path) -> Path:
    """Per setting (columns): the paper's figure, within- and between-frame share per decoder layer
    for both methods with 95% t intervals over seeds (top), and the paired DropMAE - TwinMAE
    difference of the between-frame share with its 95% interval (bottom)."""
    import matplotlib.pyplot as plt  # the Agg backend: dropmae.analysis.attention chose it

    settings = list(dict.fromkeys(runs["setting"]))
    layers = np.sort(runs["layer"].unique())
    x = np.arange(len(layers))
    colours = plt.get_cmap("tab20").colors  # dark / light pairs: one pair per method
    figure, axes = plt.subplots(2, len(settings), figsize=(max(4.0, 1.0 * len(layers) + 1.5) * len(settings), 6.5),
                                squeeze=False, sharey="row", layout="constrained")
    bar_width = 0.8 / (2 * len(METHODS))
    for column, setting in enumerate(settings):
        top, bottom = axes[0, column], axes[1, column]
        of_setting = runs[runs["setting"] == setting]
        for m, method in enumerate(METHODS):
            shares = ["within_frame", "between_frame"]
            grouped = of_setting[of_setting["method"] == method].groupby("layer")[shares].agg(["mean", "std", "count"])
            grouped = grouped.reindex(layers)
            for k, measure in enumerate(shares):
                mean, std, n = (grouped[measure][stat].to_numpy() for stat in ("mean", "std", "count"))
                low, _ = t_interval(mean, std, n)
                top.bar(x + (2 * m + k - (2 * len(METHODS) - 1) / 2) * bar_width, mean, width=bar_width,
                        yerr=mean - low, capsize=2, color=colours[(2 * m + k) % len(colours)],
                        hatch="//" if k else None, edgecolor="white" if k else None,
                        label=f"{display_name(method)}: {measure.replace('_', '-')}" if column == 0 else None)
        difference = summary[(summary["setting"] == setting) & (summary["measure"] == "between_frame")
                             & (summary["layer"] != ALL_LAYERS)]
        difference = difference.set_index(difference["layer"].astype(int)).reindex(layers)
        mean = difference["difference"].to_numpy()
        errors = (mean - difference["ci_low"].to_numpy(), difference["ci_high"].to_numpy() - mean)
        bottom.errorbar(x, mean, yerr=errors, fmt="o", capsize=3, color="black")
        bottom.axhline(0.0, color="grey", linewidth=0.8)
        epochs = int(of_setting["epochs"].iloc[0])
        top.set_title(f"{setting} (epochs {epochs}, {of_setting['seed'].nunique()} seeds)", fontsize=10)
        top.set_ylim(0, 1)
        for axis in (top, bottom):
            axis.set_xticks(x, [str(layer) for layer in layers])
            axis.grid(axis="y", alpha=0.3)
            axis.set_axisbelow(True)
        bottom.set_xlabel("decoder layer")
    axes[0, 0].set_ylabel("share of the query's attention")
    axes[1, 0].set_ylabel("between-frame share:\nDropMAE - TwinMAE")
    figure.legend(loc="outside lower center", ncol=2 * len(METHODS), fontsize=8)
    figure.suptitle(f"Decoder attention, eval mode; error bars: {CONFIDENCE:.0%} t intervals over seeds "
                    "(bottom: paired by seed)", fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
