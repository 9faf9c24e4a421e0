"""Ready-made training settings, and what a run of given settings will cost.

The estimate scales the default recipe's runs measured on 2 CPU cores
(docs/benchmarks.md, docs/data-at-scale.md): time grows with the training
images, the epochs, the pixels and the backbone's compute; memory is a base
that grows with batch x pixels; the frozen-stage cache
(core.training.frozen_cache) is disk, not memory. It is rough (other work on
the machine changes it), and an upper bound for time where early stopping
ends a run sooner. Free of TensorFlow: the Train page estimates as you type.
"""
from __future__ import annotations

from dataclasses import asdict

from core.runs.train_config import RETIRED

# The 224-px recipe's seed-0 run: 17.9 min for 18 epochs on 425 training slices, ResNet-50 (docs/benchmarks.md).
REFERENCE_MINUTES_PER_EPOCH = 17.9 / 18
REFERENCE_TRAIN_IMAGES = 425
OVERHEAD_MINUTES = 1.5   # starting TensorFlow, building the model, decoding, evaluating (a smoke run: 2.7 min)
BASE_GB = 1.5            # TensorFlow and the model
ACTIVATIONS_GB = 2.3     # fine-tuning at batch 32, 224 px (3.8 GB measured - base)
BACKBONE_COMPUTE = {"resnet50": 1.0, "resnet101": 1.9, "resnet152": 2.8}  # GFLOPs 4.1 / 7.8 / 11.5
# Relative time per epoch by where fine-tuning starts (docs/benchmarks.md: conv2 20.7 min, conv3 17.9, conv5 10.7).
TRAIN_FROM_TIME = {"conv1": 1.5, "conv2": 1.15, "conv3": 1.0, "conv4": 1.0, "conv5": 0.6, "head": 0.3}
# The frozen boundary's activation (fraction of the side, channels) cached per view, by train_from.
CACHED_ACTIVATION = {"conv2": (1 / 4, 64), "conv3": (1 / 4, 256), "conv4": (1 / 8, 512),
                     "conv5": (1 / 16, 1024), "head": (1 / 32, 2048)}

# Names only: each button's minutes come from estimate() (preset_label), as the
# Train page's estimate box does, so a label never promises another time than the box.
QUICK_LOOK = "Quick look"
# Beside the Quick look button (its tooltip and Train's caption): the label itself must fit at 1280 px.
QUICK_LOOK_NOTE = ("not for predictions: it trains on 40 scans per split (a smoke run, hidden from comparisons), "
                   "below the quality floor a deployed model must pass")
# Home's first model trains the default with these changes: a first answer within about 10 minutes on
# 2 cores, fit to answer (it passes the quality floor) but below the default on COVID-CT's validation and
# test splits (docs/choosing-a-recipe.md).
FAST = "Fast"
FAST_CHANGES = {"input_size": 160, "finetune_epochs": 10}
FAST_NOTE = "fit to answer but below the default recipe on COVID-CT, at half its time"
PRESETS = {
    QUICK_LOOK: {"max_images_per_split": 40, "input_size": 128, "head_epochs": 1, "finetune_epochs": 2},
    "Default": {},
    "Thorough": {"finetune_epochs": 30, "early_stopping_patience": 8},
}


def preset_config(name: str, defaults) -> dict:
    """Every setting of the preset `name`: the defaults (a TrainConfig) with its changes."""
    return {**asdict(defaults), **PRESETS[name]}


def minutes_text(minutes: float) -> str:
    """Minutes as every estimate is shown (the presets' labels, the Train page's box, Home)."""
    return f"{max(1, round(minutes))} min"


def preset_label(name: str, defaults, n_train: int) -> str:
    """The preset's button label: its name and its estimated time (estimate(), the box's figure)."""
    config = type(defaults)(**preset_config(name, defaults))
    return f"{name} (up to {minutes_text(estimate(config, n_train)['minutes'])})"


def estimate(config, n_train: int) -> dict:
    """{"minutes", "gigabytes" (memory), "cache_gigabytes" (disk)} for
    training `config` on n_train training slices (before max_images_per_split)."""
    if config.max_images_per_split:
        n_train = min(n_train, config.max_images_per_split)
    pixels = (config.input_size / 224) ** 2
    compute = BACKBONE_COMPUTE.get(config.backbone, 1.0)
    per_epoch = (REFERENCE_MINUTES_PER_EPOCH * n_train / REFERENCE_TRAIN_IMAGES * pixels * compute
                 * TRAIN_FROM_TIME.get(config.train_from, 1.0))
    minutes = OVERHEAD_MINUTES + per_epoch * (config.head_epochs + config.finetune_epochs)
    cache = 0.0
    if config.train_from in CACHED_ACTIVATION:
        side, channels = CACHED_ACTIVATION[config.train_from]
        per_scan = (config.input_size * side) ** 2 * channels * 2  # float16
        cache = RETIRED["cached_views"] * n_train * per_scan / 1e9
    gigabytes = BASE_GB + ACTIVATIONS_GB * config.batch_size / 32 * pixels * compute
    return {"minutes": minutes, "gigabytes": gigabytes, "cache_gigabytes": cache}
