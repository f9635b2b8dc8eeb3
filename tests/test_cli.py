"""The command line as scripts and pipes see it: plain line-per-epoch output, --version, --quiet."""

import json
import re
import subprocess
import sys

import pytest

from tests.conftest import run_process
from toolkit import __version__
from toolkit.recipes import make_config


def test_version(python):
    done = run_process(python, "-m", "toolkit", "--version")
    assert done.returncode == 0 and done.stdout.strip() == f"toolkit {__version__}"


def test_train_into_a_pipe_prints_each_epoch_as_it_finishes(tmp_path, mnist_dir):
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "train", "--epochs", "2", "--train-limit", "3000",
                             "--out", tmp_path / "run", "--data-dir", mnist_dir],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append((line.rstrip("\n"), proc.poll()))
    proc.wait(timeout=300)
    assert proc.returncode == 0, proc.stderr.read()
    text = [line for line, _ in lines]
    assert text[0].startswith("training convnet (fast recipe)")
    assert text[1].startswith("epoch=1/2  train loss=") and text[2].startswith("epoch=2/2  ")
    assert lines[1][1] is None  # the first epoch's line arrived while training was still running
    assert text[3].startswith("convnet: 431,080 parameters") and text[4].startswith("wrote ")
    assert not any(ch in "".join(text) for ch in "┏━│└")  # no table borders in a pipe
    # each epoch shows the highest rate its steps used: the one-cycle schedule (a quarter of the 2 x 24 steps
    # warming up from lr / 25) peaks at the recipe's lr in epoch 1, and only falls in epoch 2, from where it starts
    lr = make_config().lr
    epochs = json.loads((tmp_path / "run" / "history.json").read_text())["epochs"]
    assert epochs[0]["lr"] == pytest.approx(lr / 25) and epochs[0]["peak_lr"] == pytest.approx(lr)
    assert epochs[1]["peak_lr"] == epochs[1]["lr"] < lr
    assert [re.search(r"  peak lr=(\S+)  ", line).group(1) for line in text[1:3]] == \
        [f"{e['peak_lr']:.3g}" for e in epochs]


def test_quiet_prints_nothing_but_errors(tmp_path, mnist_dir, python):
    done = run_process(python, "-m", "toolkit", "--quiet", "train", "--epochs", "1", "--train-limit", "1000",
                       "--out", tmp_path / "run", "--data-dir", mnist_dir)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    done = run_process(python, "-m", "toolkit", "-q", "export", "--checkpoint", tmp_path / "run" / "checkpoint.pt",
                       "--out", tmp_path / "exported", "--format", "onnx", "--data-dir", mnist_dir)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done.stderr
    failed = run_process(python, "-m", "toolkit", "-q", "train", "--lr", "nan", "--out", tmp_path / "x")
    assert failed.returncode == 2 and failed.stdout == "" and failed.stderr.startswith("error: lr must be")


def test_json_dash_prints_the_json_alone_on_stdout(exported, mnist_dir, python):
    import json

    done = run_process(python, "-m", "toolkit", "bench", "--artifacts", exported, "--runtime", "onnxruntime",
                       "--format", "onnx", "--precision", "fp32", "--batch-sizes", "1", "--iterations", "3",
                       "--rounds", "1", "--warmup", "1", "--no-matmul-peak", "--no-verify", "--json", "-",
                       "--data-dir", mnist_dir)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # nothing but the JSON: no table, no notes
    assert {p["batch_size"] for p in report["points"]} == {1}
    assert not (exported / "-").exists()


# With torch unimportable (None in sys.modules makes `import torch` fail), a bad option still gets its own one-line
# error: the options are checked before torch loads, so a mistake costs a fraction of a second, not torch's import.
_WITHOUT_TORCH = """
import sys
sys.modules["torch"] = None
from toolkit.cli import main
sys.argv = ["toolkit", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("args, message", [
    (["train", "--lr", "nan"], "lr must be a number"),
    (["train", "--model", "resnet"], "unknown model 'resnet'"),
    (["train", "--device", "tpu"], "unknown device 'tpu'"),
    (["export", "--opset", "99"], "opset 99 is out of range"),
    (["export", "--precision", "int8", "--calibration-size", "0"], "calibration-size must be"),
], ids=["train-lr", "train-model", "train-device", "export-opset", "export-calibration"])
def test_bad_options_are_refused_before_torch_loads(tmp_path, python, args, message):
    (tmp_path / "c.pt").write_bytes(b"never read")
    where = ["--checkpoint", tmp_path / "c.pt"] if args[0] == "export" else []
    done = run_process(python, "-c", _WITHOUT_TORCH, *args, *where, "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# An empty item in a comma list is a malformed list, never read as a shorter one (`--batch-sizes 1,,2` as 1,2):
# refused in one line, before torch loads, whatever the list holds (numbers, formats, precisions)
@pytest.mark.parametrize("args", [
    ["bench", "--batch-sizes", "1,,2"],
    ["bench", "--concurrency", "2,"],
    ["export", "--precision", "fp32,,int8"],
    ["verify", "--format", ",onnx"],
    ["bench", "--batch-sizes", "1, ,2"],
], ids=["bench-batch-sizes", "bench-concurrency-trailing", "export-precision", "verify-format-leading", "blank"])
def test_an_empty_item_in_a_comma_list_is_refused(tmp_path, python, args):
    done = run_process(python, "-c", _WITHOUT_TORCH, *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: the list {args[-1]!r} has an empty item"), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_comma_lists_take_spaces_around_items_and_repeated_flags():
    from toolkit.cli.common import _csv, _ints

    assert _ints(["1, 8", " 64 "], "batch sizes") == [1, 8, 64]
    assert _csv(["onnx ,torchscript", "openvino"]) == ["onnx", "torchscript", "openvino"]


# A signal that arrives while the CLI's modules still load: the hook sends it as `import toolkit.cli` starts,
# then lets the import go on. `python -m toolkit` and the `toolkit` script share the one entry point.
_SIGNAL_WHILE_LOADING = """
import os, runpy, signal, sys

SIGNUM = getattr(signal, sys.argv[1])

class SignalOnCliImport:
    def find_spec(self, name, path=None, target=None):
        if name == "toolkit.cli":
            os.kill(os.getpid(), SIGNUM)
        return None

sys.meta_path.insert(0, SignalOnCliImport())
sys.argv = ["toolkit", "--help"]
runpy.run_module("toolkit", run_name="__main__")
"""


@pytest.mark.parametrize("signame, code, line", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated")])
def test_a_signal_while_the_cli_loads_is_one_line_and_its_exit_code(tmp_path, python, signame, code, line):
    done = run_process(python, "-c", _SIGNAL_WHILE_LOADING, signame, cwd=tmp_path, timeout=60)
    assert done.returncode == code, done.stderr
    assert done.stderr == f"{line}\n" and done.stdout == ""


def test_the_toolkit_script_starts_where_python_m_toolkit_does():
    from importlib.metadata import entry_points

    script = next(e for e in entry_points(group="console_scripts") if e.name == "toolkit")
    assert script.value == "toolkit.launch:main"
