"""Every figure and number in the docs can be traced: images exist, and every figure or results
table of docs/benchmarks.md and docs/results/*.md names, in its section, the committed script
(``bench/*.py``) or config (``configs/*.yaml``) that made it and its raw results (a committed
``docs/**.json``); a table a bench script renders (its ``table(doc)``) is exactly that rendering
of the named JSON, so a number cannot be edited by hand or drift from its raw results."""
import glob
import importlib.util
import json
import os
import re
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = sorted(glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
RESULT_DOCS = [os.path.join(REPO, "docs", "benchmarks.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "results",
                                                                                            "*.md")))
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|<img[^>]*src=\"([^\"]+)\"")
NUMBER = re.compile(r"\d\.\d|\d,\d{3}")
CODE_PATH = re.compile(r"`([\w./-]+\.(?:py|yaml|json))`")


def sections(path):
    """(heading, text) per section of a markdown file (split at every heading)."""
    text = open(path, encoding="utf-8").read()
    parts = re.split(r"^(#{1,6} .*)$", text, flags=re.M)
    return [("(top)", parts[0])] + list(zip(parts[1::2], parts[2::2]))


def result_tables(text):
    """Markdown tables of a section whose body cells hold measured numbers."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            if any(NUMBER.search(row) for row in current[2:]):
                tables.append("\n".join(current))
            current = []
    return tables


def _bench_module(script):
    """Import a bench script as a module (its own folder on the path, as when it runs)."""
    if os.path.dirname(script) not in sys.path:
        sys.path.insert(0, os.path.dirname(script))
    spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(script))[0], script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_image_a_doc_shows_exists(doc):
    text = open(doc, encoding="utf-8").read()
    for match in IMAGE.finditer(text):
        target = match.group(1) or match.group(2)
        if "://" in target:
            continue
        assert os.path.isfile(os.path.join(os.path.dirname(doc), target)), f"{doc}: image '{target}' is missing"


@pytest.mark.parametrize("doc", RESULT_DOCS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_figure_and_results_table_names_its_script_and_json(doc):
    for heading, text in sections(doc):
        figures = [m.group(1) or m.group(2) for m in IMAGE.finditer(text)]
        tables = result_tables(text)
        if not figures and not tables:
            continue
        where = f"{os.path.relpath(doc, REPO)}, section '{heading.strip('# ')}'"
        named = CODE_PATH.findall(text)
        scripts = [p for p in named if p.startswith(("bench/", "configs/")) and not p.endswith(".json")]
        results = [p for p in named if p.startswith("docs/") and p.endswith(".json")]
        assert scripts, f"{where}: a figure or results table without the script / config that made it"
        assert results, f"{where}: a figure or results table without its raw results (docs/**.json)"
        for path in scripts + results:
            assert os.path.isfile(os.path.join(REPO, path)), f"{where}: '{path}' does not exist"
        for path in results:
            json.load(open(os.path.join(REPO, path)))
        for script in (s for s in scripts if s.endswith(".py")):
            module = _bench_module(os.path.join(REPO, script))
            if not hasattr(module, "table"):
                continue
            rendered = [module.table(json.load(open(os.path.join(REPO, r)))) for r in results]
            for table in tables:  # a rendering may hold several tables: each must be one of them, verbatim
                assert any(table in r.split("\n\n") for r in rendered), (f"{where}: this table is not {script}'s rendering of {results}:\n"
                                           f"{table}\nrendered:\n" + "\n\n".join(rendered))
