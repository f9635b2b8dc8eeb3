"""Weights as people save them: the notebook's own ConvNet, trained the notebook's way and saved with
`torch.save(model.state_dict(), ...)`, exported to every format, verified and benched through the CLI; a class
written outside the toolkit exported with --model-code; and the one-line refusals of what cannot work."""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import assert_one_line_error, run_cli, run_on_a_small_disk, run_process
from toolkit.formats import FORMATS, PRECISIONS

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

TRAIN_STEPS = 300


# --- the notebook, as its author wrote it ----------------------------------------------------------------------

class ConvNet(nn.Module):
    def __init__(self):
        super(ConvNet, self).__init__()  # noqa: UP008 (the notebook's own line)
        self.conv1 = nn.Conv2d(1, 20, 5, 1)
        self.conv2 = nn.Conv2d(20, 50, 5, 1)
        self.fc_layer1 = nn.Linear(4*4*50, 500)
        self.fc_layer2 = nn.Linear(500, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(x, 2, 2)
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2, 2)
        x = x.view(-1, 4*4*50)
        x = F.relu(self.fc_layer1(x))
        x = self.fc_layer2(x)
        return F.log_softmax(x, dim=1)


def train(model, device, train_loader, optimizer, max_steps):
    model.train()
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx + 1 == max_steps:
            break
    return loss.item()


def notebook(data_root: Path, save_to: Path) -> float:
    """The notebook's cells: load MNIST with torchvision, train with SGD, save the state_dict."""
    from torchvision import datasets, transforms

    torch.manual_seed(1)
    device = torch.device("cpu")
    train_loader = torch.utils.data.DataLoader(
        datasets.MNIST(data_root, train=True, download=False,
                       transform=transforms.Compose([
                           transforms.ToTensor(),
                           transforms.Normalize((0.1307,), (0.3081,))
                       ])),
        batch_size=64, shuffle=True)
    model = ConvNet().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = train(model, device, train_loader, optimizer, TRAIN_STEPS)
    torch.save(model.state_dict(), save_to)
    return loss


@pytest.fixture(scope="module")
def notebook_weights(tmp_path_factory, mnist_dir) -> Path:
    pytest.importorskip("torchvision")
    path = tmp_path_factory.mktemp("notebook") / "mine_state.pt"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model on a shared machine: one thread is several times faster than two
    try:
        loss = notebook(mnist_dir, path)
    finally:
        torch.set_num_threads(threads)
    assert loss < 1.0
    return path


# The slowest formats to build. aoti compiles the program pt2 saves (pt2 is here and below; test_torch_export.py
# pays for the C++ compile once); a class of one's own below exports the on-device formats from a state_dict.
SLOW = ("aoti", "executorch", "tflite")


@pytest.fixture(scope="module")
def notebook_export(tmp_path_factory, notebook_weights, mnist_dir) -> Path:
    """The notebook's weights in every format and precision, exported once for the tests below, but the slowest
    to build (SLOW)."""
    out = tmp_path_factory.mktemp("notebook_export")
    formats = ",".join(f for f in FORMATS if f not in SLOW)
    result = run_cli("export", "--checkpoint", notebook_weights, "--format", formats, "--precision", "all",
                     "--out", out, "--data-dir", mnist_dir, "--calibration-size", "200")
    assert result.exit_code == 0, result.stderr
    return out


def test_the_notebooks_weights_export_to_every_format(notebook_export, notebook_weights):
    manifest = json.loads((notebook_export / "manifest.json").read_text())
    built = {(a["format"], a["precision"]) for a in manifest["artifacts"]}
    assert built == {(f, p) for f in FORMATS for p in PRECISIONS
                     if p in FORMATS[f].precisions and f not in SLOW}
    assert manifest["model"] == {"name": "convnet", "args": {}, "weights": "state_dict"}
    from toolkit.fileio import file_digest

    assert manifest["checkpoint_sha256"] == file_digest(notebook_weights)
    assert manifest["golden"]["source_sha256"] == file_digest(notebook_weights)
    accuracy = manifest["golden"]["reference_accuracy"]
    assert all(a["test_accuracy"] == accuracy for a in manifest["artifacts"])  # measured at export
    assert accuracy > 80


def test_the_notebooks_export_verifies(notebook_export, mnist_dir, tmp_path):
    report = verified(notebook_export, mnist_dir, tmp_path)
    assert report["reference"].startswith("checkpoint")  # the model rebuilt from the state_dict alone
    fp32 = [r for r in report["results"] if r["judged_as"] == "fp32"]
    assert {r["format"] for r in fp32} == {name for name, f in FORMATS.items()
                                           if "fp32" in f.precisions and name not in SLOW}
    assert all(r["passed"] and r["agreement"] == r["n"] == 10_000 for r in fp32), fp32


def verified(folder: Path, mnist_dir: Path, tmp_path: Path) -> dict:
    """verify's JSON report on `folder`. Every file is run; only the fp32 runs must pass here: after a few hundred
    steps (or none) a model has many near-ties, which int8 and bf16 may flip past their tolerances."""
    report_path = tmp_path / "verify.json"
    result = run_cli("verify", "--artifacts", folder, "--data-dir", mnist_dir, "--batch1-images", "20",
                     "--json", report_path)
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    report = json.loads(report_path.read_text())
    assert not [r for r in report["results"] if any(f.startswith("not run") for f in r["failures"])], report
    assert all(r["passed"] for r in report["results"] if r["judged_as"] == "fp32"), result.stdout
    return report


def test_the_notebooks_export_benches(notebook_export, mnist_dir, tmp_path):
    result = run_cli("bench", "--artifacts", notebook_export, "--data-dir", mnist_dir, "--runtime", "onnxruntime",
                     "--format", "onnx", "--batch-sizes", "1,64", "--seconds", "0.2", "--rounds", "1",
                     "--json", tmp_path / "bench.json")
    assert result.exit_code == 0, result.stdout + result.stderr
    points = json.loads((tmp_path / "bench.json").read_text())["points"]
    assert {p["batch_size"] for p in points} == {1, 64}


# --- a class of one's own ----------------------------------------------------------------------------------

MODEL_CODE = '''
    import sys

    import torch
    from torch import nn


    class TinyMLP(nn.Module):
        """Logits out, as most classifiers are written."""

        def __init__(self, hidden=64):
            super().__init__()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, hidden), nn.ReLU(), nn.Linear(hidden, 10))

        def forward(self, x):
            return self.body(x)


    class Scaled(TinyMLP):
        """TinyMLP's weights, its logits scaled: other arguments, the same state_dict."""

        def __init__(self, hidden=64, scale=1.0):
            super().__init__(hidden)
            self.scale = scale

        def forward(self, x):
            return self.body(x) * self.scale


    class Wrong(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(28 * 28, 7)

        def forward(self, x):
            return self.fc(torch.flatten(x, 1))


    class NotAModule:
        pass


    class QuitsWhenBuilt(TinyMLP):
        def __init__(self, hidden=64):
            sys.exit(0)


    class QuitsWhenRun(TinyMLP):
        def forward(self, x):
            sys.exit(0)


    class LogOfLogits(TinyMLP):
        """log() of logits, some negative: NaN."""

        def forward(self, x):
            return self.body(x).log()


    class OneBatchSize(TinyMLP):
        """Written for batches of 3 only."""

        def forward(self, x):
            return self.body(x.reshape(3, 1, 28, 28)).log_softmax(1)


    class QuitsOnLargeBatches(TinyMLP):
        def forward(self, x):
            if len(x) > 3:
                sys.exit(0)
            return self.body(x).log_softmax(1)


    class QuitsWhenTraced(TinyMLP):
        """Fine when run, and when torch.export traces it; TorchScript's trace ends the process."""

        def forward(self, x):
            if torch.jit.is_tracing():
                sys.exit(0)
            return self.body(x).log_softmax(1)


    class CtrlCWhenTraced(TinyMLP):
        def forward(self, x):
            if torch.jit.is_tracing():
                raise KeyboardInterrupt
            return self.body(x).log_softmax(1)


    class CtrlCOnTheExampleBatch(TinyMLP):
        """A Ctrl-C that lands where the exporter wraps it in an error of its own, as torch.onnx does."""

        def forward(self, x):
            if len(x) == 2:
                raise RuntimeError("export failed") from KeyboardInterrupt()
            return self.body(x).log_softmax(1)


    class TermOnTheExampleBatch(TinyMLP):
        def forward(self, x):
            if len(x) == 2:
                from toolkit.cli import Terminated  # what the CLI's SIGTERM handler raises

                raise RuntimeError("export failed") from Terminated()
            return self.body(x).log_softmax(1)


    class QuitsOnTheExampleBatch(TinyMLP):
        """Fine on the probe and the test images; the exporters trace a batch of 2."""

        def forward(self, x):
            if len(x) == 2:
                sys.exit(0)
            return self.body(x).log_softmax(1)
'''


# every format at fp32 but aoti (see SLOW)
OWN_MODEL_FORMATS = tuple(f for f in FORMATS if f != "aoti")


@pytest.fixture(scope="module")
def own_model(tmp_path_factory) -> Path:
    """my_models.py (TinyMLP, Scaled, its broken subclasses, Wrong, NotAModule) and tiny.pt (TinyMLP(hidden=32)'s
    weights) in one folder."""
    import importlib.util

    folder = tmp_path_factory.mktemp("own_model")
    (folder / "my_models.py").write_text(textwrap.dedent(MODEL_CODE))
    spec = importlib.util.spec_from_file_location("my_models_for_test", folder / "my_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    torch.save(module.TinyMLP(hidden=32).state_dict(), folder / "tiny.pt")
    torch.save(module.Wrong().state_dict(), folder / "wrong.pt")
    return folder


def test_a_class_of_ones_own_exports_and_verifies(own_model, mnist_dir, tmp_path):
    out = tmp_path / "exported"
    result = run_cli("export", "--checkpoint", own_model / "tiny.pt", "--model-code",
                     f"{own_model / 'my_models.py'}:TinyMLP", "--model-args", '{"hidden": 32}',
                     "--format", ",".join(OWN_MODEL_FORMATS), "--out", out, "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    assert "returns logits" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["name"] == "TinyMLP" and manifest["model"]["args"] == {"hidden": 32}
    assert manifest["model"]["output"] == "logits" and manifest["model"]["code"].endswith("my_models.py:TinyMLP")

    report = verified(out, mnist_dir, tmp_path)
    # the class is never imported because a manifest names it: the reference is the golden outputs
    assert report["reference"].startswith("golden.npy")
    assert report["reference_note"].startswith("the model came from your code")
    assert {r["format"] for r in report["results"]} == set(OWN_MODEL_FORMATS)
    assert all(r["agreement"] == 10_000 for r in report["results"] if r["judged_as"] == "fp32")

    # bench: the PyTorch baseline cannot be rebuilt without the code, so over every runtime it is left out with
    # that reason (the plan bench makes, without timing it); asked for by name, it is one line
    from toolkit.bench.config import BenchConfig
    from toolkit.bench.search import plan_manifest

    plan = plan_manifest(BenchConfig(artifacts=str(out), data_dir=str(mnist_dir), precisions=("fp32",), verify=False))
    assert "your own code" in plan.skipped["runtime pytorch"] and plan.checkpoint is None
    assert {c.runtime for c in plan.candidates} >= {"onnxruntime", "torch-export"}
    result = run_cli("bench", "--artifacts", out, "--data-dir", mnist_dir, "--runtime", "onnxruntime,pytorch",
                     "--batch-sizes", "1", "--seconds", "0.05", "--rounds", "1")
    assert "your own code" in assert_one_line_error(result, 2)


def test_results_never_replace_the_model_code_an_export_records(own_model, mnist_dir, tmp_path, monkeypatch):
    """--json, --markdown: never over the model code the manifest records (`--model-code my_models.py:CLASS`, a
    path from the folder export ran in), which the next export of the model imports, nor over any other Python
    file: a .py, a .pyw (a windowed script) or a .pyi (a type stub), in any case."""
    monkeypatch.chdir(tmp_path)
    code = (own_model / "my_models.py").read_text()
    python_files = ("my_models.py", "other.py", "window.pyw", "stubs.pyi", "STUBS.PYI")
    for name in python_files:
        Path(name).write_text(code)
    result = run_cli("export", "--checkpoint", own_model / "tiny.pt", "--model-code", "my_models.py:TinyMLP",
                     "--model-args", '{"hidden": 32}', "--format", "onnx", "--precision", "fp32", "--out", "out",
                     "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    for argv, says in (
        (["verify", "--artifacts", "out", "--json", "my_models.py"], "one of this command's inputs (my_models.py)"),
        (["bench", "--artifacts", "out", "--markdown", "my_models.py"], "one of this command's inputs"),
        (["compare", "out/model.onnx", "out/model.onnx", "--json", "my_models.py"], "it is Python code"),
        (["verify", "--artifacts", "out", "--json", "other.py"], "it is Python code"),
        (["verify", "--artifacts", "out", "--json", "window.pyw"], "it is Python code"),
        (["bench", "--artifacts", "out", "--markdown", "stubs.pyi"], "it is Python code"),
        (["bench", "--artifacts", "out", "--plot", "STUBS.PYI"], "it is Python code"),
    ):
        assert says in assert_one_line_error(run_cli(*argv, "--data-dir", mnist_dir), 2), argv
    assert all(Path(name).read_text() == code for name in python_files)


def test_the_same_weights_as_another_model_are_another_export(own_model, mnist_dir, tmp_path):
    """A folder never mixes models: the same state_dict as another class, with other --model-args, changed code or
    another --input-shape is refused, naming what differs, and replaces the export with --overwrite."""
    code, out = tmp_path / "models.py", tmp_path / "out"
    code.write_text((own_model / "my_models.py").read_text())
    np = pytest.importorskip("numpy")
    np.save(tmp_path / "in.npy", np.random.default_rng(0).standard_normal((4, 4, 14, 14)).astype(np.float32))

    def export(name: str, args: str, *extra):
        return run_cli("export", "--checkpoint", own_model / "tiny.pt", "--model-code", f"{code}:{name}",
                       "--model-args", args, "--out", out, *extra)

    assert export("Scaled", '{"hidden": 32}', "--format", "torchscript", "--data-dir", mnist_dir).exit_code == 0
    before = (out / "manifest.json").read_text()
    for name, args, extra, says in [
        ("Scaled", '{"hidden": 32, "scale": 3.0}', (), '--model-args {"hidden": 32} there, {"hidden": 32, '
         '"scale": 3.0} now'),
        ("TinyMLP", '{"hidden": 32}', (), "model Scaled there, TinyMLP now"),
        ("Scaled", '{"hidden": 32}', ("--input-shape", "4,14,14", "--inputs", tmp_path / "in.npy"),
         "--input-shape 1,28,28 there, 4,14,14 now"),
    ]:
        line = assert_one_line_error(export(name, args, *extra, "--format", "onnx"), 2)
        assert f"holds an export of {own_model / 'tiny.pt'} as another model: {says} (model.ts.pt); " in line
    code.write_text(code.read_text() + "# changed\n")
    line = assert_one_line_error(export("Scaled", '{"hidden": 32}', "--format", "onnx"), 2)
    assert f"as another model: --model-code {code}:Scaled has changed since (model.ts.pt)" in line
    assert (out / "manifest.json").read_text() == before and not (out / "model.onnx").exists()

    # replaced: without a test set, the golden outputs of the model before go too, never kept for this one
    result = export("Scaled", '{"hidden": 32, "scale": 3.0}', "--format", "onnx", "--overwrite",
                    "--data-dir", tmp_path / "no-mnist")
    assert result.exit_code == 0, result.stderr
    assert "removed golden.npy: it was computed from another checkpoint or model" in result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [a["file"] for a in manifest["artifacts"]] == ["model.onnx"] and "golden" not in manifest
    assert manifest["model"]["args"] == {"hidden": 32, "scale": 3.0}
    assert not (out / "model.ts.pt").exists() and not (out / "golden.npy").exists()


def test_the_code_hash_recorded_is_that_of_the_bytes_that_ran(own_model, tmp_path):
    """--model-code FILE.py is read once, and exactly the bytes hashed are run: a file that changes while it is
    imported (here it rewrites itself) cannot pass its new text off as the code the export was built with."""
    import hashlib

    code = tmp_path / "rewrites.py"
    ran = (own_model / "my_models.py").read_text() + textwrap.dedent("""
        from pathlib import Path

        Path(__file__).write_text(Path(__file__).read_text() + "# rewritten while imported\\n")
        """)
    code.write_text(ran)
    result = run_cli("export", "--checkpoint", own_model / "tiny.pt", "--model-code", f"{code}:TinyMLP",
                     "--model-args", '{"hidden": 32}', "--format", "torchscript", "--out", tmp_path / "out",
                     "--data-dir", tmp_path / "no-mnist")
    assert result.exit_code == 0, result.stderr
    assert code.read_text() == ran + "# rewritten while imported\n"  # it changed while it was imported, once
    model = json.loads((tmp_path / "out" / "manifest.json").read_text())["model"]
    assert model["code_sha256"] == hashlib.sha256(ran.encode()).hexdigest()


def test_model_code_that_is_a_fifo_is_refused_at_once(own_model, tmp_path):
    """--model-code naming a FIFO (no writer ever comes) is not read: the open does not wait on it, the descriptor
    is found no regular file, and the export stops with one line, exit 2. Run in processes with a time limit, so a
    read that waits fails the test instead of holding it."""
    import os

    fifo = tmp_path / "models.py"
    os.mkfifo(fifo)
    done = run_process(sys.executable, "-m", "toolkit", "export", "--checkpoint", own_model / "tiny.pt",
                       "--model-code", f"{fifo}:TinyMLP", "--model-args", '{"hidden": 32}', "--format",
                       "torchscript", "--out", tmp_path / "out", "--data-dir", tmp_path / "no-mnist", timeout=120)
    assert f"model code {fifo} is not a regular file" in assert_one_line_error(done, 2)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # the read itself, as when a FIFO is put in the file's place after a look at it
    read = run_process(sys.executable, "-c", "import sys; from toolkit import usermodel; from pathlib import Path; "
                       "usermodel._read_code(Path(sys.argv[1]))", fifo, timeout=60)
    assert "is not a regular file" in read.stderr and read.returncode != 0


# --- refusals: one line, exit 2, nothing written --------------------------------------------------------------

@pytest.mark.parametrize("case, expected", [
    (["--model", "mlp"], "do not fit model mlp"),
    (["--model-code", "{dir}/my_models.py:Missing"], "has no class Missing"),
    (["--model-code", "{dir}/my_models.py:NotAModule"], "is not a torch.nn.Module subclass"),
    (["--model-code", "{dir}/absent.py:TinyMLP"], "does not exist"),
    (["--model-code", "{dir}/my_models.py"], "must be FILE.py:CLASS"),
    (["--model-code", "{dir}/my_models.py:TinyMLP"], "do not fit TinyMLP"),  # weights of hidden=32, built with 64
    (["--model-code", "{dir}/my_models.py:TinyMLP", "--model-args", "{hidden: 32}"], "not valid JSON"),
    (["--model-code", "{dir}/my_models.py:TinyMLP", "--model-args", "[32]"], "must be a JSON object"),
    (["--model-code", "{dir}/my_models.py:TinyMLP", "--model-args", '{"width": 32}'], "unexpected keyword"),
    (["--model-code", "{dir}/my_models.py:TinyMLP", "--model-args", '{"hidden": NaN}'], "holds NaN"),
    (["--model-code", "{dir}/my_models.py:TinyMLP", "--model-args", '{"hidden": 1e400}'], "holds 1e400"),
    (["--model-code", "{dir}/my_models.py:TinyMLP", "--model-args", '{"hidden": ' + "9" * 5000 + "}"],
     "an integer of 5000 digits"),
    (["--model-args", '{"hidden": 32}'], "needs --model or --model-code"),
    (["--model", "convnet", "--model-code", "{dir}/my_models.py:TinyMLP"], "not both"),
], ids=["wrong-builtin", "missing-class", "not-a-module", "missing-file", "no-class", "shape-mismatch",
        "bad-json", "json-not-object", "bad-kwarg", "nan-arg", "infinite-arg", "endless-int", "args-alone", "both"])
def test_bad_model_options_are_one_line(own_model, tmp_path, case, expected):
    out = tmp_path / "out"
    args = [a.replace("{dir}", str(own_model)) for a in case]
    result = run_cli("export", "--checkpoint", own_model / "tiny.pt", *args, "--out", out, "--data-dir", tmp_path)
    assert expected in assert_one_line_error(result, 2)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("model, hint", [
    ([], 'train one with `toolkit train`, or save your model\'s weights with torch.save(model.state_dict(), "'),
    (["--model", "convnet"], 'save your model\'s weights with torch.save(model.state_dict(), "'),
    (["--model-code", "{dir}/my_models.py:TinyMLP"], 'save your model\'s weights with torch.save('),
], ids=["found-from-shapes", "builtin", "own-class"])
def test_a_missing_state_dict_says_how_to_save_one(own_model, tmp_path, model, hint):
    # toolkit train makes no weights of a model named by --model or --model-code
    args = [a.replace("{dir}", str(own_model)) for a in model]
    line = assert_one_line_error(run_cli("export", "--checkpoint", tmp_path / "tiny.pt", *args, "--out",
                                         tmp_path / "out"), 2)
    assert "tiny.pt does not exist; " + hint in line and ("toolkit train" in line) == (not model)


def test_an_output_that_is_not_ten_scores_is_refused(own_model, tmp_path):
    result = run_cli("export", "--checkpoint", own_model / "wrong.pt", "--model-code",
                     f"{own_model / 'my_models.py'}:Wrong", "--out", tmp_path / "out", "--data-dir", tmp_path)
    assert "returns float32 [3, 7]" in assert_one_line_error(result, 2)


BROKEN_MODELS = [
    ("QuitsWhenBuilt", "building QuitsWhenBuilt "),
    ("QuitsWhenRun", "failed on a normalized MNIST batch [3,1,28,28]: SystemExit"),
    ("LogOfLogits", "returns NaN or infinity on the probe batch"),
    ("OneBatchSize", "failed on the MNIST test images (batches of up to 500): RuntimeError"),
    ("QuitsOnLargeBatches", "failed on the MNIST test images (batches of up to 500): SystemExit"),
]


@pytest.mark.parametrize("cls, expected", BROKEN_MODELS, ids=[cls for cls, _ in BROKEN_MODELS])
def test_a_model_that_quits_fails_or_gives_nan_is_refused(own_model, tmp_path, mnist_dir, cls, expected):
    """sys.exit in the user's code is an error, not the end of export; NaN scores would make golden outputs that
    nothing can be verified against."""
    out = tmp_path / "out"
    result = run_cli("export", "--checkpoint", own_model / "tiny.pt", "--model-code",
                     f"{own_model / 'my_models.py'}:{cls}", "--model-args", '{"hidden": 32}', "--out", out,
                     "--format", "onnx", "--data-dir", mnist_dir)
    assert expected in assert_one_line_error(result, 2)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("cls, formats, fails", [
    ("QuitsWhenTraced", "onnx,torchscript", "torchscript/fp32"),
    ("QuitsOnTheExampleBatch", "onnx", "onnx/fp32"),
])
def test_a_model_that_quits_while_exported_is_refused(own_model, tmp_path, mnist_dir, cls, formats, fails):
    """sys.exit while an exporter traces the model is that file's failure, in one line; the files built before it
    go with it, and no manifest is written."""
    out = tmp_path / "out"
    result = run_cli("export", "--checkpoint", own_model / "tiny.pt", "--model-code",
                     f"{own_model / 'my_models.py'}:{cls}", "--model-args", '{"hidden": 32}', "--out", out,
                     "--format", formats, "--data-dir", mnist_dir)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert lines[-1] == f"error: exporting {fails} failed: SystemExit: 0"
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("cls, code, said", [("CtrlCOnTheExampleBatch", 130, "interrupted"),
                                             ("TermOnTheExampleBatch", 143, "terminated")])
def test_ctrl_c_or_sigterm_while_onnx_traces_is_no_exporter_failure(own_model, tmp_path, mnist_dir, cls, code, said):
    """torch.onnx wraps the KeyboardInterrupt in an error of its own: it still ends the export as a signal does."""
    out = tmp_path / "out"
    result = run_cli("export", "--checkpoint", own_model / "tiny.pt", "--model-code",
                     f"{own_model / 'my_models.py'}:{cls}", "--model-args", '{"hidden": 32}', "--out", out,
                     "--format", "onnx", "--data-dir", mnist_dir)
    assert result.exit_code == code and result.stderr.strip().splitlines()[-1] == said, result.stderr
    assert list(out.iterdir()) == []


def _files(folder: Path) -> dict[str, str]:
    """Every file and folder below `folder` (hidden ones too), with each file's SHA-256."""
    from toolkit.fileio import file_digest

    return {str(p.relative_to(folder)): "folder" if p.is_dir() else file_digest(p) for p in sorted(folder.rglob("*"))}


def _export_own(own_model: Path, cls: str, out: Path, mnist_dir, *extra: str):
    return run_cli("export", "--checkpoint", own_model / "tiny.pt", "--model-code",
                   f"{own_model / 'my_models.py'}:{cls}", "--model-args", '{"hidden": 32}', "--out", out,
                   "--data-dir", mnist_dir, *extra)


@pytest.mark.parametrize("first, extra", [("TinyMLP", ("--overwrite",)), ("QuitsWhenTraced", ("--opset", "18"))],
                         ids=["overwrite-another-model", "same-model-changed"])
def test_a_failed_export_leaves_the_folder_as_it_was(own_model, tmp_path, mnist_dir, first, extra):
    """All or nothing: a format that fails after another was built leaves every file of the previous export (and
    its verify results) byte for byte, and nothing of its own."""
    out = tmp_path / "out"
    assert _export_own(own_model, first, out, mnist_dir, "--format", "onnx", "--precision", "fp32,int8").exit_code == 0
    (out / "verify.json").write_text("{}")
    before = _files(out)
    result = _export_own(own_model, "QuitsWhenTraced", out, mnist_dir, "--format", "onnx,torchscript", *extra)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: exporting torchscript/fp32 failed: ")
    assert _files(out) == before


def test_a_failure_after_the_files_are_built_leaves_the_folder_as_it_was(own_model, tmp_path, mnist_dir):
    """A full disk while the golden outputs are written: the models built before are not left unlisted, so the
    folder is as it was and an export there later is not refused."""
    out = tmp_path / "out"
    assert _export_own(own_model, "TinyMLP", out, mnist_dir, "--format", "onnx").exit_code == 0
    before = _files(out)
    args = ["export", "--checkpoint", own_model / "tiny.pt", "--model-code", f"{own_model / 'my_models.py'}:TinyMLP",
            "--model-args", '{"hidden": 32}', "--out", out, "--data-dir", mnist_dir, "--format", "onnx,torchscript",
            "--opset", "18"]
    done = run_on_a_small_disk(250_000, *args)  # golden.npy is 400 KB, the models about 100 KB each
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith(
        f"error: cannot write {out / 'golden.npy'}"), done.stderr
    assert _files(out) == before
    assert _export_own(own_model, "TinyMLP", out, mnist_dir, "--format", "onnx,torchscript").exit_code == 0


def test_a_triton_folder_no_manifest_lists_stays_with_overwrite(own_model, tmp_path, mnist_dir):
    out = tmp_path / "out"
    assert _export_own(own_model, "TinyMLP", out, mnist_dir, "--format", "onnx").exit_code == 0
    (out / "triton" / "mine" / "1").mkdir(parents=True)
    (out / "triton" / "mine" / "config.pbtxt").write_text("mine")
    result = _export_own(own_model, "Scaled", out, mnist_dir, "--format", "onnx", "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert "removed triton/" not in result.stderr
    assert (out / "triton" / "mine" / "config.pbtxt").read_text() == "mine"


@pytest.mark.parametrize("name", ["model.onnx", "golden.npy"])
def test_a_folder_of_an_exported_name_is_refused_before_anything_is_built(own_model, tmp_path, mnist_dir, name):
    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    line = assert_one_line_error(_export_own(own_model, "TinyMLP", out, mnist_dir, "--format", "onnx",
                                             "--overwrite"), 2)
    assert f"{out / name} is a folder, where export writes its {name}; move it away" in line
    assert sorted(p.name for p in out.iterdir()) == [name]


def test_ctrl_c_while_exported_still_interrupts(own_model, tmp_path, mnist_dir):
    out = tmp_path / "out"
    result = run_cli("export", "--checkpoint", own_model / "tiny.pt", "--model-code",
                     f"{own_model / 'my_models.py'}:CtrlCWhenTraced", "--model-args", '{"hidden": 32}', "--out", out,
                     "--format", "onnx,torchscript", "--data-dir", mnist_dir)
    assert result.exit_code == 130 and result.stderr.strip().endswith("interrupted")
    assert list(out.iterdir()) == []


def test_weights_whose_outputs_overflow_are_refused(tmp_path, mnist_dir):
    """Finite weights, but so large that every output is infinite or NaN: refused before anything is written."""
    from toolkit.model import build_model

    torch.save({k: v * 1e25 for k, v in build_model("mlp", hidden_sizes=[16]).state_dict().items()},
               tmp_path / "huge.pt")
    out = tmp_path / "out"
    result = run_cli("export", "--checkpoint", tmp_path / "huge.pt", "--out", out, "--format", "onnx",
                     "--data-dir", mnist_dir)
    line = assert_one_line_error(result, 2)
    # how many of the rows overflow depends on the random weights and on the CPU's arithmetic: most of them do
    assert re.search(r"NaN or infinite log-probabilities on [\d,]+ of the 10,000 MNIST test images", line), line
    assert not out.exists() or not any(out.iterdir())


def test_an_unknown_state_dict_asks_for_its_class(own_model, tmp_path):
    result = run_cli("export", "--checkpoint", own_model / "tiny.pt", "--out", tmp_path / "out",
                     "--data-dir", tmp_path)
    assert "--model-code FILE.py:CLASS" in assert_one_line_error(result, 2)


def test_a_toolkit_checkpoint_takes_no_model_options(tmp_path):
    from toolkit.checkpoint import save_checkpoint
    from toolkit.model import build_model

    save_checkpoint(tmp_path / "checkpoint.pt", {"model": {"name": "mlp", "args": {"hidden_sizes": [8]}},
                                                 "state_dict": build_model("mlp", hidden_sizes=[8]).state_dict(),
                                                 "config": {}, "history": []})
    result = run_cli("export", "--checkpoint", tmp_path / "checkpoint.pt", "--model", "mlp",
                     "--out", tmp_path / "out", "--data-dir", tmp_path)
    assert "names its own model" in assert_one_line_error(result, 2)


def test_a_pickled_model_is_never_unpickled(own_model, tmp_path):
    """A whole pickled module (torch.save(model)) would run code to load: refused, not loaded."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("my_models", own_model / "my_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["my_models"] = module  # pickling a whole module looks its class up by name
    try:
        torch.save(module.TinyMLP(), tmp_path / "whole.pt")
    finally:
        del sys.modules["my_models"]
    result = run_cli("export", "--checkpoint", tmp_path / "whole.pt", "--model-code",
                     f"{own_model / 'my_models.py'}:TinyMLP", "--out", tmp_path / "out", "--data-dir", tmp_path)
    assert "weights-only load refuses" in assert_one_line_error(result, 2)
