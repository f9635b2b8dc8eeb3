"""The run guard: every model run stops on Ctrl-C (exit 130) and SIGTERM (exit 143) within seconds, and a file
the toolkit did not write is stopped at --time-limit (exit 2, one line), even inside ONNX Runtime's C++ code.
An export folder can be forged (a manifest and golden file that match an endless model), so verify and bench
over a folder are bounded the same way."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import PROGRESS_LINE, run_cli
from tests.onnx_models import endless_loop, toolkit_metadata

REPO = Path(__file__).resolve().parents[1]


def _forged_folder(folder: Path, mnist_dir: Path) -> Path:
    """An export folder whose manifest and golden file match an endless model with toolkit metadata."""
    from toolkit import fileio
    from toolkit.artifacts import Artifact, write_manifest
    from toolkit.data import load_split
    from toolkit.golden import write_golden

    data = endless_loop(folder / "model.onnx", image=True, metadata=toolkit_metadata()).read_bytes()
    _, labels = load_split(mnist_dir, "test")
    sha = "0" * 64
    golden = write_golden(folder, np.full((len(labels), 10), np.log(0.1), np.float32), labels,
                          source_checkpoint="c.pt", source_sha256=sha)
    artifact = Artifact("model.onnx", "onnx", "fp32", len(data), fileio.digest(data),
                        [{"name": "x", "dtype": "float32", "shape": ["N", 1, 28, 28]}],
                        [{"name": "log_probs", "dtype": "float32", "shape": ["N", 10]}], "c.pt", sha, 10.0, opset=17)
    write_manifest(folder, [artifact], {"checkpoint": "c.pt"}, golden)
    return folder


@pytest.fixture(scope="module")
def loops(tmp_path_factory, mnist_dir) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loops")
    return {"random": endless_loop(folder / "endless.onnx"),
            "toolkit": endless_loop(folder / "endless-toolkit.onnx", image=True, metadata=toolkit_metadata()),
            "forged": _forged_folder(tmp_path_factory.mktemp("forged"), mnist_dir)}


def _commands(loops: dict[str, Path], mnist_dir: Path, png: Path) -> dict[str, list]:
    return {"compare": ["compare", loops["random"], loops["random"], "--limit", "10", "--data-dir", mnist_dir],
            "bench": ["bench", loops["random"], "--batch-sizes", "1", "--data-dir", mnist_dir],
            "predict": ["predict", png, "--model", loops["toolkit"]],
            "verify": ["verify", "--artifacts", loops["forged"], "--reference", "golden", "--data-dir", mnist_dir],
            "bench-folder": ["bench", "--artifacts", loops["forged"], "--runtime", "onnxruntime", "--batch-sizes", "1",
                             "--data-dir", mnist_dir]}


COMMANDS = ["compare", "bench", "predict", "verify", "bench-folder"]


def _start(args: list, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "toolkit", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# Ctrl-C on every command; SIGTERM reaches the same watcher (runners/base.py waits on both), so two commands, one
# over a file and one over a folder, show its own exit code without paying 4 s a command for the rest.
SIGNALS = [*((c, signal.SIGINT, 130) for c in COMMANDS), *((c, signal.SIGTERM, 143) for c in ("bench", "verify"))]


@pytest.mark.parametrize("command, signum, code", SIGNALS, ids=[f"{s.name.lower()}-{c}" for c, s, _ in SIGNALS])
def test_a_signal_stops_an_endless_model_within_two_seconds(loops, mnist_dir, png, tmp_path, command, signum, code):
    proc = _start(_commands(loops, mnist_dir, png)[command], tmp_path)
    try:
        time.sleep(4)  # long enough to be inside the endless Loop (imports and session creation take ~2 s)
        assert proc.poll() is None, proc.communicate()
        sent = time.monotonic()
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=10)
        assert time.monotonic() - sent < 2.0
        assert proc.returncode == code, err
        assert "Traceback" not in out + err and "error:" not in err
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("command", COMMANDS)
def test_the_time_limit_stops_an_endless_model(loops, mnist_dir, png, tmp_path, command):
    proc = _start([*_commands(loops, mnist_dir, png)[command], "--time-limit", "1"], tmp_path)
    try:
        out, err = proc.communicate(timeout=30)
        # a stage past 2 s prints plain progress lines before the error; they are no part of it
        lines = [line for line in err.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
        # verify goes on with the other artifacts: the stopped one fails it (exit 1), named in the one line
        assert proc.returncode == (1 if command == "verify" else 2), err
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "model.onnx" * (command in ("verify", "bench-folder")) in lines[0]
        assert "ran longer than the time limit of 1 s" in lines[0], err
        assert "Traceback" not in out
    finally:
        proc.kill()
        proc.wait()


def test_the_time_limit_is_stated_in_help():
    import typer

    from toolkit.cli import app

    commands = typer.main.get_command(app).commands
    for command in ("compare", "bench", "predict", "verify"):
        option = next(p for p in commands[command].params if "--time-limit" in p.opts)
        assert option.default == 60 and "may never finish" in option.help
        assert ("that artifact fails" if command == "verify" else "(exit 2)") in option.help
        text = re.sub(r"\s+", " ", run_cli(command, "--help").stdout)
        assert re.search(r"--time-limit SECONDS .*may never finish\. \[default: 60(\.0)?\]", text), text


def test_the_guard_cancels_onnx_runtime_in_process(loops):
    """In-process too: the watcher thread stops the call at the time limit and the runner reports it."""
    from toolkit.errors import ArtifactError
    from toolkit.runners import RunnerOptions
    from toolkit.runners.foreign import open_file

    runner = open_file(loops["random"], RunnerOptions(time_limit_s=0.5))
    t0 = time.monotonic()
    with pytest.raises(ArtifactError, match="time limit of 0.5 s"):
        runner.run(np.zeros((2, 28, 28), np.uint8))
    assert time.monotonic() - t0 < 3
