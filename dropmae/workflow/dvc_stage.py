"""Which item of a dvc.yaml ``foreach`` / ``matrix`` group a ``dropmae stage`` command runs.

dvc.yaml's commands carry no ``${...}`` values from params.yaml: DVC pastes them into a /bin/sh
command line before dropmae can validate anything, so a source named ``x;touch PWNED;echo`` would
run ``touch``. Instead DVC names the stage it runs in the environment (``DVC_STAGE``, e.g.
``pretrain@k400-dropmae-800``, DVC >= 3.49) and the command finds that item among the values of
the validated params.yaml, the way DVC names them: ``<group>@<key>`` for foreach over a mapping,
``<group>@<v1>-<v2>-...`` for a matrix of lists.
"""

from __future__ import annotations

import itertools
import os

from dropmae.config import Cell, Config, ConfigError
from dropmae.workflow.layout import RandomInit

DVC_STAGE_VARIABLE = "DVC_STAGE"

# dvc.yaml's stage groups: the params.yaml lists each iterates, in dvc.yaml's order.
SOURCE, METHOD, EPOCHS = "source", "method", "epochs"
TRACKING_BENCHMARK, SEGMENTATION_BENCHMARK = "tracking_benchmark", "segmentation_benchmark"
CELL_AXES = (SOURCE, METHOD, EPOCHS)
GROUP_AXES = {
    "extract_frames": (SOURCE,),
    "random_init": (SOURCE,),
    "pretrain": CELL_AXES,
    "analyse": CELL_AXES,
    "finetune_tracker": CELL_AXES,
    "finetune_tracker_random_init": (SOURCE,),
    "evaluate_tracker": (*CELL_AXES, TRACKING_BENCHMARK),
    "evaluate_tracker_scratch": (TRACKING_BENCHMARK,),
    "evaluate_tracker_random_init": (SOURCE, TRACKING_BENCHMARK),
    "evaluate_first_box": (TRACKING_BENCHMARK,),
    "finetune_segmenter": CELL_AXES,
    "finetune_segmenter_random_init": (SOURCE,),
    "evaluate_segmenter": (*CELL_AXES, SEGMENTATION_BENCHMARK),
    "evaluate_segmenter_scratch": (SEGMENTATION_BENCHMARK,),
    "evaluate_segmenter_random_init": (SOURCE, SEGMENTATION_BENCHMARK),
    "evaluate_first_mask": (SEGMENTATION_BENCHMARK,),
    "probe": (*CELL_AXES, SEGMENTATION_BENCHMARK),
    "probe_random_init": (SOURCE, SEGMENTATION_BENCHMARK),
    "tracking_curves": (TRACKING_BENCHMARK,),
    "segmentation_sequences": (SEGMENTATION_BENCHMARK,),
}


def _axis_values(config: Config, axis: str) -> list:
    return {
        SOURCE: list(config.data.sources),
        METHOD: list(config.pretrain.methods),
        EPOCHS: list(config.pretrain.epochs),
        TRACKING_BENCHMARK: list(config.tracking.evaluate),
        SEGMENTATION_BENCHMARK: list(config.segmentation.evaluate),
    }[axis]


def group_items(config: Config, group: str) -> dict[str, dict]:
    """DVC's name of each item of ``group`` (the part after '@') -> the item's values by axis."""
    axes = GROUP_AXES[group]
    items: dict[str, dict] = {}
    for values in itertools.product(*(_axis_values(config, axis) for axis in axes)):
        key = "-".join(str(value) for value in values)
        if key in items:  # e.g. sources "a-b" x methods and "a" x methods "b-...": DVC would clash too
            raise ConfigError(f"dvc.yaml stage {group}@{key} names two items: {items[key]} and "
                              f"{dict(zip(axes, values))}; rename a data source or benchmark")
        items[key] = dict(zip(axes, values))
    return items


def stage_item(config: Config, stage_name: str) -> dict | None:
    """The values of the dvc.yaml stage named ``stage_name`` (None for a stage outside a group)."""
    group, at, key = stage_name.rpartition(":")[2].partition("@")  # "path/dvc.yaml:group@key" from a sub-project
    if not at or group not in GROUP_AXES:
        return None
    items = group_items(config, group)
    if key not in items:
        raise ConfigError(f"dvc.yaml stage {stage_name!r} ({DVC_STAGE_VARIABLE}) is no item of params.yaml's "
                          f"{' x '.join(GROUP_AXES[group])}: {sorted(items)}")
    return items[key]


def fill_stage_arguments(args, config: Config, environ=os.environ) -> None:
    """Fill the arguments ``dropmae stage`` was not given from the dvc.yaml stage it runs in
    (``DVC_STAGE``); arguments given on the command line are kept."""
    stage_name = environ.get(DVC_STAGE_VARIABLE)
    if not stage_name:
        return
    item = stage_item(config, stage_name)
    if item is None:
        return
    values = {
        "source": item.get(SOURCE),
        "method": item.get(METHOD),
        "epochs": item.get(EPOCHS),
        "benchmark": item.get(TRACKING_BENCHMARK, item.get(SEGMENTATION_BENCHMARK)),
    }
    if SOURCE in item:  # the model a downstream stage takes: a cell or a source's random-init control
        values["model"] = (Cell(source=item[SOURCE], method=item[METHOD], epochs=item[EPOCHS]).name
                           if METHOD in item else RandomInit(item[SOURCE]).name)
    for argument in ("tracker", "segmenter", "cell"):
        values[argument] = values.get("model")
    for argument, value in values.items():
        if value is not None and hasattr(args, argument) and getattr(args, argument) is None:
            setattr(args, argument, value)
