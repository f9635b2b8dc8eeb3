import json
import signal
import time

import pytest
import torch

from tests.conftest import REPO, assert_one_line_error, run_cli, run_process, train_cut_after_first_epoch_then_resumed
from toolkit.checkpoint import load_checkpoint, model_from_checkpoint
from toolkit.data import load_split, to_tensor
from toolkit.recipes import make_config
from toolkit.train import evaluate, train


def test_short_real_training_run_clears_the_bar(trained):
    history = json.loads((trained / "history.json").read_text())
    assert len(history["epochs"]) == 1
    row = history["epochs"][0]
    assert row["test_accuracy"] >= 98.0, row  # one epoch of the default recipe on all 60,000 images
    assert row["train_accuracy"] > 85.0 and row["seconds"] > 0  # running average over the epoch
    assert (trained / "errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_rebuilds_the_model_from_the_file_alone(trained, mnist_dir):
    raw = torch.load(trained / "checkpoint.pt", weights_only=True)  # no pickle code can run
    assert raw["model"] == {"name": "convnet", "args": {}, "parameters": 431_080}
    assert raw["config"]["recipe"] == "fast" and raw["data_md5"]["t10k-images-idx3-ubyte"]
    model = model_from_checkpoint(load_checkpoint(trained / "checkpoint.pt"))
    x, y = load_split(mnist_dir, "test")
    _, accuracy = evaluate(model, to_tensor(x), torch.from_numpy(y))
    assert accuracy == pytest.approx(raw["metrics"]["test_accuracy"], abs=1e-9)


def _weights(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["state_dict"]


def test_same_seed_on_the_cpu_gives_the_same_result(tmp_path, mnist_dir):
    config = make_config(epochs=1, train_limit=3000, device="cpu")
    a = train(config, mnist_dir, tmp_path / "a")
    b = train(config, mnist_dir, tmp_path / "b")
    train(make_config(epochs=1, train_limit=3000, device="cpu", seed=1), mnist_dir, tmp_path / "c")
    wa, wb, wc = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a.test_accuracy == b.test_accuracy
    assert not torch.equal(wa["conv2.weight"], wc["conv2.weight"])


def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path, mnist_dir):
    config = make_config(epochs=3, train_limit=3000, device="cpu")
    train(config, mnist_dir, tmp_path / "straight")
    train_cut_after_first_epoch_then_resumed(config, mnist_dir, tmp_path / "cut")
    straight, cut = _weights(tmp_path / "straight"), _weights(tmp_path / "cut")
    assert all(torch.equal(straight[k], cut[k]) for k in straight)


def test_killed_cli_run_keeps_its_last_epoch_and_resumes(tmp_path, mnist_dir, python):
    run_dir = tmp_path / "run"
    cmd = [python, "-m", "toolkit", "train", "--epochs", "4", "--train-limit", "4000", "--out", str(run_dir),
           "--data-dir", str(mnist_dir)]
    proc = __import__("subprocess").Popen(cmd, stdout=-1, stderr=-1, text=True, cwd=REPO)
    deadline = time.time() + 120
    while not (run_dir / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr  # SIGTERM ends it like Ctrl-C
    assert stderr.strip().splitlines()[-1] == "terminated"
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".")], "hidden temporary files left behind"
    epoch = load_checkpoint(run_dir / "checkpoint.pt")["epoch"]
    assert 1 <= epoch < 4

    done = run_process(*cmd[:4], "--resume", "--out", run_dir, "--data-dir", mnist_dir, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert f"resumed after epoch {epoch}" in done.stdout
    assert len(json.loads((run_dir / "history.json").read_text())["epochs"]) == 4


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet"], "unknown model"),
    (["--recipe", "turbo"], "unknown recipe"),
    (["--epochs", "0"], "epochs must be a number from 1 to 1000"),
    (["--batch-size", "-5"], "batch-size must be a number from 1 to 60000"),
    (["--lr", "-1"], "lr must be a number from 1e-08 to 10"),
    (["--device", "tpu"], "unknown device"),
])
def test_bad_training_options_are_one_line_errors(tmp_path, mnist_dir, args, message):
    result = run_cli("train", *args, "--out", tmp_path / "run", "--data-dir", mnist_dir)
    assert message in assert_one_line_error(result, 2)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_clear_error(tmp_path, mnist_dir):
    result = run_cli("train", "--device", "cuda", "--out", tmp_path / "run", "--data-dir", mnist_dir)
    assert "--device cuda" in assert_one_line_error(result, 2)


def test_unwritable_output_folder_is_a_clear_error(tmp_path, mnist_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("train", "--epochs", "1", "--train-limit", "500", "--out", blocker / "run",
                     "--data-dir", mnist_dir)
    assert "cannot write the run folder" in assert_one_line_error(result, 2)


def test_existing_run_is_not_overwritten_by_accident(trained, mnist_dir):
    before = (trained / "checkpoint.pt").read_bytes()
    result = run_cli("train", "--epochs", "1", "--out", trained, "--data-dir", mnist_dir)
    assert "--resume" in assert_one_line_error(result, 2)
    assert (trained / "checkpoint.pt").read_bytes() == before


def test_missing_data_is_a_clear_error(tmp_path):
    result = run_cli("train", "--out", tmp_path / "run", "--data-dir", tmp_path / "nothing")
    assert "toolkit data" in assert_one_line_error(result, 2)


@pytest.fixture(scope="module")
def cut_run(tmp_path_factory, mnist_dir):
    """A real run of 2 epochs on 500 images on the CPU, stopped after its first: one epoch left to resume."""
    run_dir = tmp_path_factory.mktemp("cut-run") / "run"

    def stop(stats, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(make_config(epochs=2, train_limit=500, device="cpu"), mnist_dir, run_dir, on_epoch=stop)
    return run_dir


def _run_copy(short_run, tmp_path, mutate=lambda ckpt: None):
    """A copy of a real run folder whose checkpoint `mutate` changed (saved with torch.save, as a tool would)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ckpt = torch.load(short_run / "checkpoint.pt", weights_only=True)
    mutate(ckpt)
    torch.save(ckpt, run_dir / "checkpoint.pt")
    return run_dir


@pytest.mark.parametrize("field, value, message", [
    ("test_accuracy", 1e30, "test_accuracy 1e+30, not a number from 0 to 100"),
    ("train_accuracy", -0.5, "train_accuracy -0.5, not a number from 0 to 100"),
    ("val_accuracy", 100.5, "val_accuracy 100.5, not a number from 0 to 100"),
    ("train_loss", float("nan"), "train_loss nan, not a number finite and >= 0"),
    ("test_loss", -1.0, "test_loss -1.0, not a number finite and >= 0"),
    ("seconds", float("inf"), "seconds inf, not a number finite and >= 0"),
    ("lr", -3e-3, "lr -0.003, not a number finite and >= 0"),
    ("peak_lr", "high", "peak_lr high, not a number finite and >= 0"),
    ("test_accuracy", True, "test_accuracy True, not a number"),
    ("epoch", 2, "history row 1 is for epoch 2, not 1"),
    ("epoch", 0, "history row 1 is for epoch 0, not 1"),
])
def test_resume_refuses_an_impossible_history(tmp_path, short_run, mnist_dir, field, value, message):
    run_dir = _run_copy(short_run, tmp_path, lambda ckpt: ckpt["history"][0].update({field: value}))
    before = (run_dir / "checkpoint.pt").read_bytes()
    result = run_cli("train", "--resume", "--out", run_dir, "--data-dir", mnist_dir)
    line = assert_one_line_error(result, 2)
    assert line.startswith(f"error: cannot resume from {run_dir / 'checkpoint.pt'}: ") and message in line, line
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt"]


def test_resume_reads_a_history_written_before_its_optional_fields(tmp_path, cut_run, mnist_dir):
    def older(ckpt):
        for row in ckpt["history"]:
            for key in ("val_loss", "val_accuracy", "peak_lr"):
                del row[key]

    run_dir = _run_copy(cut_run, tmp_path, older)
    result = run_cli("train", "--resume", "--out", run_dir, "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    assert "resumed after epoch 1" in result.stdout


def test_resume_trains_the_checkpoint_it_showed_though_the_file_changes(tmp_path, cut_run, mnist_dir,
                                                                        monkeypatch):
    import shutil

    import toolkit.cli.pipeline

    other = tmp_path / "other"  # another model's run, put in the way once the display names the first
    done = run_cli("train", "--model", "mlp", "--epochs", "1", "--train-limit", "500", "--device", "cpu", "--out",
                   other, "--data-dir", mnist_dir)
    assert done.exit_code == 0, done.stderr
    run_dir = _run_copy(cut_run, tmp_path)
    display = toolkit.cli.pipeline.epoch_display

    def replaced_then_displayed(*args, **kwargs):
        shutil.copyfile(other / "checkpoint.pt", run_dir / "checkpoint.pt")
        return display(*args, **kwargs)

    monkeypatch.setattr(toolkit.cli.pipeline, "epoch_display", replaced_then_displayed)
    result = run_cli("train", "--resume", "--out", run_dir, "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("training convnet (fast recipe)"), lines
    assert any(line.startswith("convnet: ") for line in lines) and not any(line.startswith("mlp") for line in lines)


@pytest.mark.parametrize("option", [["--model", "mlp"], ["--model", "convnet"], ["--recipe", "best"],
                                    ["--seed", "3"], ["--device", "cpu"]])
def test_resume_refuses_settings_of_its_own(tmp_path, short_run, mnist_dir, option):
    run_dir = _run_copy(short_run, tmp_path)  # the run's own model too, as with --epochs: the run decides
    before = (run_dir / "checkpoint.pt").read_bytes()
    result = run_cli("train", "--resume", *option, "--out", run_dir, "--data-dir", mnist_dir)
    assert f"drop {option[0]}" in assert_one_line_error(result, 2)
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("mutate, message", [
    (lambda ckpt: ckpt["config"].update(epochs=2), "its schedule has"),  # the one-cycle schedule is for 1 epoch
    (lambda ckpt: ckpt.update(epoch=5), "it says it ended epoch 5"),
    (lambda ckpt: ckpt.update(history=[]), "its history has 0 epochs"),
])
def test_resume_refuses_a_checkpoint_at_odds_with_itself(tmp_path, short_run, mnist_dir, mutate, message):
    run_dir = _run_copy(short_run, tmp_path, mutate)
    result = run_cli("train", "--resume", "--out", run_dir, "--data-dir", mnist_dir)
    assert message in assert_one_line_error(result, 2)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt"]


def test_a_run_checks_its_files_before_the_first_epoch(tmp_path, mnist_dir, monkeypatch):
    import toolkit.train

    (tmp_path / "run" / "history.json").mkdir(parents=True)  # in the way of a file the run writes at its end
    monkeypatch.setattr(toolkit.train, "_run_epoch", lambda *a: pytest.fail("an epoch ran first"))
    result = run_cli("train", "--epochs", "1", "--train-limit", "500", "--out", tmp_path / "run",
                     "--data-dir", mnist_dir)
    assert "history.json: a folder is in the way" in assert_one_line_error(result, 2)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("case, message", [("run-exists", "already holds a checkpoint; pass --resume"),
                                           ("no-data", "MNIST file")])
def test_a_refusal_before_training_prints_no_header(tmp_path, short_run, mnist_dir, case, message):
    # in a pipe (as here) too, "training convnet (fast recipe) -> FOLDER" comes only once training starts
    run_dir = _run_copy(short_run, tmp_path) if case == "run-exists" else tmp_path / "run"
    data_dir = mnist_dir if case == "run-exists" else tmp_path / "none"
    result = run_cli("train", "--epochs", "1", "--train-limit", "100", "--out", run_dir, "--data-dir", data_dir)
    assert message in assert_one_line_error(result, 2)
    assert result.stdout == ""


def test_resume_and_overwrite_together_are_refused(tmp_path, short_run, mnist_dir):
    run_dir = _run_copy(short_run, tmp_path)
    before = (run_dir / "checkpoint.pt").read_bytes()
    result = run_cli("train", "--resume", "--overwrite", "--out", run_dir, "--data-dir", mnist_dir)
    assert "give one" in assert_one_line_error(result, 2)
    assert (run_dir / "checkpoint.pt").read_bytes() == before



def _no_data_read(monkeypatch):
    import toolkit.train

    monkeypatch.setattr(toolkit.train, "_load_tensors", lambda *a: pytest.fail("the data was read first"))


@pytest.mark.parametrize("files", [["history.json"], ["errors.png"], ["history.json", "errors.png"]])
def test_a_new_run_never_replaces_files_already_in_its_folder(tmp_path, mnist_dir, monkeypatch, files):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in files:
        (run_dir / name).write_text("my notes\n")
    args = ["train", "--epochs", "1", "--train-limit", "500", "--device", "cpu", "--out", run_dir,
            "--data-dir", mnist_dir]
    _no_data_read(monkeypatch)
    line = assert_one_line_error(run_cli(*args), 2)
    assert f"{run_dir} already holds {' and '.join(files)}; pass --overwrite to replace" in line, line
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(files)
    assert all((run_dir / name).read_text() == "my notes\n" for name in files)
    monkeypatch.undo()
    result = run_cli(*args, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert json.loads((run_dir / "history.json").read_text())["epochs"][0]["epoch"] == 1
    assert (run_dir / "errors.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_a_folder_named_checkpoint_pt_is_refused_as_what_it_is(tmp_path, mnist_dir, monkeypatch, flag):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint.pt").mkdir(parents=True)
    _no_data_read(monkeypatch)
    result = run_cli("train", "--epochs", "1", "--train-limit", "500", "--device", "cpu", "--out", run_dir,
                     "--data-dir", mnist_dir, *flag)
    line = assert_one_line_error(result, 2)
    assert line == (f"error: {run_dir / 'checkpoint.pt'} is a folder, not a checkpoint; move it away or choose "
                    "another --out"), line
    assert [p.name for p in run_dir.iterdir()] == ["checkpoint.pt"] and (run_dir / "checkpoint.pt").is_dir()


def test_resuming_a_finished_run_says_so_and_writes_nothing(tmp_path, short_run, mnist_dir, monkeypatch):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("checkpoint.pt", "history.json", "errors.png"):
        (run_dir / name).write_bytes((short_run / name).read_bytes())
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()}
    _no_data_read(monkeypatch)
    result = run_cli("train", "--resume", "--out", run_dir, "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == (f"{run_dir} has finished its 1 epoch; nothing to resume (to train longer: a "
                                     "new run with --epochs N, in another --out or here with --overwrite)")
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.iterdir()} == before


DAMAGED_WEIGHTS = [  # the last layer of the ConvNet that short_run and cut_run train
    (lambda weights: weights.pop("fc_layer2.bias"), 'Missing key(s) in state_dict: "fc_layer2.bias"'),
    (lambda weights: weights.update({"fc_layer2.bias": torch.zeros(3)}),
     "size mismatch for fc_layer2.bias: copying a param with shape torch.Size([3])"),
    (lambda weights: weights.update({"extra.weight": torch.zeros(3)}),
     'Unexpected key(s) in state_dict: "extra.weight"'),
]


@pytest.mark.parametrize("damage, message", DAMAGED_WEIGHTS)
def test_resuming_a_finished_run_with_damaged_weights_says_so(tmp_path, short_run, mnist_dir, monkeypatch, damage,
                                                             message):
    run_dir = _run_copy(short_run, tmp_path, lambda ckpt: damage(ckpt["state_dict"]))
    before = (run_dir / "checkpoint.pt").read_bytes()
    _no_data_read(monkeypatch)  # nothing to train: said from the checkpoint alone
    line = assert_one_line_error(run_cli("train", "--resume", "--out", run_dir, "--data-dir", mnist_dir), 2)
    assert line.startswith(f"error: cannot resume from {run_dir / 'checkpoint.pt'}: ") and message in line, line
    assert (run_dir / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("damage, message", DAMAGED_WEIGHTS)
def test_resuming_a_run_with_damaged_weights_names_what_is_wrong(tmp_path, cut_run, mnist_dir, damage, message):
    run_dir = _run_copy(cut_run, tmp_path, lambda ckpt: damage(ckpt["state_dict"]))
    line = assert_one_line_error(run_cli("train", "--resume", "--out", run_dir, "--data-dir", mnist_dir), 2)
    assert line.startswith(f"error: cannot resume from {run_dir / 'checkpoint.pt'}: ") and message in line, line


def test_resuming_a_finished_run_with_nan_weights_says_so(tmp_path, short_run, mnist_dir):
    run_dir = _run_copy(short_run, tmp_path, lambda ckpt: ckpt["state_dict"]["fc_layer2.bias"].fill_(float("nan")))
    line = assert_one_line_error(run_cli("train", "--resume", "--out", run_dir, "--data-dir", mnist_dir), 2)
    assert "weight fc_layer2.bias holds NaN or infinite values" in line, line
