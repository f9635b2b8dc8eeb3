"""The Node.js example embeds the same .onnx and must predict exactly what the Python runtime predicts."""

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO
from toolkit.data import load_split
from toolkit.runtime import Classifier

NODE_DIR = REPO / "examples" / "node"


@pytest.fixture(scope="module")
def node_example():
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js and npm are not installed")
    if not (NODE_DIR / "node_modules" / "onnxruntime-node").is_dir():
        # --ignore-scripts: the CPU binaries ship in the package; its install script would download more
        done = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    return NODE_DIR / "classify.js"


def test_node_predictions_equal_the_python_runtime(node_example, exported, mnist_dir, tmp_path):
    x, y = load_split(mnist_dir, "test")
    picks = np.random.default_rng(0).choice(len(x), 64, replace=False)
    paths = []
    for i in picks:
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(x[i]).save(paths[-1])
    paths.append(tmp_path / "inverted.png")  # a dark digit on white, which both sides must invert
    Image.fromarray(255 - x[picks[0]]).save(paths[-1])

    done = subprocess.run(["node", str(node_example), "--model", str(exported / "model.app.onnx"),
                           *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    node = json.loads(done.stdout)

    # the inverted file must come out as the original digit
    expected = Classifier(exported / "model.app.onnx").predict_proba(np.concatenate([x[picks], x[picks[:1]]]))
    assert [r["digit"] for r in node] == list(expected.argmax(1))
    np.testing.assert_allclose(np.array([r["probabilities"] for r in node]), expected, atol=1e-6)
    assert (np.array([r["digit"] for r in node[:64]]) == y[picks]).mean() > 0.95


def test_node_reports_bad_input_in_one_line(node_example, exported, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    done = subprocess.run(["node", str(node_example), "--model", str(exported / "model.app.onnx"), str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
