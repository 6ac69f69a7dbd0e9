"""``EncodeError`` (``features/encodings/values.py``) is an error the user causes and can fix (a bad
encoding option, a raw value, a data directory whose vocabulary does not match its schema): a
``UserError``, so ``ctrflow`` ends with its message, unchanged, and exit code 2, not a traceback."""
import os
import subprocess
import sys

from features import encoders as E
from features.errors import UserError
from serving_fixtures import TASKS, encode_rows, fit_features, make_run_dir, request_rows, tiny_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_encode_error_is_a_user_error_with_its_message():
    exc = E.EncodeError("price", "dense lists must hold exactly 3 values", range(12))
    assert isinstance(exc, UserError) and isinstance(exc, ValueError)
    assert str(exc) == ("feature 'price': dense lists must hold exactly 3 values "
                        "(rows [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] ...)")
    assert (exc.feature, exc.reason, exc.rows) == ("price", "dense lists must hold exactly 3 values", list(range(12)))


def test_export_with_a_vocabulary_that_does_not_match_the_schema_exits_2(tmp_path):
    data_dir, schema = fit_features(str(tmp_path))
    model = tiny_model(schema, "dnn", encode_rows(schema, data_dir, request_rows()))
    run_dir = make_run_dir(str(tmp_path), model, schema, TASKS, data_dir, "dnn")
    vocab = os.path.join(data_dir, schema.feature("gender").encoding["vocab_file"])
    with open(vocab, "a", encoding="utf-8") as fh:
        fh.write("\nextra")  # one entry more than the schema's vocab_size
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "export", run_dir, "--out", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert (f"ctrflow export: error: feature 'gender': vocabulary '{vocab}' has 4 entries, the schema says 3"
            in proc.stderr.splitlines())
