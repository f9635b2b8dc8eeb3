"""The Node.js example embeds the same .onnx and must see and predict exactly what the Python runtime does.

examples/node/classify.js turns images into model input with examples/web/mnist-preprocess.mjs, the module
the web page uses; these tests hold it to toolkit/preprocess.py's load_image on real and photo-like images.
"""

import json
import re
import shutil
import subprocess

import numpy as np
import PIL
import pytest
from PIL import Image

from tests.conftest import REPO
from toolkit.data import load_split
from toolkit.preprocess import load_image
from toolkit.runtime import Classifier, predict_files

# ONNX Runtime for Node and for Python are two builds that may sum a layer's products in another order (up to
# 800 float32 terms, relative error up to about 800 * 6e-8 of logits whose terms reach tens), and a softmax
# probability moves by at most half of a logit's change: 1e-4 bounds that with room, whatever the checkpoint.
PROBABILITY_ATOL = 1e-4

NODE_DIR = REPO / "examples" / "node"
# Pillow 13 chose the order of its two resampling passes by shape; the module follows Pillow 13 and earlier
# releases can differ by a level or two where that order changed
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13


@pytest.fixture(scope="module")
def node_example():
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js and npm are not installed")
    if not all((NODE_DIR / "node_modules" / name).is_dir() for name in ("onnxruntime-node", "pngjs", "jpeg-js")):
        # --ignore-scripts: the CPU binaries ship in the package; its install script would download more
        done = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    return NODE_DIR / "classify.js"


def classify(script, model, paths, *options):
    done = subprocess.run(["node", str(script), "--model", str(model), *options, *map(str, paths)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def photo_like(digit: np.ndarray, rng, size: tuple[int, int]) -> np.ndarray:
    """An MNIST digit as a photo of ink on paper: any size, dark on a light, noisy, tinted background."""
    big = np.asarray(Image.fromarray(digit).resize(size, Image.Resampling.BICUBIC), dtype=np.float64)
    paper, ink = rng.uniform(170, 250), rng.uniform(0, 80)
    gray = paper - (paper - ink) * big / 255 + rng.normal(0, 6, big.shape)
    rgb = np.stack([gray * rng.uniform(0.85, 1), gray, gray * rng.uniform(0.85, 1)], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def corpus(mnist_dir, tmp_path_factory):
    """Real test digits (28x28), photo-like digits of other sizes and aspect ratios (RGB, grayscale, JPEG),
    and RGBA digits whose ink is only in the alpha channel. Returns (lossless paths, jpeg paths, labels)."""
    out = tmp_path_factory.mktemp("corpus")
    x, y = load_split(mnist_dir, "test")
    rng = np.random.default_rng(0)
    picks = rng.choice(len(x), 96, replace=False)
    lossless, jpegs, labels = [], [], {}
    for n, i in enumerate(picks):
        size = (int(rng.integers(20, 400)), int(rng.integers(20, 400)))
        path = out / f"{n:02d}-{i}.png"
        if n < 48:  # the real thing, already 28x28 (and one of them dark on light)
            Image.fromarray(255 - x[i] if n == 0 else x[i]).save(path)
        elif n < 64:
            photo = photo_like(x[i], rng, size)
            Image.fromarray(photo if n % 2 else photo[..., 1]).save(path)
        elif n < 80:  # dark-blue ink whose coverage is the alpha channel, over nothing
            alpha = np.asarray(Image.fromarray(x[i]).resize(size, Image.Resampling.BICUBIC))
            ink = np.broadcast_to(np.array([20, 30, 90], np.uint8), (*alpha.shape, 3))
            Image.fromarray(np.dstack([ink, alpha])).save(path)
        else:
            path = path.with_suffix(".jpg")
            photo = photo_like(x[i], rng, size)
            Image.fromarray(photo if n % 2 else photo[..., 1]).save(path, quality=90)
        (jpegs if path.suffix == ".jpg" else lossless).append(path)
        labels[path] = int(y[i])
    return lossless, jpegs, labels


def test_javascript_preprocessing_equals_python(node_example, exported, corpus):
    """Identical 28x28 inputs for every PNG (PNG decoding is exact), identical digits for every image."""
    lossless, jpegs, labels = corpus
    model = exported / "model.app.onnx"
    node = classify(node_example, model, lossless + jpegs, "--pixels")
    assert [r["file"] for r in node] == [str(p) for p in lossless + jpegs]
    js_pixels = np.array([r["pixels"] for r in node], dtype=np.int16).reshape(-1, 28, 28)
    py_pixels = np.stack([load_image(p) for p in lossless + jpegs]).astype(np.int16)
    diff = np.abs(js_pixels - py_pixels).reshape(len(node), -1).max(axis=1)

    lossless_diff = diff[:len(lossless)]
    worst = [(lossless[k].name, int(lossless_diff[k])) for k in np.flatnonzero(lossless_diff)]
    assert lossless_diff.max() <= (0 if PILLOW_13 else 2), f"PNG inputs differ from Python's: {worst}"
    # JPEG: jpeg-js and Pillow's libjpeg decode the same file to slightly different pixels
    assert diff[len(lossless):].max() <= 4, diff[len(lossless):]
    assert (js_pixels[len(lossless):] != py_pixels[len(lossless):]).any()  # the JPEG decoders do differ

    python = predict_files(lossless + jpegs, model)
    # the same pixels give the same digit; the JPEGs' pixels differ by a few levels, which can only turn a
    # digit the model was unsure of, so theirs must agree where Python's top two are 0.1 or more apart
    assert [r["digit"] for r in node[:len(lossless)]] == [p.digit for p in python[:len(lossless)]]
    sure = [k for k, p in enumerate(python) if k >= len(lossless) and np.diff(np.sort(p.probabilities)[-2:])[0] >= 0.1]
    assert len(sure) >= len(jpegs) // 2
    assert [node[k]["digit"] for k in sure] == [python[k].digit for k in sure]
    np.testing.assert_allclose(np.array([r["probabilities"] for r in node[:len(lossless)]]),
                               np.array([p.probabilities for p in python[:len(lossless)]]), atol=PROBABILITY_ATOL)
    real = lossless[:48]  # the photo-like ones are harder; these say the inputs are digits the right way up
    assert np.mean([r["digit"] == labels[p] for r, p in zip(node, real)]) > 0.9


def test_node_probabilities_equal_the_python_runtime(node_example, exported, mnist_dir, tmp_path):
    x, _ = load_split(mnist_dir, "test")
    paths = []
    for i in range(16):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(x[i]).save(paths[-1])
    node = classify(node_example, exported / "model.app.onnx", paths)
    expected = Classifier(exported / "model.app.onnx").predict_proba(x[:16])
    assert [r["digit"] for r in node] == list(expected.argmax(1))
    np.testing.assert_allclose(np.array([r["probabilities"] for r in node]), expected, atol=PROBABILITY_ATOL)


def test_node_invert_options_force_the_polarity(node_example, exported, mnist_dir, tmp_path):
    x, _ = load_split(mnist_dir, "test")
    path = tmp_path / "digit.png"
    Image.fromarray(x[0]).save(path)
    forced = classify(node_example, exported / "model.app.onnx", [path], "--invert", "--pixels")[0]
    assert forced["pixels"] == (255 - x[0]).ravel().tolist()
    kept = classify(node_example, exported / "model.app.onnx", [path], "--no-invert", "--pixels")[0]
    assert kept["pixels"] == x[0].ravel().tolist()


@pytest.mark.parametrize("content, message", [(b"not a png", "not a readable image"),
                                               (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "cannot decode image"),
                                               (b"", "empty file")])
def test_node_reports_bad_input_in_one_line(node_example, exported, tmp_path, content, message):
    bad = tmp_path / "bad.png"
    bad.write_bytes(content)
    done = subprocess.run(["node", str(node_example), "--model", str(exported / "model.app.onnx"), str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert message in done.stderr


def readme_snippets() -> dict[str, str]:
    """The JavaScript blocks of docs/embedding.md's "From Node.js" section, by their first comment line."""
    text = (REPO / "docs" / "embedding.md").read_text()
    section = text.split("\n## From Node.js\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```js\n(.*?)```", section, flags=re.S)
    return {block.splitlines()[0]: block for block in blocks}


@pytest.mark.parametrize("kind, suffix", [("ES module", ".mjs"), ("CommonJS", ".cjs")])
def test_readme_node_snippets_run(node_example, exported, tmp_path, kind, suffix):
    """Each documented snippet, saved as the file its first line names, prints Python's answer for a blank digit."""
    snippets = readme_snippets()
    assert len(snippets) == 2, list(snippets)
    [(first, code)] = [(first, code) for first, code in snippets.items() if kind in first]
    # saved anywhere but beside examples/node/node_modules, `onnxruntime-node` does not resolve
    assert re.search(rf"save as examples/node/\w+\{suffix}\b", first), first
    script = NODE_DIR / f".readme-snippet-{tmp_path.name}{suffix}"
    (tmp_path / "exported").symlink_to(exported)
    try:
        script.write_text(code)
        done = subprocess.run(["node", str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    finally:
        script.unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr
    digit, probabilities = done.stdout.split("\n", 1)
    expected = Classifier(exported / "model.app.onnx").predict_proba(np.zeros((1, 28, 28), np.uint8))[0]
    assert int(digit) == int(expected.argmax())
    np.testing.assert_allclose(json.loads(probabilities), expected, atol=PROBABILITY_ATOL)
