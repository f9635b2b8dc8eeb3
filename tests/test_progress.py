"""Progress as a person sees it: on a terminal (rich rendering into an 80-column terminal console), and in a
pipe (a real command's output read line by line while it runs)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import time

import pytest
from rich.console import Console

from tests.conftest import run_cli
from toolkit.cli import common
from toolkit.cli.progress import PIPE_INTERVAL_S, StageProgress, download_progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
ETA = re.compile(r"ETA \d+:\d\d")
ELAPSED = re.compile(r"\d+:\d\d elapsed")


def visible(raw: str) -> list[str]:
    """The screen's lines, as text: escape codes dropped, each carriage-return redraw a line of its own."""
    return [line for line in ANSI.sub("", raw).replace("\r", "\n").splitlines() if line.strip()]


def terminal() -> Console:
    return Console(force_terminal=True, width=80, file=io.StringIO(), color_system="truecolor")


@pytest.fixture
def terminal_consoles(monkeypatch):
    """The CLI's own two consoles, made 80-column terminals for one in-process command (CliRunner captures them)."""
    for console in (common.out, common.err):
        monkeypatch.setattr(console, "_force_terminal", True)
        monkeypatch.setattr(console, "is_interactive", True)
        monkeypatch.setattr(console, "_width", 80)


def test_a_bar_on_a_terminal_shows_description_count_elapsed_and_eta():
    console = terminal()
    with StageProgress("verifying", console=console) as progress:
        progress.update(0, 12, "reference outputs (auto)")
        time.sleep(0.3)
        progress.update(3, 12, "model.int8.onnx in onnxruntime, whose name is too long for the line")
        time.sleep(0.6)  # a few refreshes at 4 per second
    lines = visible(console.file.getvalue())
    assert lines and not any("[progress." in line for line in lines)
    assert all(len(line) <= 80 for line in lines)
    last = lines[-1]
    assert last.startswith("verifying: model.int8.onnx") and "…" in last  # the long name is cut, not the facts
    assert " 3/12 " in last and ELAPSED.search(last) and ETA.search(last), last


def test_a_pipe_gets_plain_lines_first_after_2_s_then_at_the_interval_and_at_the_end():
    sink = Console(file=io.StringIO(), width=200)
    with StageProgress("exporting", console=sink, first_s=0.2, interval_s=0.3) as progress:
        progress.update(1, 4, "onnx fp16")
        time.sleep(1.0)
    lines = sink.file.getvalue().splitlines()
    assert 3 <= len(lines) <= 5, lines  # at 0.2 s, 0.5 s, 0.8 s, then the end
    assert re.fullmatch(r"exporting: onnx fp16 1/4 \(25%\), 0:0\d elapsed, ETA \d+:\d\d", lines[0]), lines[0]
    assert re.fullmatch(r"exporting: done, 1/4 in 0:0\d", lines[-1]), lines[-1]
    assert not any("\x1b" in line for line in lines)


def test_a_stage_over_within_2_s_prints_nothing_in_a_pipe_and_quiet_prints_nothing_anywhere():
    sink = Console(file=io.StringIO(), width=200)
    with StageProgress("verifying", console=sink) as progress:
        progress.update(1, 2, "model.onnx")
    console = terminal()
    with StageProgress("verifying", console=console, quiet=True) as progress:
        progress.update(1, 2, "model.onnx")
        time.sleep(0.3)
    assert sink.file.getvalue() == "" and console.file.getvalue() == ""


def test_downloads_show_megabytes_per_file(terminal_consoles, capsys):
    with download_progress() as on_progress:
        on_progress("train-images-idx3-ubyte.gz", 0, 9_912_422)
        time.sleep(0.3)
        on_progress("train-images-idx3-ubyte.gz", 4_000_000, 9_912_422)
        time.sleep(0.4)
    lines = visible(capsys.readouterr().err)
    assert any(line.startswith("downloading train-images-idx3") and " 4.0/9.9 MB " in line and ETA.search(line)
               for line in lines), lines
    assert not any("[progress." in line for line in lines)


def test_train_on_a_terminal_shows_the_epoch_bar_with_count_and_eta(terminal_consoles, tmp_path, mnist_dir):
    result = run_cli("train", "--epochs", "1", "--train-limit", "512", "--out", tmp_path / "run",
                     "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    lines = visible(result.stdout)
    assert not any("[progress." in line for line in lines + visible(result.stderr))
    bars = [line for line in lines if line.lstrip("│ ").startswith("epoch ")]
    # the bar is drawn as the epoch starts; which count a later frame catches depends on the machine's speed
    assert any(re.search(r"epoch 1/1 .* \d/4 .*elapsed, ETA (\d+:\d\d|-:--)", line) for line in bars), lines
    assert any(re.search(r"│ +1/1 │", line) for line in lines)  # the epoch table's row stays on the screen
    assert all(len(line) <= 80 for line in lines)


def test_bench_on_a_terminal_shows_a_bar_with_count_and_eta(terminal_consoles, exported, mnist_dir, tmp_path):
    result = run_cli("bench", "--artifacts", exported, "--runtime", "onnxruntime", "--format", "onnx",
                     "--precision", "fp32,fp16", "--batch-sizes", "1,64", "--seconds", "0.4", "--rounds", "2",
                     "--no-matmul-peak", "--no-verify", "--json", tmp_path / "b.json", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    lines = visible(result.stderr)
    assert not any("[progress." in line for line in lines)
    bars = [line for line in lines if line.startswith("benchmarking")]
    # the total is what the search plans (probes, then the batch ladder); a frame shows some count of it
    assert any(re.search(r" \d+/\d+ .*elapsed, ETA (\d+:\d\d|-:--)", line) for line in bars), lines


def read_with_times(argv: list[str]) -> tuple[int, list[tuple[float, str]]]:
    """Run argv with stdout and stderr on one pipe; each line with the moment it arrived."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = [(time.monotonic(), line.rstrip("\n")) for line in proc.stdout]
    return proc.wait(timeout=600), lines


def test_verify_in_a_pipe_prints_a_line_at_least_every_10_s(exported, mnist_dir):
    started = time.monotonic()
    code, lines = read_with_times([sys.executable, "-m", "toolkit", "verify", "--artifacts", str(exported),
                                   "--data-dir", str(mnist_dir), "--runtime", "onnxruntime",
                                   "--precision", "fp32,int8"])
    assert code == 0, "\n".join(line for _, line in lines)
    progress = [(t, line) for t, line in lines if line.startswith("verifying")]
    assert progress and all(re.search(r" \d+/\d+ \(\d+%\), \d+:\d\d elapsed, ETA (\d+:\d\d|-:--)$", line)
                            for _, line in progress[:-1]), progress
    assert progress[-1][1].startswith("verifying: done, ")
    times = [started] + [t for t, _ in lines]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # one second of slack for a loaded machine; the first gap includes starting Python and loading the runtimes
    assert max(gaps[1:]) <= PIPE_INTERVAL_S + 1, (gaps, [line for _, line in lines])
    assert lines[-1][0] - started > 2 + gaps[0]  # long enough that the pipe's lines were needed at all
