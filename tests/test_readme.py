"""The README holds: its tour runs as written after `make main`, its figures are what the committed JSON renders,
its links and pictures exist, and its commands are the ones CI and the Makefile use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from toolkit.data import load_split

README = REPO / "README.md"
TOUR_TIMEOUT_S = 300  # per block; the whole tour takes well under two minutes on 2 cores


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section of a markdown text."""
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def make_main_recipe() -> list[str]:
    """The lines of the Makefile's `main` recipe."""
    return re.search(r"^main:.*?\n((?:\t.*\n?)+)", (REPO / "Makefile").read_text(), flags=re.M).group(1).splitlines()


def make_main_run_folder() -> str:
    """Where `make main` trains: its train line sets no folder, so train's default for its default options."""
    import typer.main

    from toolkit.cli import app

    [train_line] = [line for line in make_main_recipe() if re.search(r"\btrain\b", line)]
    assert not re.search(r"--(out|model|recipe|seed)\b", train_line), train_line
    command = typer.main.get_command(app).commands["train"]
    default = {p.name: p.default for p in command.params}
    return f"runs/{default['model']}-{default['recipe']}-seed{default['seed']}"


def test_the_tour_assumes_the_folder_make_main_trains_into():
    folder = make_main_run_folder()
    assert f"`{folder}/`" in section(README.read_text(), "Two commands")


def test_make_main_bench_measures_the_peaks_its_json_is_said_to_hold():
    [cpu_bench] = [line for line in make_main_recipe() if "bench-cpu.json" in line]
    assert "--matmul-peak" in cpu_bench.split()
    assert "(`--matmul-peak`)" in " ".join(section(README.read_text(), "Two commands").split())


def test_the_readme_test_commands_are_what_ci_runs():
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines() if line.startswith("make ")]
    assert ci, "no make command in .ci/run"
    shown = [line.split("#")[0].strip() for block in bash_blocks(section(README.read_text(), "Two commands"))
             for line in block.splitlines()]
    for command in ci:
        assert command in shown, f".ci/run calls {command!r}; the README does not show it"


def _report():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import report
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return report


@pytest.mark.parametrize("path", [README, REPO / "benchmarks" / "README.md"], ids=lambda p: p.parent.name or "root")
def test_the_rendered_blocks_match_the_committed_json(path):
    report = _report()
    text = path.read_text()
    assert report.BLOCK.search(text), f"{path.name} has no report.py block"
    assert report.filled(text) == text, (f"{path.relative_to(REPO)} differs from what the JSON renders; run "
                                         "python benchmarks/report.py --write README.md benchmarks/README.md")


def test_the_headline_compares_fast_with_the_notebook_as_the_training_section_does():
    """The headline's one-cell version of the comparison says the same sentence as benchmarks/README.md."""
    report = _report()
    [sentence] = re.findall(r"`fast` reaches 99\.0% \d+x sooner than .*?98\.8%(?: \(a lower bound\))?",
                            "\n".join(report.headline()))
    assert sentence in "\n".join(report.sections()).replace("**", "")


def test_the_make_main_table_has_a_pinned_column_only_where_a_pinned_run_is_committed():
    report = _report()
    run = json.loads((report.RESULTS / "make_main.json").read_text())
    pinned = {**run, "pinned_cpus": [0], "total_seconds": 999.0,
              "steps": [{**step, "seconds": 98.7} for step in run["steps"][1:]]}  # one command it did not run
    for committed in (None, pinned):
        lines = report.make_main(run, committed)
        start = lines.index(next(line for line in lines if line.startswith("| command ")))
        # the commands table's rows, not the bench goals table after it
        rows = [line for line in lines[start:lines.index("", start)] if line.startswith("| ")]
        cells = [len(row.strip("|").split("|")) for row in rows]
        assert cells == [4 if committed else 3] * len(rows), rows  # header, each command and the total
        if committed:
            assert rows[0].endswith("| seconds on 1 of its cores |")
            assert rows[1].endswith("| - |") and all(row.endswith("| 98.7 |") for row in rows[2:-1])
            assert rows[-1] == f"| all | {run['total_seconds']:.0f} | {run['total_lines_printed']} | 999 |"


@pytest.mark.parametrize("doc", [README, *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_and_picture_exists(doc):
    text = doc.read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert local, f"{doc.name} links to nothing"
    for link in local:
        assert (doc.parent / link).exists(), f"{doc.relative_to(REPO)} links to {link}, which does not exist"


def heading_slugs(text: str) -> list[str]:
    """A markdown text's headings as GitHub slugs them, in order: the rendered text lowercased, every character but
    letters, digits, `_`, `-` and spaces dropped, spaces turned to `-`."""
    prose = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.S | re.M)  # a `# comment` in a code block is no heading
    slugs = []
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", prose, flags=re.M):
        rendered = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link shows its text
        slugs.append(re.sub(r"[^\w\- ]", "", rendered.strip().lower()).replace(" ", "-"))
    return slugs


def heading_anchors(text: str) -> list[str]:
    """The anchors GitHub gives the headings: their slugs, a repeated one suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    anchors = []
    for slug in heading_slugs(text):
        anchors.append(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_heading_anchors_follow_github():
    text = ("# Top\n```bash\n# not a heading\n```\n## Inside a web page (`web.py`, 2 cores)\n"
            "### From C++: the [AOTI](x.md) one\n")
    assert heading_anchors(text + "## Top ##\n## Top\n") == [
        "top", "inside-a-web-page-webpy-2-cores", "from-c-the-aoti-one", "top-1", "top-2"]


@pytest.mark.parametrize("doc", [README, *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_to_a_heading_finds_it(doc):
    """A link's `#anchor` names a heading of the page it points to (a wrong one opens the page at its top), and no
    page repeats a heading (GitHub would tell the two apart only by a -1 at the end of the second's anchor)."""
    for link, anchor in re.findall(r"\]\(([^)#\s]*)#([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+://", link):
            continue
        target = (doc.parent / link) if link else doc
        assert anchor in heading_anchors(target.read_text()), (
            f"{doc.relative_to(REPO)} links to {link}#{anchor}, a heading {link or doc.name} does not have")
    slugs = heading_slugs(doc.read_text())
    assert len(set(slugs)) == len(slugs), sorted({s for s in slugs if slugs.count(s) > 1})


def test_the_shipped_digits_are_the_mnist_test_images_they_are_named_after(mnist_dir):
    x, _ = load_split(mnist_dir, "test")
    digits = sorted((REPO / "examples" / "digits").glob("mnist-test-*.png"))
    assert len(digits) == 3
    for path in digits:
        index = int(re.fullmatch(r"mnist-test-(\d+)\.png", path.name).group(1))
        with Image.open(path) as img:
            np.testing.assert_array_equal(np.asarray(img.convert("L")), x[index])


def run_block(block: str, cwd: Path) -> subprocess.CompletedProcess:
    """A README block run by bash in `cwd`, inside the environment (`. .venv/bin/activate`) with this checkout's
    toolkit, whichever one the environment installed."""
    env = {k: v for k, v in os.environ.items() if k != "TOOLKIT_DATA_DIR"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TOUR_TIMEOUT_S)


@pytest.fixture
def after_make_main(tmp_path, trained, exported, mnist_dir) -> Path:
    """A scratch folder laid out as `make main` leaves the repository: the checkpoint in its run folder, the
    export in exported/, MNIST in data/, and the files the tour reads from the checkout (examples/digits)."""
    root = tmp_path / "checkout"
    run = root / make_main_run_folder()
    run.mkdir(parents=True)
    shutil.copy(trained / "checkpoint.pt", run / "checkpoint.pt")
    shutil.copytree(exported, root / "exported")
    (root / "data").symlink_to(mnist_dir)
    shutil.copytree(REPO / "examples" / "digits", root / "examples" / "digits")
    # The shared export names its checkpoint where the session fixture trained it (relative to the manifest);
    # a link there makes the copied manifest true of this layout, as it is of make main's own.
    recorded = json.loads((root / "exported" / "manifest.json").read_text())["checkpoint"]
    where = (root / "exported" / recorded).resolve()
    if where != (run / "checkpoint.pt").resolve():
        where.parent.mkdir(parents=True, exist_ok=True)
        where.symlink_to(run / "checkpoint.pt")
    return root


def test_the_tour_runs_in_order_after_make_main(after_make_main):
    blocks = bash_blocks(section(README.read_text(), "Tour"))
    assert len(blocks) >= 5, "the tour lost its blocks"
    for i, block in enumerate(blocks, 1):
        start = time.monotonic()
        done = run_block(block, after_make_main)
        took = time.monotonic() - start
        assert done.returncode == 0, f"tour block {i} exited {done.returncode} after {took:.0f} s:\n{block}\n" \
                                     f"{done.stderr[-3000:]}"
        assert "error:" not in done.stderr, f"tour block {i}:\n{block}\n{done.stderr[-3000:]}"
    # what the tour says it leaves: a second run and its export, each in its own folder
    assert (after_make_main / "runs" / "mlp" / "checkpoint.pt").is_file()
    manifest = json.loads((after_make_main / "exported" / "mlp" / "manifest.json").read_text())
    assert {a["file"] for a in manifest["artifacts"]} == {"model.onnx"}


def test_your_own_model_shows_how_to_make_the_files_its_commands_read(tmp_path, trained):
    """Pasted after `make main`, the section's lines make the files its commands read: the class in my_models.py,
    then the weights files; the export of that class then runs as written."""
    text = section(README.read_text(), "Your own model")
    [code] = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (tmp_path / "my_models.py").write_text(code)
    run = tmp_path / make_main_run_folder()
    run.mkdir(parents=True)
    shutil.copy(trained / "checkpoint.pt", run / "checkpoint.pt")
    [block] = bash_blocks(text)
    lines = block.splitlines()
    made = [line for line in lines if line.startswith("python ")]
    own_class = [line for line in lines if "--model-code" in line]
    assert made and len(own_class) == 1, block
    done = run_block("\n".join([*made, *own_class]), tmp_path)
    assert done.returncode == 0 and "error:" not in done.stderr, done.stderr[-3000:]
    for line in lines:
        words = line.split()
        for option in ("--checkpoint", "--model-code"):
            if option in words:
                assert (tmp_path / words[words.index(option) + 1].split(":")[0]).is_file(), line
    assert (tmp_path / "exported" / "tiny" / "manifest.json").is_file()


def test_results_from_another_kind_of_cpu_are_shown_beside_the_main_ones():
    report = _report()
    sections, headline = "\n".join(report.sections()), "\n".join(report.headline())
    main = [json.loads(path.read_text()) for path in report.RESULTS.glob("*.json")]
    main_cpus = {report.cpu(run["machine"]) for run in main if "cpu_cores" in run.get("machine", {})}
    assert main_cpus
    for folder in report.OTHER_CPUS:
        for path in sorted((report.RESULTS / folder).glob("*.json")):
            run = json.loads(path.read_text())
            where = report.cpu(run["machine"])
            assert where not in main_cpus  # its figures name a CPU that none of the main results names
            if path.name == "train_speed_float32_1core.json":  # beside the float32 row of the same CPU's run
                pinned = run["summary"]["fast in float32"]["median_seconds_to_target"]
                assert f"{pinned:.1f} s pinned to 1 core, `{path.name}`" in headline
                continue
            if path.name == "train_speed_modes.json":  # the headline's rows only
                for timed in run["summary"].values():
                    assert f"99.0% after {timed['median_seconds_to_target']:.1f} s" in headline
            else:
                assert f"Measured on {where}: `benchmarks/results/{folder}/{path.name}`." in sections
            assert f"| {where} |" in headline
