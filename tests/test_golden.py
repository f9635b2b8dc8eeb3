"""Golden outputs: export writes the checkpoint's PyTorch outputs beside the artifacts, hashed in the manifest,
and they are refused when changed, before anything parses them."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from tests.conftest import run_cli
from toolkit import golden
from toolkit.artifacts import GOLDEN_NAME, MANIFEST_NAME, read_golden_entry
from toolkit.checkpoint import load_checkpoint, save_checkpoint
from toolkit.data import MNIST_FILES, load_split
from toolkit.errors import ArtifactError
from toolkit.fileio import file_digest


def _manifest(folder):
    return json.loads((folder / MANIFEST_NAME).read_text())


def _rewrite_manifest(folder, change):
    manifest = _manifest(folder)
    change(manifest)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_export_writes_golden_outputs_listed_with_their_hash(exported, trained):
    entry = _manifest(exported)["golden"]
    path = exported / entry["file"]
    assert entry["file"] == GOLDEN_NAME
    assert entry["sha256"] == file_digest(path) and entry["size_bytes"] == path.stat().st_size
    assert entry["shape"] == [10000, 10] and entry["dtype"] == "float32"
    assert path.stat().st_size < 401_000  # compact: float32 [10000, 10] plus the .npy header
    assert entry["source_sha256"] == file_digest(trained / "checkpoint.pt")
    assert entry["data"]["md5"] == {n: MNIST_FILES[n] for n in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    stored = np.load(path, allow_pickle=False)
    assert stored.dtype == np.float32 and stored.shape == (10000, 10)


def test_golden_outputs_are_the_checkpoints_pytorch_outputs(exported, trained, mnist_dir):
    import torch

    from toolkit.checkpoint import model_from_checkpoint
    from toolkit.reference import reference_outputs

    log_probs, entry = golden.load_reference(exported)
    pixels, labels = load_split(mnist_dir, "test")
    # exactly what verify compares against today
    np.testing.assert_array_equal(log_probs, reference_outputs(str(trained / "checkpoint.pt"), pixels))
    # and, computed here independently, the model's log-softmax for a slice of images
    model = model_from_checkpoint(load_checkpoint(trained / "checkpoint.pt"))
    x = torch.from_numpy(((pixels[:300] / 255.0 - 0.1307) / 0.3081).astype(np.float32)).unsqueeze(1)
    with torch.inference_mode():
        np.testing.assert_allclose(log_probs[:300], model(x).numpy(), atol=1e-5)
    assert np.allclose(np.exp(log_probs).sum(1), 1.0, atol=1e-4)
    assert entry.reference_accuracy == pytest.approx(100.0 * (log_probs.argmax(1) == labels).mean())
    assert entry.reference_accuracy > 95.0


def test_a_changed_golden_file_is_refused_before_it_is_parsed(exported_copy, monkeypatch):
    path = exported_copy / GOLDEN_NAME
    array = np.load(path, allow_pickle=False)
    array[123, 4] += 0.5  # still a valid .npy of the same shape: only the hash can tell
    buf = io.BytesIO()
    np.save(buf, array)
    path.write_bytes(buf.getvalue())

    def never(*args, **kwargs):
        raise AssertionError("the golden file was parsed before its hash was checked")

    monkeypatch.setattr(golden.np, "load", never)
    with pytest.raises(ArtifactError, match="golden.npy changed since export"):
        golden.load_reference(exported_copy)


def test_a_pickle_in_place_of_the_golden_file_is_never_unpickled(exported_copy, tmp_path):
    # both the file and its hash in the manifest replaced: the hash matches, the .npy parser still refuses objects
    marker = tmp_path / "ran"
    buf = io.BytesIO()
    np.save(buf, np.array([_Boom(str(marker))], dtype=object), allow_pickle=True)
    (exported_copy / GOLDEN_NAME).write_bytes(buf.getvalue())
    digest, size = file_digest(exported_copy / GOLDEN_NAME), (exported_copy / GOLDEN_NAME).stat().st_size
    _rewrite_manifest(exported_copy, lambda m: m["golden"].update(sha256=digest, size_bytes=size))
    with pytest.raises(ArtifactError, match="golden.npy"):
        golden.load_reference(exported_copy)
    assert not marker.exists()


class _Boom:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("change, message", [
    (lambda m: m.pop("golden"), "lists no golden outputs"),
    (lambda m: m["golden"].update(file="../golden.npy"), "not a plain file name"),
    (lambda m: m["golden"].update(file="/etc/passwd"), "not a plain file name"),
    (lambda m: m["golden"].update(shape=[10000, 11]), "bad golden-output entry"),
    (lambda m: m["golden"].update(dtype="object"), "bad golden-output entry"),
    (lambda m: m["golden"].update(sha256="0" * 63), "bad golden-output entry"),
    (lambda m: m["golden"].update(unexpected=1), "bad golden-output entry"),
])
def test_a_bad_golden_entry_is_refused(exported_copy, change, message):
    _rewrite_manifest(exported_copy, change)
    with pytest.raises(ArtifactError, match=message):
        golden.load_reference(exported_copy)


def test_a_missing_golden_file_is_named(exported_copy):
    (exported_copy / GOLDEN_NAME).unlink()
    with pytest.raises(ArtifactError, match="golden.npy is listed in the manifest but missing"):
        golden.load_reference(exported_copy)


def test_a_shape_that_differs_from_the_manifest_is_refused(exported_copy):
    buf = io.BytesIO()
    np.save(buf, np.zeros((10, 10), np.float32))
    (exported_copy / GOLDEN_NAME).write_bytes(buf.getvalue())
    digest = file_digest(exported_copy / GOLDEN_NAME)
    size = (exported_copy / GOLDEN_NAME).stat().st_size
    _rewrite_manifest(exported_copy, lambda m: m["golden"].update(sha256=digest, size_bytes=size))
    with pytest.raises(ArtifactError, match=r"the manifest says float32 \(10000, 10\)"):
        golden.load_reference(exported_copy)


def test_golden_outputs_follow_the_checkpoint(tmp_path, trained, mnist_dir):
    """Without the test set export says so and writes none; the same checkpoint keeps its earlier ones; another
    checkpoint's are removed, never left beside a different model."""
    out, ckpt = tmp_path / "out", trained / "checkpoint.pt"
    no_data = tmp_path / "no-data"
    result = run_cli("export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out, "--data-dir", no_data)
    assert result.exit_code == 0, result.stderr
    assert "golden outputs not written" in result.stderr
    assert read_golden_entry(out) is None and not (out / GOLDEN_NAME).exists()

    assert run_cli("export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out,
                   "--data-dir", mnist_dir).exit_code == 0
    first = read_golden_entry(out)
    assert first is not None and first.sha256 == file_digest(out / GOLDEN_NAME)
    assert run_cli("export", "--checkpoint", ckpt, "--format", "torchscript", "--out", out,
                   "--data-dir", no_data).exit_code == 0
    assert read_golden_entry(out).sha256 == first.sha256  # same checkpoint: kept

    other = load_checkpoint(ckpt)
    other["state_dict"] = {k: v + 0.001 for k, v in other["state_dict"].items()}
    save_checkpoint(tmp_path / "other.pt", {k: v for k, v in other.items() if k not in ("format", "format_version")})
    result = run_cli("export", "--checkpoint", tmp_path / "other.pt", "--format", "torchscript", "--out", out,
                     "--data-dir", no_data, "--overwrite")
    assert result.exit_code == 0 and "removed golden.npy" in result.stderr
    assert read_golden_entry(out) is None and not (out / GOLDEN_NAME).exists()
