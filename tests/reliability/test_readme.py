"""The README as a user meets it: every command line of README.md's ```bash blocks, and every
``ctrflow`` line of the ```bash blocks in docs/, runs as written from a fresh clone.

The commands run in order, through the CLI, in a temporary folder laid out like a clone
(``configs/`` linked in; the method grids of docs/results/, tens of runs each, in a test of
their own after the README's data steps), so that ``demo_out/`` and every other relative path lands there.
Only these changes are made to a command, and only by appending ``--set`` options (later
options win):

- size: SHRINK below appends smaller sizes per sub-command (impressions, users, epochs, steps,
  batch, seeds; a grid's runs skip the per-epoch analysis plots); ``preprocess`` also runs Beam
  in one process (the same job, less start-up);
- a leading ``~`` is the user's home: a temporary folder (no shell expands it here);
- ``ctrflow load NAME --src DIR``: DIR is where the user put the downloaded files; the test
  writes a small file set in that dataset's format there first (FIXTURES).

Skip rule (SKIPPED_PROGRAMS): README lines starting with ``make`` (they re-create the venv and
run the whole suite), ``tensorboard`` (a server that never exits) and ``.`` (activating the
venv: the test runs the venv's own Python). Any other README line must be a ``ctrflow`` command,
so a new kind of command cannot go untested. A command fails the test if it exits non-zero
(a missing config or option included), if it holds a placeholder (``<...>``, ``...``), or if
it names a path outside the clone (anything absolute or climbing out with ``..``; ``~`` only as
``load --src``).
"""
import os
import shlex

import numpy as np
import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIPPED_PROGRAMS = {"make", "tensorboard", "."}
RESULT_GRIDS = os.path.join("docs", "results") + os.sep  # method grids: their own test (long)
SHRINK = {
    "simulate": ["num_impressions=5000", "rec_impressions=500", "random_impressions=1000", "num_users=500",
                 "num_items=300", "num_ads=800", "shard_rows=2000", "chunk_rows=2000"],
    "preprocess": ["runner.num_workers=1", "runner.running_mode=in_memory"],
    "train": ["epochs=1", "steps_per_epoch=3", "batch_size=256", "eval_batch_size=4096", "verbose=0"],
    "compare": ["seeds=[1]", "base_overrides.epochs=1", "base_overrides.steps_per_epoch=2",
                "base_overrides.batch_size=256", "base_overrides.eval_batch_size=4096", "base_overrides.analysis=[]"],
}


# ---- extracting the commands -------------------------------------------------------------------
def bash_lines(path):
    """(line number, command) of every ```bash block of a markdown file; continuation lines
    (trailing backslash) are joined, comments dropped."""
    out, in_bash, pending = [], False, None
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.startswith("```"):
                in_bash = not in_bash and line.strip() in ("```bash", "```sh")
                continue
            if not in_bash:
                continue
            text = line.split(" #", 1)[0].rstrip() if not line.lstrip().startswith("#") else ""
            if pending is not None:
                pending = (pending[0], pending[1] + " " + text.rstrip("\\").strip())
            elif text.strip():
                pending = (number, text.rstrip("\\").strip())
            if pending is not None and not text.endswith("\\"):
                out.append(pending)
                pending = None
    return out


def commands():
    """README's command lines, then the ctrflow lines of docs/ (sorted by file), in order."""
    found = [("README.md", n, c) for n, c in bash_lines(os.path.join(REPO, "README.md"))]
    docs = sorted(os.path.join(d, f) for d, _, files in os.walk(os.path.join(REPO, "docs"))
                  for f in files if f.endswith(".md"))
    for path in docs:
        rel = os.path.relpath(path, REPO)
        found += [(rel, n, c) for n, c in bash_lines(path) if c.startswith("ctrflow ")]
    return found


# ---- checks and changes ------------------------------------------------------------------------
def check_paths(where, argv):
    """Every path a command names lies inside the clone (``~`` only as the download folder)."""
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[-1]  # an option's value, or the argument itself
        if "<" in arg or "..." in arg:
            pytest.fail(f"{where}: placeholder in '{arg}': not runnable as written")
        if "/" not in value and not value.startswith(".."):
            continue
        if value.startswith("~"):
            assert argv[0] == "load" and argv[i - 1] == "--src", f"{where}: '~' path '{value}' outside the clone"
            continue
        assert not os.path.isabs(value) and not os.path.normpath(value).startswith(".."), \
            f"{where}: path '{value}' lies outside the clone"


def runnable(where, line, home):
    """The argv to run for one README/docs line (None: skipped by the rule above)."""
    words = shlex.split(line)
    if words[0] in SKIPPED_PROGRAMS and where.startswith("README"):
        return None
    assert words[0] == "ctrflow", f"{where}: '{line}' is neither a ctrflow command nor skipped explicitly"
    argv = words[1:]
    check_paths(where, argv)
    argv = [home + a[1:] if a.startswith("~") else a for a in argv]
    for option in SHRINK.get(argv[0], []):
        argv += ["--set", option]
    return argv


# ---- fixtures in the formats of the datasets the docs load -------------------------------------
def _ml1m(src, rng):
    """MovieLens 1M's three '::' files: 40 users x 60 movies, 1,200 ratings over 60 days."""
    users = [f"{u}::{'FM'[u % 2]}::{[1, 18, 25, 35][u % 4]}::{u % 21}::{10000 + u}" for u in range(1, 41)]
    movies = [f"{m}::Movie {m} (19{60 + m % 40})::{['Drama', 'Comedy|Romance', 'Action'][m % 3]}"
              for m in range(1, 61)]
    t = np.sort(rng.integers(978_000_000, 978_000_000 + 60 * 86_400, 1200))
    ratings = [f"{rng.integers(1, 41)}::{rng.integers(1, 61)}::{rng.integers(1, 6)}::{ts}" for ts in t]
    for name, lines in (("users.dat", users), ("movies.dat", movies), ("ratings.dat", ratings)):
        with open(os.path.join(src, name), "w", encoding="latin-1") as fh:
            fh.write("\n".join(lines) + "\n")


def _kuairand_likehate(src, rng):
    """The like/hate slice's TSV and KuaiRand-Pure's user table: 30 users, 1,500 rows, 14 days."""
    import sys

    sys.path.insert(0, os.path.join(REPO, "tests", "pipeline"))
    from test_loaders import USER_HEADER, USER_ROWS

    users = [f"{u}," + USER_ROWS[u % 2].split(",", 1)[1] for u in range(30)]
    header = ("user_id\tvideo_id\tdate\thourmin\ttime_ms\tis_click\tis_follow\tis_comment\tis_forward\t"
              "long_view\tplay_time_ms\tduration_ms\tcomment_stay_time\tis_profile_enter\tlabel\ttimestamp")
    rows = []
    for ms in np.sort(rng.integers(1_649_376_000_000, 1_649_376_000_000 + 14 * 86_400_000, 1500)):
        flags = rng.integers(0, 2, 6)
        like = int(rng.random() < 0.75)
        rows.append("\t".join(map(str, [rng.integers(0, 30), rng.integers(1000, 1100), 20220408, 1200, ms,
                                        *flags[:5], rng.integers(0, 60_000), rng.integers(1_000, 90_000),
                                        rng.integers(0, 9_000), flags[5], like, "2022-04-08 12:00:00"])))
    with open(os.path.join(src, "user_features_pure.csv"), "w") as fh:
        fh.write("\n".join([USER_HEADER, *users]) + "\n")
    with open(os.path.join(src, "processed_standard_kcore_15.tsv"), "w") as fh:
        fh.write("\n".join([header, *rows]) + "\n")


FIXTURES = {"ml1m": _ml1m, "kuairand_likehate": _kuairand_likehate}


def write_download(argv):
    """Before ``load NAME --src DIR``: a small set of NAME's files in DIR."""
    name, src = argv[1], argv[argv.index("--src") + 1]
    assert name in FIXTURES, f"no fixture in the format of '{name}': add one to FIXTURES"
    os.makedirs(src, exist_ok=True)
    FIXTURES[name](src, np.random.default_rng(5))


# ---- the tests -----------------------------------------------------------------------------------
def test_extraction_finds_the_readme_pipeline():
    """The extractor sees the README's commands (an empty list would make the test below vacuous)."""
    found = [c for w, _, c in commands() if w == "README.md"]
    verbs = {shlex.split(c)[1] for c in found if c.startswith("ctrflow ")}
    assert {"simulate", "preprocess", "train", "evaluate", "compare", "load", "export"} <= verbs, found


def test_every_documented_command_parses_and_names_existing_configs(tmp_path):
    """Fast half of the check: each command's options exist (the CLI's own parser) and the
    configs it names are in the repository."""
    from pipeline.cli import build_parser

    for where, number, line in commands():
        argv = runnable(f"{where}:{number}", line, str(tmp_path))
        if argv is None:
            continue
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{where}:{number}: `{line}`: the ctrflow parser rejects it")
        if "--config" in argv:
            config = argv[argv.index("--config") + 1]
            assert os.path.isfile(os.path.join(REPO, config)), f"{where}:{number}: config '{config}' does not exist"


@pytest.mark.parametrize("line, problem", [
    ("ctrflow load kuairand_likehate --src ../shared/data/kuairand-likehate --out raw/k", "outside the clone"),
    ("ctrflow export /srv/runs/dcnv2 --out demo_out/serving", "outside the clone"),
    ("ctrflow evaluate ~/runs/dcnv2", "outside the clone"),
    ("ctrflow compare --config configs/x.yaml --set base_overrides.data_dir=<sim data>", "placeholder"),
    ("python -m pipeline.cli demo", "neither a ctrflow command nor skipped"),
])
def test_rules_reject_what_a_user_could_not_run(line, problem, tmp_path):
    with pytest.raises((AssertionError, pytest.fail.Exception), match=problem):
        runnable("README.md:1", line, str(tmp_path))


def run_in_clone(tmp_path, cli, documented):
    """Run ``documented`` commands in order in a fresh clone-like folder; returns the clone."""
    clone, home = tmp_path / "clone", tmp_path / "home"
    clone.mkdir()
    home.mkdir()
    os.symlink(os.path.join(REPO, "configs"), clone / "configs")
    for where, number, line in documented:
        argv = runnable(f"{where}:{number}", line, str(home))
        if argv is None:
            continue
        if argv[0] == "load":
            write_download(argv)
        proc = cli(*argv, cwd=str(clone), timeout=3000)
        assert proc.returncode == 0, (f"{where}:{number}: `{line}` exited {proc.returncode}\n"
                                      f"stderr:\n{proc.stderr[-4000:]}\nstdout:\n{proc.stdout[-2000:]}")
    return clone


def _is_grid(where):
    return where.startswith(RESULT_GRIDS)


def _is_compare(line):
    return line.split()[1:2] == ["compare"]


@pytest.mark.slow
def test_every_documented_command_runs_as_written(tmp_path, cli):
    """README's commands and docs/*.md's, except the method grids of docs/results (below)."""
    documented = [c for c in commands() if not _is_grid(c[0])]
    assert len(documented) >= 12, documented
    clone = run_in_clone(tmp_path, cli, documented)
    assert (clone / "demo_out" / "runs" / "dcnv2" / "metrics.json").exists()
    assert (clone / "demo_out" / "compare_backbones" / "report.md").exists()
    assert list((clone / "demo_out" / "serving" / "dcnv2").iterdir())


@pytest.mark.slow
def test_results_grids_check_as_written(tmp_path, cli):
    """docs/results/*.md's method grids, after the README's data steps that write what their
    base configs read (and a results page's own data steps, run as written), with ``--check``: every cell's config loads and every method's model
    builds and compiles on the data (training tens of runs would take 6 minutes of the suite;
    the README's own compare command trains, above)."""
    grids = [(w, n, line + " --check" if _is_compare(line) else line) for w, n, line in commands() if _is_grid(w)]
    data_steps = [c for c in commands() if c[0] == "README.md" and c[2].split()[1:2] in (["simulate"], ["preprocess"],
                                                                                          ["load"])]
    assert grids
    clone = run_in_clone(tmp_path, cli, data_steps + grids)
    for _, _, line in (g for g in grids if _is_compare(g[2])):
        config = line.split("--config", 1)[1].split()[0]
        out_dir = yaml.safe_load(open(os.path.join(REPO, config)))["out_dir"]
        assert not (clone / out_dir).exists(), line  # checked, nothing trained or written
