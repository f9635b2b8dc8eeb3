"""Progress as a person sees it: on a terminal (rich rendering into an 80-column terminal console), and in a
pipe (a real command's output read line by line while it runs)."""

from __future__ import annotations

import inspect
import io
import json
import math
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import run_cli
from toolkit.cli import common
from toolkit.cli.progress import PIPE_FIRST_S, PIPE_INTERVAL_S, StageProgress, download_progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
ETA = re.compile(r"ETA \d+:\d\d")
ELAPSED = re.compile(r"\d+:\d\d elapsed")


def visible(raw: str) -> list[str]:
    """The screen's lines, as text: escape codes dropped, each carriage-return redraw a line of its own."""
    return [line for line in ANSI.sub("", raw).replace("\r", "\n").splitlines() if line.strip()]


def terminal() -> Console:
    return Console(force_terminal=True, width=80, file=io.StringIO(), color_system="truecolor")


def wake_every_20_ms(wakes: list[float], stop: threading.Event) -> None:
    """Note the time every 20 ms until `stop` is set. A longer gap between two notes is a stretch in which no thread
    of this process could run: the machine's load, or a C call that held the GIL (loading torch, say). A progress
    line may come that much later than due; the tests measure it alongside rather than assume an idle machine."""
    import time  # its source runs in the command's process too (read_with_times)

    while not stop.wait(0.02):
        wakes.append(time.monotonic())


def stalled_s(wakes: list[float], start: float, end: float) -> float:
    """The longest stretch of (start, end) with no wake-up in it: how long the process's threads could not run then
    (before the first wake-up and after the last, not known: counted as stalled)."""
    bounds = [-math.inf, *wakes, math.inf]
    return max(min(b, end) - max(a, start) for a, b in zip(bounds, bounds[1:]) if a < end and b > start)


class TimedLines(io.StringIO):
    """A pipe's reader: the text, and the moment each line was written."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def write(self, text: str) -> int:
        self.times += [time.monotonic()] * text.count("\n")
        return super().write(text)


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
    first_s, interval_s = 0.2, 1.0
    sink = TimedLines()
    wakes: list[float] = []
    stop = threading.Event()
    waker = threading.Thread(target=wake_every_20_ms, args=(wakes, stop))
    waker.start()
    try:
        with StageProgress("exporting", console=Console(file=sink, width=200), first_s=first_s,
                           interval_s=interval_s) as progress:
            progress.update(1, 4, "onnx fp16")
            deadline = time.monotonic() + 60
            while progress.lines < 3 and time.monotonic() < deadline:  # three lines while it runs, however slowly
                time.sleep(0.01)
    finally:
        stop.set()
        waker.join()
    lines = sink.getvalue().splitlines()
    assert len(lines) >= 4, lines
    assert re.fullmatch(r"exporting: onnx fp16 1/4 \(25%\), 0:0\d elapsed, ETA \d+:\d\d", lines[0]), lines[0]
    assert re.fullmatch(r"exporting: done, 1/4 in 0:0\d", lines[-1]), lines[-1]
    assert not any("\x1b" in line for line in lines)
    # each line while it runs is due first_s after the start, then interval_s after the one before. It comes no
    # sooner (the clock's rounding aside), and no later than half an interval after (so never an interval late),
    # plus any time the process could not run at all then: a loaded machine delays it, and no more.
    due = progress.started_at + first_s
    for at, line in zip(sink.times[:-1], lines[:-1]):
        assert due - 0.005 <= at <= due + interval_s / 2 + stalled_s(wakes, due, at), (line, at - due)
        due = at + interval_s


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


def test_compare_on_a_terminal_counts_the_images_with_an_eta(terminal_consoles, exported, mnist_dir):
    result = run_cli("compare", exported / "model.onnx", exported / "model.ts.pt", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    lines = visible(result.stderr)
    bars = [line for line in lines if line.startswith("comparing")]
    # both files' images are counted, chunk by chunk: never the unknown total of a stage that reports nothing
    counts = [tuple(map(int, m.groups())) for line in bars if (m := re.search(r" (\d+)/(\d+) ", line))]
    assert counts and all(total == 20_000 for _, total in counts) and counts[-1][0] == 20_000, lines
    assert all(ELAPSED.search(line) and ETA.search(line) for line in bars if " 20000/20000 " in line), bars
    assert not any("/?" in line or "-:--" in line for line in bars if " 20000/20000 " in line)
    assert all(len(line) <= 80 for line in lines)


def test_compare_reports_each_chunk_of_both_files(exported, mnist_dir):
    from toolkit.compare import CompareConfig, compare

    calls = []
    config = CompareConfig(a=str(exported / "model.onnx"), b=str(exported / "model.ts.pt"), data_dir=str(mnist_dir),
                           limit=2_500)
    report = compare(config, lambda done, total, what: calls.append((done, total, what)))
    assert report.passed and report.n == 2_500
    assert [c[:2] for c in calls] == [(0, 5_000), (1_000, 5_000), (2_000, 5_000), (2_500, 5_000), (2_500, 5_000),
                                      (3_500, 5_000), (4_500, 5_000), (5_000, 5_000)]
    assert calls[0][2] == "opening A: model.onnx" and calls[1][2] == "A: model.onnx in onnxruntime"
    assert calls[4][2] == "opening B: model.ts.pt" and calls[-1][2] == "B: model.ts.pt in torchscript"


FIRST_S, INTERVAL_S = 0.1, 0.5  # the pipe's timing, shortened so any run shows it, whatever the machine's speed


def read_with_times(args: list[str], tmp_path: Path) -> tuple[int, list[tuple[float, str]], list[float]]:
    """Run `toolkit ARGS` with stdout and stderr on one pipe, the pipe's first line after FIRST_S and the next
    every INTERVAL_S (instead of 2 s and 10 s); each line with the moment it arrived, and the moments a thread of the
    command woke (wake_every_20_ms). time.monotonic is the system's clock: the same in both processes."""
    wakes_file = tmp_path / "wakes.json"
    command = "\n".join([
        "from __future__ import annotations",
        "import json, threading",
        inspect.getsource(wake_every_20_ms),
        "wakes = []",
        "threading.Thread(target=wake_every_20_ms, args=(wakes, threading.Event()), daemon=True).start()",
        f"import toolkit.cli.progress as p; p.PIPE_FIRST_S, p.PIPE_INTERVAL_S = {FIRST_S}, {INTERVAL_S}",
        "from toolkit.cli import main",
        "try:",
        "    main()",
        "finally:",
        f"    open({str(wakes_file)!r}, 'w').write(json.dumps(wakes))"])
    proc = subprocess.Popen([sys.executable, "-c", command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = [(time.monotonic(), line.rstrip("\n")) for line in proc.stdout]
    return proc.wait(timeout=600), lines, json.loads(wakes_file.read_text())


@pytest.mark.parametrize("command, args", [
    ("verify", ["--runtime", "onnxruntime", "--precision", "fp32,int8"]),
    ("compare", ["{exported}/model.onnx", "{exported}/model.ts.pt"]),
])
def test_a_pipe_gets_a_line_at_least_every_interval(exported, mnist_dir, tmp_path, command, args):
    assert (PIPE_FIRST_S, PIPE_INTERVAL_S) == (2.0, 10.0)  # what a person's pipe gets
    if command == "verify":
        args = [*args, "--artifacts", str(exported)]
    code, lines, wakes = read_with_times([command, *(a.format(exported=exported) for a in args),
                                          "--data-dir", str(mnist_dir)], tmp_path)
    assert code == 0, "\n".join(line for _, line in lines)
    label = {"verify": "verifying", "compare": "comparing"}[command]
    progress = [(t, line) for t, line in lines if line.startswith(label)]
    assert len(progress) >= 2, lines  # at least one line while it ran, and one at the end
    assert all(re.search(r" \d+/\d+ \(\d+%\), \d+:\d\d elapsed, ETA (\d+:\d\d|-:--)$", line)
               for _, line in progress[:-1]), progress
    assert progress[-1][1].startswith(f"{label}: done, ")
    # one second of slack, plus any time the command's threads could not run (a loaded machine, loading torch)
    late = [(round(b - a - INTERVAL_S, 2), line) for (a, _), (b, line) in zip(progress, progress[1:])
            if b - a > INTERVAL_S + 1 + stalled_s(wakes, a, b)]
    assert len(wakes) > 10 and not late, late
