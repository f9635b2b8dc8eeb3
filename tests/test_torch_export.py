"""The pt2 (torch.export) and aoti (AOTInductor) formats: exported through the CLI, verified on every test image
at full batch and one at a time, timed by bench, compared, refused when tampered with, and the AOTInductor
package embedded in the C++ example, built against the torch wheel and run on real MNIST images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, assert_one_line_error, run_cli, run_process
from toolkit.artifacts import read_manifest
from toolkit.checkpoint import load_checkpoint, model_from_checkpoint
from toolkit.data import load_split
from toolkit.fileio import file_digest
from toolkit.preprocess import MEAN, STD, normalize
from toolkit.verify import VerifyConfig

FILES = {"pt2": "model.pt2", "aoti": "model.aoti.pt2"}


@pytest.fixture(scope="module")
def exported_torch(tmp_path_factory, trained, mnist_dir, python) -> tuple[Path, float]:
    """pt2 and aoti exported from the trained checkpoint through the CLI, in their own folder (AOTInductor's
    compile is too slow for the shared export every test session makes); and how long the export took.

    The export runs in a process whose temporary folder holds an Inductor cache that cannot be used: its
    precompiled-headers folder is a file. An export that leaned on that global, shared cache (where a
    compile killed half-way leaves a broken header that fails every later compile) fails here."""
    out = tmp_path_factory.mktemp("exported_torch")
    scratch = tmp_path_factory.mktemp("tmpdir")
    (scratch / "torchinductor_root").mkdir()
    (scratch / "torchinductor_root" / "precompiled_headers").write_text("not a folder")
    env = {**os.environ, "TMPDIR": str(scratch)}
    t0 = time.perf_counter()
    done = run_process(python, "-m", "toolkit", "export", "--checkpoint", trained / "checkpoint.pt", "--format",
                       "pt2,aoti", "--out", out, "--data-dir", mnist_dir, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    return out, time.perf_counter() - t0


@pytest.fixture(scope="module")
def reference(trained, mnist_dir) -> tuple[np.ndarray, np.ndarray]:
    """The test images and the checkpoint's own PyTorch log-probabilities for them."""
    x, _ = load_split(mnist_dir, "test")
    model = model_from_checkpoint(load_checkpoint(trained / "checkpoint.pt"))
    with torch.inference_mode():
        return x, model(torch.from_numpy(normalize(x, MEAN, STD))).numpy()


def test_manifest_lists_both_with_hash_size_and_their_own_metadata(exported_torch, trained):
    out, _ = exported_torch
    artifacts = {a.format: a for a in read_manifest(out)}
    assert {f: a.file for f, a in artifacts.items()} == FILES
    source = file_digest(trained / "checkpoint.pt")
    for fmt, a in artifacts.items():
        assert a.sha256 == file_digest(out / a.file) and a.size_bytes == (out / a.file).stat().st_size
        assert a.source_sha256 == source and a.precision == "fp32" and a.settings["dynamic_batch"] is True
        with zipfile.ZipFile(out / a.file) as z:  # carried inside the file: the archive's extra file
            meta = json.loads(z.read(next(n for n in z.namelist() if n.endswith("/extra/toolkit.json"))))
        assert meta["artifact_format"] == fmt and meta["source_checkpoint_sha256"] == source
        assert meta["mean"] == "0.1307" and meta["std"] == "0.3081"
        assert json.loads(meta["labels"]) == [str(d) for d in range(10)] and "pixel / 255" in meta["preprocessing"]
    assert artifacts["aoti"].settings["models"] == {"cpu": "model", **(
        {"cuda": "cuda"} if torch.cuda.is_available() else {})}
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_both_load_with_torchs_own_api_in_a_process_without_toolkit(exported_torch, reference, tmp_path, python):
    out, _ = exported_torch
    x, expected = reference
    np.save(tmp_path / "x.npy", normalize(x[:64], MEAN, STD))
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, torch
        x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))
        extra = {{"toolkit.json": ""}}
        program = torch.export.load({str(out / 'model.pt2')!r}, extra_files=extra)
        compiled = torch._inductor.aoti_load_package({str(out / 'model.aoti.pt2')!r})
        outputs = {{}}
        for n in (1, 3, 64):  # the batch is dynamic in both
            outputs[f"pt2_{{n}}"] = program.module()(x[:n]).detach().numpy()
            outputs[f"aoti_{{n}}"] = compiled(x[:n]).numpy()
        np.savez({str(tmp_path / 'y.npz')!r}, **outputs)
        print(json.loads(extra["toolkit.json"])["output"], compiled.get_metadata()["preprocessing"])
        assert "toolkit" not in sys.modules
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TMPDIR"] = str(tmp_path)  # torch's loader unpacks the package there and leaves it at exit
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "log_probs" in done.stdout and "pixel / 255" in done.stdout  # metadata in the archive and in the model
    got = np.load(tmp_path / "y.npz")
    for name in got.files:
        n = int(name.split("_")[1])
        np.testing.assert_allclose(got[name], expected[:n], atol=1e-4)


def test_verify_takes_both_on_every_image_at_full_batch_and_at_batch_1(exported_torch, mnist_dir, tmp_path, python):
    out, export_seconds = exported_torch
    # a process of its own, as a user runs it: 4,000 calls at batch 1 in a test process that holds the thread
    # pools of every earlier test ran many times slower than the command does
    scratch = tmp_path / "tmp"  # where the AOTInductor loader unpacks the package
    scratch.mkdir()
    done = run_process(python, "-m", "toolkit", "verify", "--artifacts", out, "--data-dir", mnist_dir,
                       "--json", tmp_path / "v.json", timeout=600,
                       env=dict(os.environ, TMPDIR=str(scratch)))
    assert done.returncode == 0, done.stderr
    assert not [p.name for p in scratch.iterdir() if "aoti" in p.name]  # nothing unpacked is left behind
    report = json.loads((tmp_path / "v.json").read_text())
    rows = {r["artifact"]: r for r in report["results"]}
    assert set(rows) == set(FILES.values()) and report["passed"]
    assert {r["runtime"] for r in rows.values()} == {"torch-export", "aoti"}
    for row in rows.values():
        assert row["n"] == 10000 and row["agreement"] == 10000 and row["batch1_n"] == VerifyConfig().batch1_images
        assert row["judged_as"] == "fp32" and row["max_abs_diff"] <= 1e-4 and row["passed"]
    print(f"export pt2+aoti {export_seconds:.1f} s; verify {report['seconds']:.1f} s")  # shown with pytest -s


@pytest.mark.parametrize("fmt", list(FILES))
def test_a_tampered_file_is_refused_before_anything_loads_it(exported_torch, mnist_dir, tmp_path, monkeypatch, fmt):
    from toolkit.runners import torch_export

    def never(*args, **kwargs):
        raise AssertionError("a tampered file reached torch's loader")

    monkeypatch.setattr(torch_export, "load_exported", never)
    monkeypatch.setattr(torch_export, "load_aoti", never)
    folder = tmp_path / "exported"
    shutil.copytree(exported_torch[0], folder)
    path = folder / FILES[fmt]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    path.write_bytes(bytes(data))
    refused = run_cli("verify", "--artifacts", folder, "--data-dir", mnist_dir, "--format", fmt)
    assert "changed since export" in assert_one_line_error(refused, 1)  # judged failed, never run


def test_a_file_in_another_formats_place_is_refused_by_its_own_metadata(exported_torch, mnist_dir, tmp_path):
    # the manifest's hash and size made to match: the archive's own metadata still says what it is
    folder = tmp_path / "exported"
    shutil.copytree(exported_torch[0], folder)
    shutil.copy(folder / "model.pt2", folder / "model.aoti.pt2")
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = next(e for e in manifest["artifacts"] if e["file"] == "model.aoti.pt2")
    entry["sha256"], entry["size_bytes"] = file_digest(folder / "model.pt2"), (folder / "model.pt2").stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))
    refused = run_cli("verify", "--artifacts", folder, "--data-dir", mnist_dir, "--format", "aoti")
    assert "disagrees with the manifest on artifact_format" in assert_one_line_error(refused, 1)


def test_bench_times_both_in_the_same_rounds(exported_torch, mnist_dir, tmp_path):
    out, _ = exported_torch
    result = run_cli("bench", "--artifacts", out, "--data-dir", mnist_dir, "--runtime", "torch-export,aoti",
                     "--batch-sizes", "1,64", "--seconds", "0.2", "--rounds", "2", "--warmup", "1",
                     "--no-matmul-peak", "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    points = json.loads((tmp_path / "b.json").read_text())["points"]
    assert {(p["runtime"], p["format"], p["batch_size"]) for p in points} == {
        (r, f, b) for r, f in (("torch-export", "pt2"), ("aoti", "aoti")) for b in (1, 64)}
    for p in points:
        assert p["throughput"] > 0 and 0 < p["p50_ms"] <= p["p99_ms"] and p["iterations"] >= 2


def test_compare_takes_both(exported_torch, mnist_dir, tmp_path):
    out, _ = exported_torch
    result = run_cli("compare", out / "model.pt2", out / "model.aoti.pt2", "--data-dir", mnist_dir,
                     "--json", tmp_path / "c.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "c.json").read_text())
    assert report["passed"] and report["n"] == 10000 and report["agreement"] == 10000


def test_bench_file_times_an_aoti_package_in_its_runtime(exported_torch, mnist_dir, tmp_path):
    result = run_cli("bench", exported_torch[0] / "model.aoti.pt2", "--batch-sizes", "1,8", "--seconds", "0.05",
                     "--rounds", "1", "--no-matmul-peak", "--data-dir", mnist_dir, "--json", tmp_path / "b.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "b.json").read_text())
    assert {p["runtime"] for p in report["points"]} == {"aoti"}
    assert report["settings"]["inputs"] == "MNIST test images"


def test_the_cpp_example_embeds_the_package_and_classifies_like_pytorch(exported_torch, reference, tmp_path, python):
    out, _ = exported_torch
    x, expected = reference
    binary = tmp_path / "classify"
    t0 = time.perf_counter()
    built = subprocess.run(["sh", str(REPO / "examples" / "cpp" / "build.sh"), str(binary)], capture_output=True,
                           text=True, timeout=600, env={**os.environ, "PYTHON": python})
    assert built.returncode == 0, built.stderr[-3000:]
    build_seconds = time.perf_counter() - t0
    images = []
    for i in range(12):  # real MNIST test images as 28x28 PGM files
        images.append(tmp_path / f"test{i}.pgm")
        images[-1].write_bytes(b"P5\n# MNIST test image\n28 28\n255\n" + x[i].tobytes())
    sha = next(a.sha256 for a in read_manifest(out) if a.format == "aoti")
    done = subprocess.run([str(binary), str(out / "model.aoti.pt2"), sha, *map(str, images)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [line.split() for line in done.stdout.splitlines()]
    assert [line[0] for line in lines] == [str(p) for p in images]
    assert [int(line[1]) for line in lines] == expected[:12].argmax(1).tolist()
    np.testing.assert_allclose([float(line[2]) for line in lines], np.exp(expected[:12].max(1)), atol=1e-3)
    # a package that is not the one the manifest lists is refused before it is loaded
    wrong = subprocess.run([str(binary), str(out / "model.aoti.pt2"), "0" * 64, str(images[0])],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 1 and wrong.stdout == ""
    assert wrong.stderr.strip().startswith("error: ") and "SHA-256" in wrong.stderr
    bad_image = subprocess.run([str(binary), str(out / "model.aoti.pt2"), sha, str(binary)],
                               capture_output=True, text=True, timeout=60)
    assert bad_image.returncode == 1 and "is not a binary 28x28 8-bit PGM image" in bad_image.stderr
    print(f"C++ example built in {build_seconds:.1f} s")
