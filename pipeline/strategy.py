"""Choose a ``tf.distribute`` strategy by name from the training config.

default                 one device (CPU or the single GPU)
mirrored                all local GPUs, synchronous all-reduce
multi_worker_mirrored   several processes/hosts; cluster from ``TF_CONFIG``
parameter_server        variables on PS tasks, workers run steps asynchronously;
                        cluster from ``TF_CONFIG`` or an in-process cluster
                        (``in_process: {workers: 2, ps: 1}``, used by the tests); a variable
                        of at least ``ps_min_shard_bytes`` (large embedding tables) is split
                        row-wise over the PS tasks (``MinSizePartitioner``)
tpu                     ``TPUStrategy`` from a ``TPUClusterResolver`` (``tpu: <name or grpc address>``);
                        the same code path as the others; there is no TPU on the
                        development machines, so it is built but not exercised here.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, Optional

import tensorflow as tf

from pipeline.config import ConfigError, option

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "parameter_server", "tpu")
IN_PROCESS_KEYS = ("workers", "ps")


@dataclasses.dataclass
class StrategyConfig:
    name: str = option("default", choices=STRATEGIES)
    tpu: Optional[str] = None  # TPU name / grpc address for name == tpu
    in_process: Optional[Dict[str, int]] = option(None, min=1)  # {workers: N, ps: M} for parameter_server
    communication: str = option("auto", choices=("auto", "ring", "nccl"))  # multi_worker_mirrored
    shard_policy: str = option("data", choices=("data", "file", "auto"))  # how input is split across workers
    ps_min_shard_bytes: int = option(256 << 10, min=1)  # parameter_server: shards of at least this size, <= 1 per PS

    def __post_init__(self):
        unknown = sorted(set(self.in_process or {}) - set(IN_PROCESS_KEYS))
        if unknown:
            raise ConfigError(f"in_process: unknown key(s) {unknown}; known: {list(IN_PROCESS_KEYS)}")


def make_strategy(cfg: StrategyConfig) -> tf.distribute.Strategy:
    if cfg.name == "default":
        return tf.distribute.get_strategy()
    if cfg.name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if cfg.name == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise RuntimeError("strategy multi_worker_mirrored needs the TF_CONFIG environment variable "
                               "(cluster and task of this worker)")
        impl = {"auto": tf.distribute.experimental.CommunicationImplementation.AUTO,
                "ring": tf.distribute.experimental.CommunicationImplementation.RING,
                "nccl": tf.distribute.experimental.CommunicationImplementation.NCCL}[cfg.communication]
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=impl))
    if cfg.name == "parameter_server":
        resolver = (_in_process_cluster(**cfg.in_process) if cfg.in_process
                    else tf.distribute.cluster_resolver.TFConfigClusterResolver())
        num_ps = len(resolver.cluster_spec().as_dict().get("ps", []))
        partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=cfg.ps_min_shard_bytes, max_shards=max(num_ps, 1))
        return tf.distribute.experimental.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    # tpu
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=cfg.tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def auto_shard_policy(cfg: StrategyConfig):
    return {"data": tf.data.experimental.AutoShardPolicy.DATA,
            "file": tf.data.experimental.AutoShardPolicy.FILE,
            "auto": tf.data.experimental.AutoShardPolicy.AUTO}[cfg.shard_policy]


def _tf_config() -> Dict[str, Any]:
    return json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")


def is_chief() -> bool:
    """This process writes the run's outputs: the ``chief`` task, else worker 0, else alone."""
    cfg = _tf_config()
    task = cfg.get("task", {})
    if "chief" in cfg.get("cluster", {}):
        return task.get("type") == "chief"
    return task.get("type", "worker") == "worker" and task.get("index", 0) == 0


def task_name() -> str:
    """``<type>-<index>`` of this process in a TF_CONFIG cluster (``worker-0`` alone)."""
    task = _tf_config().get("task", {})
    return f"{task.get('type', 'worker')}-{task.get('index', 0)}"


_IN_PROCESS: Dict[Any, Any] = {}


def free_port() -> int:
    """A localhost TCP port nobody listens on now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


def _in_process_cluster(workers: int = 2, ps: int = 1):
    """Start worker and PS servers in this process (TensorFlow's documented test set-up)."""
    key = (workers, ps)
    if key in _IN_PROCESS:
        return _IN_PROCESS[key]
    ports = [free_port() for _ in range(workers + ps)]
    spec = {"worker": [f"localhost:{p}" for p in ports[:workers]],
            "ps": [f"localhost:{p}" for p in ports[workers:]]}
    cluster = tf.train.ClusterSpec(spec)
    cfg = tf.compat.v1.ConfigProto()
    # each worker server needs a thread per concurrent step plus one, or the in-process
    # cluster deadlocks on machines with fewer cores than workers + 1
    cfg.inter_op_parallelism_threads = max(os.cpu_count() or 1, workers + 1)
    for job, n in (("worker", workers), ("ps", ps)):
        for i in range(n):
            tf.distribute.Server(cluster, job_name=job, task_index=i, protocol="grpc", config=cfg, start=True)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")
    _IN_PROCESS[key] = resolver
    return resolver
