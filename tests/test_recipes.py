"""The training recipes' ingredients: pooling order, augmentation, label smoothing, weight averaging, holdout."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import assert_one_line_error, run_cli, train_cut_after_first_epoch_then_resumed
from toolkit import data as mnist
from toolkit.augment import Distortion, distort
from toolkit.checkpoint import load_checkpoint, model_from_checkpoint
from toolkit.model import ConvNet
from toolkit.preprocess import BACKGROUND
from toolkit.recipes import RECIPES, config_from_checkpoint, make_config
from toolkit.train import evaluate, train
from toolkit.train_step import training_loss

BEST_DISTORTION = Distortion(**{k: RECIPES["best"].get(k, 0.0) for k in ("rotate", "scale", "shift", "elastic")})


def test_pooling_before_relu_gives_the_notebook_orders_values_and_gradients_exactly():
    torch.manual_seed(0)
    model, x = ConvNet(), torch.randn(32, 1, 28, 28)

    def notebook_order(m, x):
        x = F.max_pool2d(F.relu(m.conv1(x)), 2)
        x = F.max_pool2d(F.relu(m.conv2(x)), 2)
        return F.log_softmax(m.fc_layer2(F.relu(m.fc_layer1(torch.flatten(x, 1)))), dim=1)

    results = []
    for forward in (model, lambda x: notebook_order(model, x)):
        model.zero_grad()
        out = forward(x)
        out[:, 3].sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_a, grads_a), (out_b, grads_b) = results
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b))


def test_no_distortion_leaves_the_images_as_they_are(mnist_dir):
    images, _ = mnist.load_split(mnist_dir, "test")
    x = mnist.to_tensor(images[:64])
    out = distort(x, Distortion(), torch.Generator().manual_seed(0), BACKGROUND)
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.parametrize("distortion", [BEST_DISTORTION, Distortion(elastic=1.5)], ids=["best", "elastic"])
def test_distortion_is_reproducible_from_its_generator_and_pads_with_background(mnist_dir, distortion):
    images, _ = mnist.load_split(mnist_dir, "test")
    x = mnist.to_tensor(images[:64])
    a = distort(x, distortion, torch.Generator().manual_seed(5), BACKGROUND)
    b = distort(x, distortion, torch.Generator().manual_seed(5), BACKGROUND)
    c = distort(x, distortion, torch.Generator().manual_seed(6), BACKGROUND)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # every image is changed, and the corners (always background in MNIST) stay background, not zero
    assert ((a - x).abs().amax(dim=(1, 2, 3)) > 0.5).all()
    assert torch.allclose(a[:, :, 0, 0], torch.full_like(a[:, :, 0, 0], BACKGROUND), atol=1e-5)
    blank = torch.full((4, 1, 28, 28), BACKGROUND)
    assert torch.allclose(distort(blank, distortion, torch.Generator(), BACKGROUND), blank, atol=1e-5)


def test_distorted_digits_still_read_as_their_label(trained, mnist_dir):
    """The best recipe's distortions keep digits recognizable: a model that never saw one still reads more than
    nine in ten of them (a distortion that lost the digit, or misplaced the grid, would not)."""
    model = model_from_checkpoint(load_checkpoint(trained / "checkpoint.pt"))
    images, labels = mnist.load_split(mnist_dir, "test")
    x, y = mnist.to_tensor(images[:2000]), torch.from_numpy(labels[:2000])
    _, plain = evaluate(model, x, y)
    _, distorted = evaluate(model, distort(x, BEST_DISTORTION, torch.Generator().manual_seed(0), BACKGROUND), y)
    assert 90.0 < distorted < plain, (plain, distorted)


def test_label_smoothing_is_cross_entropy_against_the_smoothed_target():
    torch.manual_seed(0)
    logits, y = torch.randn(50, 10), torch.randint(0, 10, (50,))
    for e in (0.0, 0.1, 0.2):
        ours = training_loss(F.log_softmax(logits, dim=1), y, e)
        assert ours.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=e).item(), rel=1e-6)


def _best(**overrides):
    return make_config("best", device="cpu", epochs=2, train_limit=3000, **overrides)


def test_held_out_images_are_never_trained_on(tmp_path, mnist_dir):
    """Holding out the last 500 of 3,000 images trains exactly as training on the first 2,500 does."""
    held = train(_best(holdout=500), mnist_dir, tmp_path / "held")
    short = train(dataclasses.replace(_best(), train_limit=2500), mnist_dir, tmp_path / "short")
    a, b = (torch.load(p / "checkpoint.pt", weights_only=True)["state_dict"]
            for p in (tmp_path / "held", tmp_path / "short"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(row.val_accuracy is not None for row in held.history)
    assert all(row.val_accuracy is None for row in short.history)
    model = model_from_checkpoint(load_checkpoint(tmp_path / "held" / "checkpoint.pt"))
    images, labels = mnist.load_split(mnist_dir, "train")
    _, accuracy = evaluate(model, mnist.to_tensor(images[2500:3000]), torch.from_numpy(labels[2500:3000]))
    assert accuracy == pytest.approx(held.history[-1].val_accuracy, abs=1e-9)


def test_weight_averaging_saves_the_average_and_resumes_exactly(tmp_path, mnist_dir):
    config = _best(holdout=500, ema=0.999)  # measured by benchmarks/recipes.py; no recipe keeps it
    train(config, mnist_dir, tmp_path / "straight")
    train_cut_after_first_epoch_then_resumed(config, mnist_dir, tmp_path / "cut")
    straight, cut = (load_checkpoint(tmp_path / name / "checkpoint.pt") for name in ("straight", "cut"))
    for key in ("state_dict", "training_state_dict"):
        assert all(torch.equal(straight[key][k], cut[key][k]) for k in straight[key])
    # what is evaluated and exported is the average, not the last step's weights
    averaged, raw = straight["state_dict"], straight["training_state_dict"]
    assert not torch.equal(averaged["fc_layer1.weight"], raw["fc_layer1.weight"])
    assert straight["averaged_steps"] == 2 * 20  # 2,500 images in batches of 128, two epochs


def test_a_checkpoint_from_before_the_recipes_resumes_with_its_own_settings():
    """Settings a checkpoint does not record take the values every run had before they existed."""
    old = {k: v for k, v in dataclasses.asdict(make_config("seed")).items()
           if k not in ("optimizer", "label_smoothing", "rotate", "scale", "shift", "elastic", "ema", "holdout")}
    config = config_from_checkpoint(old, make_config("best"))
    assert (config.optimizer, config.label_smoothing, config.ema, config.holdout) == ("sgd", 0.0, 0.0, 0)
    assert not config.distortion.active and config.recipe == "seed"


@pytest.mark.parametrize("args, message", [
    (["--holdout", "-1"], "holdout must be a number from 0 to 30000"),
    (["--holdout", "2000", "--train-limit", "2000"], "leaves no training images"),
    (["--seed", "-1"], "seed must be a number from 0 to 4294967295,"),
])
def test_bad_holdout_is_a_one_line_error(tmp_path, mnist_dir, args, message):
    result = run_cli("train", *args, "--out", tmp_path / "run", "--data-dir", mnist_dir)
    assert message in assert_one_line_error(result, 2)
    assert not (tmp_path / "run").exists()


def _drawn_curves(monkeypatch) -> list:
    """The figures saved from here on, as {legend label: y values} per figure."""
    import matplotlib.figure

    curves = []
    original = matplotlib.figure.Figure.savefig

    def savefig(self, *args, **kwargs):
        curves.append({line.get_label(): list(line.get_ydata()) for ax in self.axes for line in ax.get_lines()})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return curves


def test_cli_reports_validation_accuracy_per_epoch(tmp_path, mnist_dir, monkeypatch):
    curves = _drawn_curves(monkeypatch)
    run_dir = tmp_path / "run"
    result = run_cli("train", "--recipe", "best", "--epochs", "2", "--train-limit", "2000", "--holdout", "500",
                     "--out", run_dir, "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch=")]
    assert len(lines) == 2 and all("val acc %=" in line for line in lines)
    history = json.loads((run_dir / "history.json").read_text())
    assert history["recipe"] == "best" and history["config"]["holdout"] == 500
    assert all(0 < row["val_accuracy"] <= 100 for row in history["epochs"])
    # errors.png draws the held-out validation curve beside the train and test ones, each under its own name
    rows = history["epochs"]
    expected = {"train error": "train_accuracy", "test error": "test_accuracy",
                "validation error (held-out training images)": "val_accuracy"}
    assert list(curves[-1]) == list(expected)
    for label, key in expected.items():
        assert curves[-1][label] == pytest.approx([100 - row[key] for row in rows]), label


def test_errors_plot_of_a_run_without_holdout_has_no_validation_curve(trained, tmp_path, monkeypatch):
    from toolkit.plots import plot_errors
    from toolkit.train import EpochStats

    curves = _drawn_curves(monkeypatch)
    rows = json.loads((trained / "history.json").read_text())["epochs"]
    plot_errors([EpochStats(**row) for row in rows], tmp_path / "errors.png")
    assert list(curves[-1]) == ["train error", "test error"]
