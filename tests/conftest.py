"""Shared fixtures: real MNIST (fetched once into a cache), one short real training run, real exports.

The expensive things are session-scoped, so the whole suite trains once and exports once: also when pytest-xdist
runs it in several worker processes (pyproject's addopts), which then share one build of each (`built_once`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.data import ensure_mnist
from toolkit.formats import FORMATS

REPO = Path(__file__).resolve().parents[1]

# pytest-xdist's workers share the cores: a worker whose torch runs a thread per core fights the other worker's
# threads for them, and OpenMP's spinning threads waste what they win. Each worker takes its share.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


def run_cli(*args: str | os.PathLike) -> Result:
    """Invoke the real typer app in-process, as a user's shell would."""
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return Result(r.exit_code, r.stdout, r.stderr)


def run_process(*args: str | os.PathLike, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """Run `python -m toolkit ...` (or any argv) in a separate process."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, **kwargs)


# `python -m toolkit` with RLIMIT_FSIZE set by the child itself before the toolkit loads: a write past the limit
# fails with EFBIG, as on a full disk (Python ignores SIGXFSZ)
_ON_A_SMALL_DISK = ("import resource, runpy, sys; n = int(sys.argv.pop(1)); "
                    "resource.setrlimit(resource.RLIMIT_FSIZE, (n, n)); "
                    "runpy.run_module('toolkit', run_name='__main__', alter_sys=True)")


def run_on_a_small_disk(max_bytes: int, *args: str | os.PathLike, timeout: float = 300
                        ) -> subprocess.CompletedProcess:
    """Run `python -m toolkit ARGS` in a process that cannot write a file past `max_bytes`. The child sets the
    limit, not a preexec_fn: that runs in a fork of this process, whose threads (JAX's, once a tflite export has
    run here; JAX warns at every fork) may hold locks the forked child then waits on forever."""
    return run_process(sys.executable, "-c", _ON_A_SMALL_DISK, str(max_bytes), *args, timeout=timeout)


def train_cut_after_first_epoch_then_resumed(config, data_dir: Path, run_dir: Path):
    """Train `config` into `run_dir`, stopped (as by Ctrl-C) after its first epoch, then resumed to the end;
    returns the resumed run's result."""
    from toolkit.checkpoint import load_checkpoint
    from toolkit.train import train

    def interrupt_after_first(stats, total):
        if stats.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, data_dir, run_dir, on_epoch=interrupt_after_first)
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] == 1
    resumed = train(config, data_dir, run_dir, resume=True)
    assert resumed.resumed_from_epoch == 1 and len(resumed.history) == config.epochs
    return resumed


# The plain progress lines a stage that ran over 2 s leaves on stderr in a pipe (see toolkit/cli/progress.py)
_CLOCK = r"\d+:\d\d(:\d\d)?"
PROGRESS_LINE = re.compile(rf"^(?!error:)\S.*(, {_CLOCK} elapsed, ETA ({_CLOCK}|-:--)|: done(, .+)? in {_CLOCK}"
                           rf"|: started {_CLOCK} ago)$")


NO_BF16 = frozenset({"avx2", "avx512f", "avx512_vnni"})  # an Ice Lake: AVX-512 VNNI, no bf16


def fake_cpu_flags(patcher, flags) -> None:
    """Make toolkit.sysinfo report `flags` as this CPU's (patcher: a monkeypatch, or its context)."""
    from toolkit import sysinfo

    patcher.setattr(sysinfo, "cpu_flags", lambda path="/proc/cpuinfo": frozenset(flags))


def assert_one_line_error(result, code: int | None = None) -> str:
    """A user error: non-zero exit, one 'error:' line on stderr (after any progress lines), and no traceback."""
    stderr = result.stderr.strip()
    exit_code = result.exit_code if isinstance(result, Result) else result.returncode
    assert exit_code != 0, result.stdout
    if code is not None:
        assert exit_code == code, stderr
    assert "Traceback" not in stderr and "Traceback" not in result.stdout
    lines = [line for line in stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name` that `build(folder)` fills, built once per test run: under pytest-xdist the first worker
    builds it under a lock in the folder all workers share, and the others wait for it and reuse it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder, done = root / name, root / f"{name}.built"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


SHARED_BUILDS = ("trained", "exported")  # built once per run by whichever worker first needs them


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Within each file, the tests that need no shared build run first: while one worker trains and exports, the
    other gets through those instead of waiting on the lock (pytest-xdist hands out whole files, in order)."""
    module_rank = {}
    for item in items:
        module_rank.setdefault(item.nodeid.split("::")[0], len(module_rank))
    items.sort(key=lambda item: (module_rank[item.nodeid.split("::")[0]],
                                 any(name in item.fixturenames for name in SHARED_BUILDS)))


@pytest.fixture(autouse=True)
def _console_as_it_was():
    """The CLI's --quiet/--debug stay set on its shared console after an in-process run; a test that prints through
    that console next must not inherit them."""
    from toolkit.cli.common import _state, out

    saved, quiet = dict(_state), out.quiet
    yield
    _state.update(saved)
    out.quiet = quiet


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """Real MNIST, verified; shared across test sessions in $TOOLKIT_TEST_DATA or <repo>/.cache/mnist."""
    path = Path(os.environ.get("TOOLKIT_TEST_DATA") or REPO / ".cache" / "mnist")
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{path}.lock"):  # several workers, or test runs, fetch it once
        ensure_mnist(path)
    return path


def _train(folder: Path, mnist_dir: Path) -> None:
    result = run_cli("train", "--epochs", "1", "--out", folder / "convnet", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mnist_dir) -> Path:
    """One epoch of the default recipe on all 60,000 images, through the CLI. Returns the run folder."""
    return built_once(tmp_path_factory, "runs", lambda folder: _train(folder, mnist_dir)) / "convnet"


@pytest.fixture(scope="session")
def short_run(tmp_path_factory, mnist_dir) -> Path:
    """One epoch on the first 500 training images on the CPU, through the CLI: a real checkpoint in seconds, for
    tests that copy and damage one. Returns the run folder."""
    def build(folder: Path) -> None:
        result = run_cli("train", "--epochs", "1", "--train-limit", "500", "--device", "cpu", "--out",
                         folder / "run", "--data-dir", mnist_dir)
        assert result.exit_code == 0, result.stderr

    return built_once(tmp_path_factory, "short-run", build) / "run"


# Formats left out of the shared export because building them takes long; their own tests export them
# (test_torch_export.py, test_edge_formats.py).
SLOW_FORMATS = ("aoti", "executorch", "tflite")  # AOTInductor compiles C++: 20-60 s on 2 cores; the
# on-device formats take a minute more


@pytest.fixture(scope="session")
def exported(tmp_path_factory, trained, mnist_dir) -> Path:
    """Every format (but SLOW_FORMATS) and precision exported from the trained checkpoint, through the CLI."""
    def build(out: Path) -> None:
        fast = ",".join(f for f in FORMATS if f not in SLOW_FORMATS)
        result = run_cli("export", "--checkpoint", trained / "checkpoint.pt", "--format", fast, "--precision",
                         "all", "--out", out, "--data-dir", mnist_dir, "--calibration-size", "300")
        assert result.exit_code == 0, result.stderr

    return built_once(tmp_path_factory, "exported", build)


@pytest.fixture
def exported_copy(tmp_path, exported) -> Path:
    """A private copy of the exported folder that a test may damage."""
    copy = tmp_path / "exported"
    shutil.copytree(exported, copy)
    return copy


@pytest.fixture
def png(tmp_path) -> Path:
    """A blank 28x28 grayscale PNG, for commands that need an image but not a digit."""
    from PIL import Image

    path = tmp_path / "d.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
