"""bench/step_profile.py (issue 15's per-step breakdown): op events are sorted into the right kinds,
and a profiled run attributes each dropout implementation's own ops to ``dropout``."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "bench"))

from step_profile import kind_of  # noqa: E402


@pytest.mark.parametrize("event, kind", [
    # both dropout implementations, forward and gradient, under Keras' uniquified scopes
    ("ctr_model/dnn/dnn/mlp/dropout_2/stateless_dropout/stateless_random_uniform/StatelessRandomUniformV2:"
     "StatelessRandomUniformV2", "dropout"),
    ("gradient_tape/ctr_model/dnn/dnn/mlp/dropout_1/stateless_dropout/SelectV2:SelectV2", "dropout"),
    ("ctr_model/dnn/dnn/mlp/dropout/StatelessRandomUniformFullIntV2:StatelessRandomUniformFullIntV2", "dropout"),
    ("gradient_tape/ctr_model/dnn/dnn/mlp/dropout_1/mul:Mul", "dropout"),
    ("ctr_model/dnn/dnn/mlp/act_1/Relu:_FusedMatMul", "matmul"),
    ("gradient_tape/ctr_model/dnn/dnn/mlp/dense_2/MatMul/MatMul_1:MatMul", "matmul"),
    ("gradient_tape/ctr_model/dnn/dnn/mlp/dense_0/BiasAdd/BiasAddGrad:BiasAddGrad", "bias+relu grad"),
    ("gradient_tape/ctr_model/dnn/dnn/mlp/act_1/ReluGrad:ReluGrad", "bias+relu grad"),
    ("IsFinite_15:IsFinite", "finiteness checks"),
    ("Adam/UnsortedSegmentSum_9:UnsortedSegmentSum", "optimizer"),
    ("ctr_model/embedding/embedding_lookup_4:ResourceGather", "embedding"),
    ("IteratorGetNext:IteratorGetNext", "input"),
    ("ctr_model/dnn/dnn/logit/BiasAdd:BiasAdd", "other"),
])
def test_op_events_sorted_into_kinds(event, kind):
    assert kind_of(*event.rsplit(":", 1)) == kind


@pytest.mark.slow
def test_a_profiled_run_finds_each_dropout_s_own_ops(tmp_path):
    from test_bench_movielens import _write_ml1m

    _write_ml1m(tmp_path / "ml-1m")
    out = tmp_path / "profile.json"
    done = subprocess.run([sys.executable, os.path.join(REPO, "bench", "step_profile.py"), "--movielens",
                           str(tmp_path / "ml-1m"), "--work", str(tmp_path / "work"), "--configs",
                           "float32+uniform_dropout", "float32", "--warmup", "1", "--steps", "2", "--repeats", "1",
                           "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    uniform, bits = json.loads(out.read_text())["results"]
    for r in (uniform, bits):
        assert r["op_ms_per_step"]["dropout"] > 0 and r["op_ms_per_step"]["matmul"] > 0
        assert r["op_ms_per_step"]["input"] > 0  # tf.data's get-next is traced under a name of its own
        assert r["op_ms_per_step_total"] == pytest.approx(sum(r["op_ms_per_step"].values()))
    # tf.nn's float uniforms before, 32-bit integer draws (split into 16-bit halves) after (both
    # implementations fold the step seed with an integer draw, which is no help to tell them apart)
    assert "dropout: StatelessRandomUniformV2" in uniform["op_types_ms_per_step"]
    assert "dropout: StatelessRandomUniformFullIntV2" in bits["op_types_ms_per_step"]
    assert "dropout: StatelessRandomUniformV2" not in bits["op_types_ms_per_step"]
