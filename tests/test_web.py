"""The web demo in a real headless Chromium: ONNX Runtime Web must predict what ONNX Runtime in Python does.

Needs Node.js/npm (for onnxruntime-web's files) and Debian's `chromium`; it skips without node/npm, and
without Chromium except under CI (CI=true), where .ci/run installs it and a missing browser is a failure.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.chromium import Chromium, find_chromium
from tests.conftest import REPO, assert_one_line_error, run_cli, run_process
from tests.webserver import Background
from toolkit.data import load_split
from toolkit.preprocess import load_image
from toolkit.runtime import Classifier
from toolkit.web import Mount, WebConfig

WEB_DIR = REPO / "examples" / "web"
BATCH = 1000


@pytest.fixture(scope="module")
def web_site() -> Path:
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("Node.js and npm are not installed")
    if not (WEB_DIR / "node_modules" / "onnxruntime-web" / "dist").is_dir():
        done = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=WEB_DIR,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    return WEB_DIR


@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is missing under CI; .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    return binary


@pytest.fixture(scope="module")
def test_images(mnist_dir, tmp_path_factory):
    """The 10,000 test images as one raw uint8 file the page can fetch, and the arrays themselves."""
    folder = tmp_path_factory.mktemp("web-data")
    x, y = load_split(mnist_dir, "test")
    (folder / "t10k-images.bin").write_bytes(np.ascontiguousarray(x, dtype=np.uint8).tobytes())
    return folder, x, y


@pytest.fixture(scope="module")
def server(web_site, exported, test_images):
    data_dir = test_images[0]
    config = WebConfig(site=web_site, model=exported / "model.app.onnx", port=0,
                       extra_mounts=(Mount("/data/", data_dir, frozenset({".bin"})),))
    with Background(config) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def page(server, chromium):
    with Chromium(chromium) as browser:
        browser.goto(server + "?threads=2", "document.body && document.body.dataset.ready === 'true'")
        yield browser


def get(url: str, method: str = "GET"):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, b""


def test_server_sends_isolation_headers_and_mime_types(server):
    for path, mime in [("", "text/html"), ("app.mjs", "text/javascript"), ("mnist-preprocess.mjs", "text/javascript"),
                       ("style.css", "text/css"), ("ort/ort.wasm.min.mjs", "text/javascript"),
                       ("ort/ort-wasm-simd-threaded.wasm", "application/wasm"),
                       ("model/model.app.onnx", "application/octet-stream")]:
        status, headers, body = get(server + path)
        assert status == 200, path
        assert headers["Content-Type"].startswith(mime), (path, headers["Content-Type"])
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin"
        assert headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert int(headers["Content-Length"]) == len(body) > 0
        assert headers["Server"] == "toolkit-web"  # no Python version, and no space after the name
    assert server.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("path", [
    "../README.md", "%2e%2e/README.md", "..%2fREADME.md", "ort/../../../README.md", "ort/%2e%2e/package.json",
    "package.json", "package-lock.json", "node_modules/onnxruntime-web/package.json",
    "ort/ort.wasm.min.mjs.map", "model/manifest.json", "model/../model.app.onnx", "model/", ".gitignore",
    "data/../t10k-images.bin", "/etc/passwd", "%00", "a\\..\\README.md",
])
def test_server_refuses_everything_else(server, path):
    status, _, body = get(server + path)
    assert status == 404 and b"{" not in body[:1], path


def test_server_refuses_writes(server):
    assert get(server, method="POST")[0] == 501


def test_web_command_reports_a_missing_model_in_one_line(tmp_path):
    result = run_cli("web", "--model", tmp_path / "nothing.onnx", "--port", "0")
    assert "toolkit export" in assert_one_line_error(result, code=2)


def test_web_command_serves_only_an_unchanged_app_model(tmp_path, exported_copy):
    (tmp_path / "empty.onnx").write_bytes(b"")
    app = exported_copy / "model.app.onnx"
    data = bytearray(app.read_bytes())
    data[-1] ^= 1
    for model, fragment in [(tmp_path / "empty.onnx", "empty"), (exported_copy / "model.xml", "not an .onnx"),
                            (exported_copy / "model.onnx", "onnx-app"), (app, None)]:
        if fragment is None:  # the app model, one bit changed after export
            app.write_bytes(bytes(data))
            fragment = "changed since export"
        result = run_cli("web", "--model", model, "--port", "0")
        assert fragment in assert_one_line_error(result, code=2), model



@contextlib.contextmanager
def toolkit_web(python, model: Path, tmp_path: Path):
    """`toolkit web --model MODEL` in a process of its own, with a stand-in for ONNX Runtime Web (these tests fetch
    the model, never run it): yields the URL it prints."""
    ort = tmp_path / "ort"
    ort.mkdir()
    (ort / "ort.wasm.min.mjs").write_text("")
    proc = subprocess.Popen([python, "-m", "toolkit", "web", "--model", str(model), "--port", "0", "--ort", str(ort)],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        found = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert found, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield found.group(0)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_model_of_any_name_is_served_where_the_page_fetches_it(tmp_path, exported, python):
    model = tmp_path / "digits.onnx"
    shutil.copyfile(exported / "model.app.onnx", model)
    with toolkit_web(python, model, tmp_path) as base:
        assert get(base + "model/model.app.onnx")[:3:2] == (200, model.read_bytes())
        assert get(base + "model/digits.onnx")[0] == 404


def test_the_model_served_is_the_one_checked_at_startup(exported_copy, tmp_path, python):
    app = exported_copy / "model.app.onnx"
    checked = app.read_bytes()
    with toolkit_web(python, app, tmp_path) as base:
        shutil.copyfile(exported_copy / "model.onnx", app)  # replaced while serving: unchecked bytes
        assert get(base + "model/model.app.onnx")[:3:2] == (200, checked)


def test_web_command_refuses_a_model_whose_weights_are_in_another_file(tmp_path, exported):
    import onnx

    model = onnx.load(exported / "model.app.onnx")
    onnx.external_data_helper.convert_model_to_external_data(model, location="w.bin")
    onnx.save(model, tmp_path / "model.app.onnx")  # loads beside its w.bin, but the page is served one file
    result = run_cli("web", "--model", tmp_path / "model.app.onnx", "--port", "0")
    assert "weights in another file" in assert_one_line_error(result, code=2)


def test_page_is_cross_origin_isolated_with_two_threads(page):
    info = page.evaluate("demo.ready")
    assert info == {"ortVersion": "1.30.0", "threads": 2, "crossOriginIsolated": True}


def test_all_test_images_agree_with_onnx_runtime_in_python(page, exported, test_images):
    _, x, y = test_images
    result = page.evaluate(f"""(async () => {{
        const all = new Uint8Array(await (await fetch('/data/t10k-images.bin')).arrayBuffer());
        const n = all.length / 784, digits = [], probabilities = [];
        const start = performance.now();
        for (let i = 0; i < n; i += {BATCH}) {{
            const out = await demo.classify(all.subarray(i * 784, Math.min(n, i + {BATCH}) * 784));
            digits.push(...out.digits);
            probabilities.push(...out.probabilities);
        }}
        return {{ n, digits, probabilities, ms: performance.now() - start }};
    }})()""", timeout=120)
    assert result["n"] == len(x) == 10_000
    expected = Classifier(exported / "model.app.onnx").predict_proba(x)
    digits = np.array(result["digits"])
    assert (digits == expected.argmax(1)).sum() == 10_000
    np.testing.assert_allclose(np.array(result["probabilities"]).reshape(-1, 10), expected, atol=1e-5)
    assert (digits == y).mean() > 0.95


def draw(page, points, pointer_type):
    left, top = page.evaluate("(b => [b.left, b.top])(document.getElementById('pad').getBoundingClientRect())")
    page.pointer("down", left + points[0][0], top + points[0][1], pointer_type)
    for x, y in points[1:]:
        page.pointer("move", left + x, top + y, pointer_type)
    page.pointer("up", left + points[-1][0], top + points[-1][1], pointer_type)


def shown_and_python(page, exported, tmp_path):
    """The digit the page shows once it has settled, and Python's digit for the pad's pixels."""
    deadline = time.monotonic() + 10
    while (shown := page.evaluate("document.getElementById('digit').textContent")) == "–":
        assert time.monotonic() < deadline, page.console
        time.sleep(0.05)
    png = page.evaluate("document.getElementById('pad').toDataURL('image/png')")
    path = tmp_path / "pad.png"
    path.write_bytes(base64.b64decode(png.split(",", 1)[1]))
    python = int(Classifier(exported / "model.app.onnx").predict_proba(load_image(path)[None]).argmax())
    return shown, python


def test_drawing_shows_the_prediction(page, exported, tmp_path):
    page.evaluate("document.getElementById('clear').click()")
    assert page.evaluate("document.getElementById('digit').textContent") == "–"
    draw(page, [(140, 45 + 10 * k) for k in range(20)], "mouse")  # a stroke down the middle: a one
    shown, python = shown_and_python(page, exported, tmp_path)
    assert shown == "1" and python == 1

    page.evaluate("document.getElementById('clear').click()")
    ring = [(140 + 62 * math.sin(t / 24 * 2 * math.pi), 140 - 92 * math.cos(t / 24 * 2 * math.pi)) for t in range(26)]
    draw(page, ring, "touch")  # an oval, with a finger: a zero
    shown, python = shown_and_python(page, exported, tmp_path)
    assert shown == "0" and python == 0
    bars = page.evaluate("[...document.querySelectorAll('#bars .pct')].map(e => parseFloat(e.textContent))")
    assert len(bars) == 10 and max(bars) == bars[0] and abs(sum(bars) - 100) < 1


def test_screenshot_of_a_drawn_digit(page, exported, tmp_path):
    """A three, drawn as two arcs, then the whole page as PNG (kept as the README's picture when asked)."""
    page.evaluate("document.getElementById('clear').click()")
    # angle 0 is the top of a bowl, clockwise: the upper bowl from its upper left to its bottom, the lower
    # one from its top round to its lower left
    upper = [(140 + 50 * math.sin(t / 12 * math.pi), 92 - 45 * math.cos(t / 12 * math.pi)) for t in range(-4, 13)]
    lower = [(140 + 55 * math.sin(t / 12 * math.pi), 187 - 50 * math.cos(t / 12 * math.pi)) for t in range(0, 17)]
    draw(page, upper + lower[1:], "mouse")
    shown, python = shown_and_python(page, exported, tmp_path)
    assert shown == "3" and python == 3
    shot = tmp_path / "web-demo.png"
    shot.write_bytes(page.screenshot())
    with Image.open(shot) as img:
        assert img.size == (900, 640)
        assert len(img.convert("RGB").getcolors(1 << 16) or []) > 50  # a rendered page, not a blank one
    if os.environ.get("TOOLKIT_WEB_SCREENSHOT"):
        shutil.copy(shot, os.environ["TOOLKIT_WEB_SCREENSHOT"])


def test_every_package_is_in_the_wheel(python):
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "toolkit").rglob("__init__.py")}
    assert listed == found | {"toolkit.web_page"}


def test_an_install_without_extras_serves_the_page_it_ships(web_site, exported, tmp_path, python):
    """The wheel, installed alone (no extras, torch unimportable, no repository around), serves the page from
    inside the package, byte for byte examples/web, with ONNX Runtime Web from npm in the working folder."""
    source = tmp_path / "source"  # build from a copy, so the checkout gets no build/ or egg-info
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "node_modules")
    shutil.copytree(REPO / "toolkit", source / "toolkit", ignore=ignore)
    shutil.copytree(WEB_DIR, source / "examples" / "web", ignore=ignore)
    built = run_process(python, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                        tmp_path / "dist", source)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("toolkit-*.whl")
    target = tmp_path / "installed"
    done = run_process(python, "-m", "pip", "install", "--no-deps", "-q", "--target", target, wheel)
    assert done.returncode == 0, done.stderr
    no_torch = tmp_path / "no-torch"
    no_torch.mkdir()
    (no_torch / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    work = tmp_path / "work"  # where a user ran `npm install onnxruntime-web`
    work.mkdir()
    (work / "node_modules").symlink_to(web_site / "node_modules")
    env = {**os.environ, "PYTHONPATH": f"{no_torch}{os.pathsep}{target}"}
    proc = subprocess.Popen([python, "-m", "toolkit", "web", "--model", str(exported / "model.app.onnx"),
                             "--port", "0"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()
        assert f"({target / 'toolkit' / 'web_page'})" in line, (line, proc.stderr.read() if proc.poll() else "")
        base = line.split(" at ", 1)[1].split()[0]
        for name in ("index.html", "app.mjs", "mnist-preprocess.mjs", "style.css"):
            status, _, body = get(base + name)
            assert status == 200 and body == (WEB_DIR / name).read_bytes(), name
        assert get(base)[2] == (WEB_DIR / "index.html").read_bytes()
        assert get(base + "ort/ort.wasm.min.mjs")[0] == 200
        assert get(base + "model/model.app.onnx")[2] == (exported / "model.app.onnx").read_bytes()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
