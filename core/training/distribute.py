"""Where training runs: one device, all local GPUs, or several machines.

A thin layer over `tf.distribute`, following the TensorFlow guides
"Distributed training with Keras" and "Multi-worker training with Keras":

- "default": TensorFlow's default strategy, one device.
- "mirrored": `MirroredStrategy`, one replica per local GPU (or per logical
  CPU device when the environment variable COVIDCT_CPU_DEVICES splits the
  CPU, which is how the tests and a GPU-less machine exercise this path).
- "multiworker": `MultiWorkerMirroredStrategy`, one process per machine, the
  cluster described by the `TF_CONFIG` environment variable.

`TrainConfig.batch_size` and the learning rates are per replica: the global
batch is batch_size x replicas and the learning rates grow by the same factor
(the linear scaling rule, Goyal et al. 2017), so one replica trains exactly as
before and N replicas see N times the data per step at N times the step size.
"""
from __future__ import annotations

import dataclasses

import tensorflow as tf
from keras.src import tree
from keras.src.backend.tensorflow import trainer as trainer_module

from core.base.machine import cpu_devices, machine_problems
from core.runs.train_config import STRATEGIES


def split_cpu(devices: int) -> None:
    """Present the CPU as `devices` logical devices. TensorFlow allows this
    only before its runtime starts, so a process that already ran TensorFlow
    code gets a clear error instead of a silent single device."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError as error:
        if len(tf.config.list_logical_devices("CPU")) != devices:
            raise RuntimeError(f"cannot split the CPU into {devices} devices once TensorFlow "
                               f"has started in this process: {error}") from error


def problems(name: str) -> list[str]:
    """What is wrong with this strategy, or with this machine for it."""
    found = [] if name in STRATEGIES else [f"strategy {name!r} is not one of {', '.join(STRATEGIES)}"]
    return found + machine_problems(name)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """The strategy a run trains under; call before any other TensorFlow work
    in the process (multi-worker and CPU splitting both require it)."""
    found = problems(name)
    if found:
        raise ValueError("; ".join(found))
    split = cpu_devices()
    if split > 1:
        split_cpu(split)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        if not devices and split > 1:
            devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices or None)
    _patch_keras_for_multiworker()
    return tf.distribute.MultiWorkerMirroredStrategy()


def _patch_keras_for_multiworker() -> None:
    """Keras 3.15's fit fails under MultiWorkerMirroredStrategy in two places
    (keras-team/keras#20585, open); both are mended here, for this strategy
    only, and tests/test_distribute.py checks the result against one device.
    Remove when Keras fixes the issue."""
    trainer_module.TensorFlowTrainer._maybe_symbolic_build = _build_from_local_batch
    if not getattr(trainer_module.reduce_per_replica, "mended", False):
        trainer_module.reduce_per_replica = _mean_logs_across_workers(trainer_module.reduce_per_replica)


def _build_from_local_batch(self, iterator=None, data_batch=None):
    """Replaces Keras' TensorFlowTrainer._maybe_symbolic_build under
    MultiWorkerMirroredStrategy. Keras 3.15 builds a distributed model from
    the first batch after averaging it across replicas with strategy.reduce,
    which this strategy cannot do for a nested batch, so fit fails at once
    (keras-team/keras#20585, open). Only shapes matter for the build: use
    this worker's first replica's part of the batch, with no communication."""
    if self._distribute_strategy is None:
        return
    if iterator is not None:
        for _, _, batches in iterator:
            data_batch = tree.map_structure(_first_local_value, next(batches))
            break
    with self.distribute_strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _mean_logs_across_workers(reduce_per_replica):
    """Keras averages each step's logs (scalar metrics) across workers with
    strategy.reduce(..., axis=0), which fails on a scalar: average them over
    replicas instead (axis=None), as MirroredStrategy does."""
    def reduce(values, strategy, reduction="auto"):
        if reduction in ("auto", "mean") and isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    reduce.mended = True
    return reduce


def _first_local_value(value):
    if isinstance(value, tf.distribute.DistributedValues):
        return value.values[0]
    return value


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run folder. In a multi-worker cluster
    that is the 'chief' task, or worker 0 when there is no chief; the other
    workers train in a scratch folder and discard it."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def worker_name(strategy: tf.distribute.Strategy) -> str:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return "local"
    return f"{resolver.task_type}-{resolver.task_id}"


def scale_for_replicas(config, replicas: int):
    """The config a step actually uses: global batch and learning rates scaled
    by the number of replicas (module docstring)."""
    if replicas == 1:
        return config
    return dataclasses.replace(config, batch_size=config.batch_size * replicas,
                               head_lr=config.head_lr * replicas, finetune_lr=config.finetune_lr * replicas)
