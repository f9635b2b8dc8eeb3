import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.conftest import NO_BF16, assert_one_line_error, fake_cpu_flags, run_cli
from toolkit.artifacts import read_manifest, select
from toolkit.errors import ConfigError
from toolkit.verify import parse_tolerance_overrides


def test_every_artifact_matches_pytorch_on_all_test_images(exported, mnist_dir, tmp_path):
    result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir, "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] is True and report["n"] == 10000
    rows = {r["artifact"]: r for r in report["results"] if r["mode"] == "f32"}
    assert set(rows) == {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.ts.pt", "model.app.onnx",
                         "model.pt2", "model.xml", "model.int8.xml"}
    # each file in its own runtime only (OpenVINO also opens the .onnx files, but only when asked)
    assert {(r["artifact"], r["runtime"]) for r in report["results"] if r["runtime"] == "openvino"} == {
        ("model.xml", "openvino"), ("model.int8.xml", "openvino")}
    for row in rows.values():
        assert {"artifact", "format", "precision", "provider", "max_abs_diff", "agreement", "n", "accuracy",
                "passed"} <= set(row)
        assert row["n"] == 10000 and row["batch1_n"] == 2000 and row["passed"]
    for name in ("model.onnx", "model.ts.pt", "model.app.onnx", "model.pt2", "model.xml"):
        assert rows[name]["agreement"] == 10000 and rows[name]["max_abs_diff"] <= 1e-4
    assert abs(rows["model.int8.onnx"]["accuracy_delta"]) <= 0.3
    assert rows["model.onnx"]["accuracy"] == pytest.approx(report["reference_accuracy"])


def _perturb_weights(path, scale):
    model = onnx.load(str(path))
    init = model.graph.initializer[0]
    w = numpy_helper.to_array(init).copy()
    w += scale * np.random.default_rng(0).standard_normal(w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))


def test_perturbed_weights_fail_verification_naming_the_artifact(exported_copy, mnist_dir, tmp_path):
    _perturb_weights(exported_copy / "model.onnx", 0.05)
    _relist(exported_copy, "model.onnx")  # as if exported like that: the numbers, not the hash, must catch it
    result = run_cli("verify", "--artifacts", exported_copy, "--data-dir", mnist_dir, "--format", "onnx",
                     "--precision", "fp32,int8", "--json", tmp_path / "v.json")
    line = assert_one_line_error(result, 1)
    assert "model.onnx" in line and "max |diff|" in line
    assert "model.int8.onnx:" not in line
    rows = {r["artifact"]: r for r in json.loads((tmp_path / "v.json").read_text())["results"]}
    assert rows["model.onnx"]["passed"] is False and rows["model.onnx"]["max_abs_diff"] > 1e-4
    assert rows["model.int8.onnx"]["passed"] is True


def test_a_tiny_perturbation_is_still_caught(exported_copy, mnist_dir):
    _perturb_weights(exported_copy / "model.onnx", 1e-3)  # small enough to keep most predictions
    _relist(exported_copy, "model.onnx")
    result = run_cli("verify", "--artifacts", exported_copy, "--data-dir", mnist_dir, "--format", "onnx",
                     "--precision", "fp32", "--tolerance", "fp32.min_agreement=0")
    assert "max |diff|" in assert_one_line_error(result, 1)


def test_truncated_onnx_is_a_clear_error(exported_copy, mnist_dir):
    path = exported_copy / "model.onnx"
    path.write_bytes(path.read_bytes()[:5000])
    result = run_cli("verify", "--artifacts", exported_copy, "--data-dir", mnist_dir, "--format", "onnx",
                     "--precision", "fp32")
    assert "model.onnx: not run: model.onnx changed since export" in assert_one_line_error(result, 1)
    _relist(exported_copy, "model.onnx")  # listed as it is now: loading it fails, as that artifact's failure
    result = run_cli("verify", "--artifacts", exported_copy, "--data-dir", mnist_dir, "--format", "onnx",
                     "--precision", "fp32")
    assert "model.onnx: not run: ONNX Runtime cannot load" in assert_one_line_error(result, 1)


def _onnx_with_wrong_input(path):
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["image"], ["log_probs"], axes=[2, 3], keepdims=0)], "wrong",
        [helper.make_tensor_value_info("image", onnx.TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("log_probs", onnx.TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    model.metadata_props.add(key="toolkit.format_version", value="1")
    onnx.save(model, str(path))


def _relist(folder, name):
    """Update the manifest's hash and size of `name`, as if the changed file had been exported like that."""
    from toolkit.fileio import file_digest

    manifest = json.loads((folder / "manifest.json").read_text())
    for entry in manifest["artifacts"]:
        if entry["file"] == name:
            entry["sha256"] = file_digest(folder / name)
            entry["size_bytes"] = (folder / name).stat().st_size
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_onnx_whose_input_does_not_fit_is_that_artifacts_failure(exported_copy, mnist_dir):
    _onnx_with_wrong_input(exported_copy / "model.onnx")
    _relist(exported_copy, "model.onnx")
    result = run_cli("verify", "--artifacts", exported_copy, "--data-dir", mnist_dir, "--format", "onnx",
                     "--precision", "fp32,int8")
    line = assert_one_line_error(result, 1)
    assert "1 of 2" in line and "model.onnx: not run:" in line and "[N,1,28,28]" in line


def test_a_graph_that_crashes_while_running_is_reported_with_the_others(exported_copy, mnist_dir, tmp_path):
    path = exported_copy / "model.onnx"
    model = onnx.load(str(path))
    shape = numpy_helper.from_array(np.array([3, -1], np.int64), "bad_shape")  # 10,000 x 784 is not a multiple of 3
    model.graph.initializer.append(shape)
    first = model.graph.node[0]
    model.graph.node.insert(0, helper.make_node("Reshape", [first.input[0], "bad_shape"], ["reshaped"]))
    model.graph.node.insert(1, helper.make_node("Reshape", ["reshaped", "back_shape"], ["restored"]))
    model.graph.initializer.append(numpy_helper.from_array(np.array([-1, 1, 28, 28], np.int64), "back_shape"))
    for node in model.graph.node[2:]:
        node.input[:] = ["restored" if i == first.input[0] else i for i in node.input]
    onnx.save(model, str(path))
    _relist(exported_copy, "model.onnx")
    result = run_cli("verify", "--artifacts", exported_copy, "--data-dir", mnist_dir, "--format", "onnx",
                     "--precision", "fp32,int8", "--batch1-images", "5", "--json", tmp_path / "v.json")
    line = assert_one_line_error(result, 1)
    assert "model.onnx: not run:" in line and "failed while running on onnxruntime" in line
    rows = {r["artifact"]: r for r in json.loads((tmp_path / "v.json").read_text())["results"]}
    assert rows["model.int8.onnx"]["passed"] is True and rows["model.onnx"]["passed"] is False


@pytest.mark.parametrize("runtime", ["openvino", "opencv"])
def test_other_runtimes_agree_on_every_test_image(exported, mnist_dir, tmp_path, runtime):
    modes = ["--mode", "f32,bf16"] if runtime == "openvino" else []  # bf16 named: checked on any CPU
    result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir, "--runtime", runtime,
                     "--batch1-images", "20", *modes, "--json", tmp_path / "v.json")
    report = json.loads((tmp_path / "v.json").read_text())
    assert result.exit_code == 0, result.stderr
    assert set(report["runtimes"]) == {runtime} and report["runtimes"][runtime]
    rows = {(r["artifact"], r["mode"]): r for r in report["results"]}
    for name in ("model.onnx", "model.app.onnx"):
        row = rows[(name, "f32")]
        assert row["runtime"] == runtime and row["agreement"] == 10000 and row["max_abs_diff"] <= 1e-4
    if runtime == "openvino":  # bf16 is its own row, judged as bf16, and it costs something measurable
        bf16 = rows[("model.onnx", "bf16")]
        if bf16["computed_mode"] == "":
            assert bf16["judged_as"] == "bf16" and bf16["max_abs_diff"] > 1e-4
        else:  # OpenVINO cannot do bf16 on this CPU: the row says it computed f32 and is judged as that
            assert bf16["computed_mode"] == "f32" and bf16["judged_as"] == "fp32"
            assert "(computed f32)" in result.stdout
        assert rows[("model.int8.onnx", "f32")]["judged_as"] == "int8"
    else:
        assert set(rows) == {("model.onnx", "f32"), ("model.app.onnx", "f32")}  # fp32 files only


@pytest.mark.parametrize("flags, args, checked", [
    (NO_BF16, [], False),  # emulated: left out with a note
    (NO_BF16, ["--mode", "f32,bf16"], True),  # named: checked although emulated
    (NO_BF16 | {"avx512_bf16"}, [], True),  # native: checked by default
])
def test_openvino_bf16_is_checked_where_native_or_named(exported, mnist_dir, tmp_path, monkeypatch, flags, args,
                                                        checked):
    fake_cpu_flags(monkeypatch, flags)
    result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir, "--runtime", "openvino",
                     "--format", "onnx", "--precision", "fp32", "--batch1-images", "0", *args,
                     "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    modes = {(r["artifact"], r["mode"]) for r in report["results"]}
    assert modes == {("model.onnx", "f32")} | ({("model.onnx", "bf16")} if checked else set())
    notes = [line for line in result.stdout.splitlines() if line.startswith("skipped openvino bf16: ")]
    assert len(notes) == (0 if checked else 1) and ("openvino bf16" in report["skipped"]) is not checked
    if not checked:
        assert "no native bf16" in notes[0] and "--mode f32,bf16 runs it anyway" in notes[0]


def test_a_named_mode_applies_to_the_fp32_files_only(exported, mnist_dir, tmp_path):
    result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "openvino",
                     "--mode", "bf16", "--batch1-images", "0", "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    # the int8 IR has one mode, its own; a mode named on purpose leaves no note
    assert {(r["artifact"], r["mode"]) for r in report["results"]} == {("model.xml", "bf16"), ("model.int8.xml", "f32")}
    assert not report["skipped"] and "skipped" not in result.stdout
    assert "device cpu" in " ".join(result.stdout.split())  # the table says device, as the options do


def test_an_unknown_mode_is_one_line(exported, mnist_dir):
    result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir, "--mode", "f32,f16")
    assert "unknown mode 'f16'" in assert_one_line_error(result, 2)


def test_missing_manifest_and_unknown_provider(tmp_path, exported, mnist_dir):
    assert "toolkit export" in assert_one_line_error(run_cli("verify", "--artifacts", tmp_path), 2)
    result = run_cli("verify", "--artifacts", exported, "--provider", "metal", "--data-dir", mnist_dir)
    assert "unknown provider" in assert_one_line_error(result, 2)


def test_unavailable_provider_names_what_is_missing(exported, mnist_dir):
    import onnxruntime as ort
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_cli("verify", "--artifacts", exported, "--provider", "cuda", "--data-dir", mnist_dir,
                     "--format", "onnx", "--precision", "fp32")
    line = assert_one_line_error(result, 2)
    assert "CUDAExecutionProvider" in line
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert "silently use the CPU" in line  # listed, yet it cannot load here: never mislabel the CPU


def test_checkpoint_of_another_model_fails_verification(exported, trained, tmp_path, mnist_dir):
    result = run_cli("train", "--model", "mlp", "--epochs", "1", "--train-limit", "2000", "--out", tmp_path / "mlp",
                     "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    result = run_cli("verify", "--artifacts", exported, "--checkpoint", tmp_path / "mlp" / "checkpoint.pt",
                     "--data-dir", mnist_dir, "--format", "onnx", "--precision", "fp32")
    assert "different checkpoint" in assert_one_line_error(result, 1)


def test_tolerance_overrides():
    tolerances = parse_tolerance_overrides(["fp16.min_agreement=0.99", "int8.max_accuracy_change=0.5"])
    assert tolerances["fp16"].min_agreement == 0.99 and tolerances["int8"].max_accuracy_change == 0.5
    assert tolerances["fp32"].max_abs_diff == 1e-4
    for bad in ("fp64.min_agreement=1", "fp16.speed=2", "fp16.min_agreement", "fp16.min_agreement=high",
                "fp32.min_agreement=nan", "fp32.min_agreement=1.5", "fp32.max_abs_diff=inf", "fp32.max_abs_diff=-1",
                "int8.max_accuracy_change=nan", "fp32.max_batch_diff=-0.1"):
        with pytest.raises(ConfigError):
            parse_tolerance_overrides([bad])


def test_a_nan_tolerance_cannot_switch_the_check_off(exported, mnist_dir):
    result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir,
                     "--tolerance", "fp32.min_agreement=nan")
    assert "finite" in assert_one_line_error(result, 2)
    result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir, "--batch1-images", "-1")
    assert "batch1-images" in assert_one_line_error(result, 2)


def test_a_runtime_that_is_not_installed(exported, mnist_dir, monkeypatch):
    from dataclasses import replace

    from toolkit import runners

    monkeypatch.setitem(runners.RUNTIMES, "opencv", replace(runners.RUNTIMES["opencv"], module="no_such_cv2_module"))
    result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir, "--runtime", "opencv")
    assert "runtime opencv is not installed" in assert_one_line_error(result, 2)
    assert "pip install 'toolkit[runtimes]'" in assert_one_line_error(result, 2)
    selection = runners.select_runtimes(["all"])
    assert "opencv" not in selection.runtimes and selection.skipped["opencv"] == \
        "not installed (pip install 'toolkit[runtimes]')"
    # noted only where it would have run a selected file: OpenCV reads .onnx files, not TorchScript
    artifacts = select(read_manifest(exported), ["onnx", "torchscript"], ["fp32"])
    assert set(runners.would_run(selection, artifacts, ["cpu"])) == {"opencv"}
    assert runners.would_run(selection, artifacts, ["cpu"], ["torchscript"]) == {}
    assert runners.would_run(selection, artifacts, ["cpu"], native_only=True) == {}  # .onnx is ONNX Runtime's


def test_require_all_fails_a_run_that_left_a_selected_file_unverified(exported, mnist_dir, tmp_path, monkeypatch):
    """A file whose runtime is not installed is noted as not verified and the run passes (an inference-only
    install verifies what it can); --require-all makes that exit 1, naming the file."""
    from dataclasses import replace

    from toolkit import runners

    monkeypatch.setitem(runners.RUNTIMES, "openvino",
                        replace(runners.RUNTIMES["openvino"], module="no_such_openvino_module"))
    args = ("verify", "--artifacts", exported, "--format", "onnx,openvino", "--precision", "fp32", "--reference",
            "golden", "--batch1-images", "10", "--data-dir", mnist_dir, "--json", tmp_path / "v.json")
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    assert "not verified: model.xml" in result.stdout
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] is True and report["not_verified"] == ["model.xml"]
    missing = "runtime openvino not installed (pip install 'toolkit[runtimes]')"
    assert report["not_verified_why"] == {"model.xml": missing}
    assert result.stdout.count("not verified") == 1  # the skipped line names it; no second note
    (tmp_path / "v.json").unlink()
    result = run_cli(*args, "--require-all")
    assert assert_one_line_error(result, 1) == f"error: not verified (--require-all): model.xml: {missing}"
    assert json.loads((tmp_path / "v.json").read_text())["not_verified"] == ["model.xml"]  # the report is written
    monkeypatch.undo()
    assert run_cli(*args, "--require-all").exit_code == 0  # every selected file verified


@pytest.mark.parametrize("args, file, why", [
    (["--runtime", "openvino", "--mode", "f32", "--format", "torchscript,onnx", "--precision", "fp32"], "model.ts.pt",
     "no selected runtime (openvino) opens torchscript files"),
    (["--runtime", "opencv", "--format", "onnx", "--precision", "fp32,int8"], "model.int8.onnx",
     "opencv runs only fp32 files"),
])
def test_a_selected_file_no_selected_runtime_opens_is_noted_with_why(exported, mnist_dir, tmp_path, args, file,
                                                                     why):
    """Every installed runtime can run here, yet none selected opens the file: the note, the JSON and
    --require-all's error say so, and not that a runtime is missing."""
    args = ("verify", "--artifacts", exported, *args, "--reference", "golden", "--batch1-images", "2",
            "--data-dir", mnist_dir, "--json", tmp_path / "v.json")
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    assert f"not verified: {file}: {why}" in result.stdout.splitlines()
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["passed"] is True and report["not_verified"] == [file] and report["not_verified_why"] == {file: why}
    result = run_cli(*args, "--require-all")
    assert assert_one_line_error(result, 1) == f"error: not verified (--require-all): {file}: {why}"
    assert f"not verified: {file}: {why}" in result.stdout.splitlines()


def test_a_selected_file_whose_runtime_cannot_run_on_the_device_is_noted_with_why(exported, mnist_dir, tmp_path,
                                                                                  monkeypatch):
    from dataclasses import replace

    from toolkit import runners

    monkeypatch.setitem(runners.RUNTIMES, "openvino", replace(runners.RUNTIMES["openvino"], devices=("cuda",)))
    result = run_cli("verify", "--artifacts", exported, "--runtime", "onnxruntime,openvino", "--format",
                     "onnx,openvino", "--precision", "fp32", "--reference", "golden", "--batch1-images", "2",
                     "--data-dir", mnist_dir, "--json", tmp_path / "v.json", "--require-all")
    why = "runtime openvino runs on cuda, not cpu"
    assert assert_one_line_error(result, 1) == f"error: not verified (--require-all): model.xml: {why}"
    assert f"not verified: model.xml: {why}" in result.stdout.splitlines()
    assert json.loads((tmp_path / "v.json").read_text())["not_verified_why"] == {"model.xml": why}


def test_the_checkpoint_found_through_the_manifest_is_named_without_its_detour(trained, exported, mnist_dir,
                                                                              tmp_path):
    """A manifest keeps its checkpoint relative to its own folder ("../runs/..."); joined, that path reads
    exported/../runs/...: verify names and loads it as runs/..., the same file."""
    import os

    from toolkit.artifacts import read_manifest
    from toolkit.fileio import file_digest
    from toolkit.source_checkpoint import find_checkpoint

    manifest = read_manifest(exported)
    assert ".." in manifest[0].source_checkpoint  # the detour is there to take out
    found = find_checkpoint(exported, manifest)
    assert ".." not in str(found) and os.path.samefile(found, trained / "checkpoint.pt")
    assert file_digest(found) == manifest[0].source_sha256
    result = run_cli("verify", "--artifacts", exported, "--data-dir", mnist_dir, "--format", "onnx", "--precision",
                     "fp32", "--json", tmp_path / "v.json")
    assert result.exit_code == 0, result.stderr
    report = json.loads((tmp_path / "v.json").read_text())
    assert report["checkpoint"] == str(found) and report["reference"] == f"checkpoint {found}"


def test_a_detour_through_a_symlinked_folder_is_kept_as_given(trained, tmp_path):
    from toolkit.fileio import shortest

    (tmp_path / "link").symlink_to(trained)  # link/.. is trained's parent, not tmp_path
    through = tmp_path / "link" / ".." / trained.name / "checkpoint.pt"
    assert shortest(through) == through  # normalized it would name tmp_path/convnet/..., another path
    assert shortest(trained / ".." / trained.name / "checkpoint.pt") == trained / "checkpoint.pt"


def test_the_checkpoint_hash_recorded_is_that_of_the_bytes_loaded(short_run, mnist_dir, tmp_path, monkeypatch):
    """The reference reads its checkpoint once: the SHA-256 it records is the file's, and a file replaced after it
    was first read cannot give its outputs under the first file's hash."""
    import hashlib
    import shutil
    from pathlib import Path

    from toolkit import fileio
    from toolkit.checkpoint import load_checkpoint, save_checkpoint
    from toolkit.reference import load_reference

    path = tmp_path / "checkpoint.pt"
    shutil.copyfile(short_run / "checkpoint.pt", path)
    first = path.read_bytes()
    ref = load_reference(str(path), str(mnist_dir))
    assert ref.source_sha256 == hashlib.sha256(first).hexdigest()

    other = load_checkpoint(path)  # the same run with its weights doubled: other outputs
    other["state_dict"] = {k: v * 2 if v.is_floating_point() else v for k, v in other["state_dict"].items()}
    save_checkpoint(tmp_path / "other.pt", other)
    other_ref = load_reference(str(tmp_path / "other.pt"), str(mnist_dir))
    assert not np.allclose(other_ref.log_probs, ref.log_probs, atol=1e-3)

    def swapped_after(read):  # the file is replaced by the other one as soon as anything has read it
        def reading(*args, **kwargs):
            got = read(*args, **kwargs)
            if Path(args[0]) == path:
                shutil.copyfile(tmp_path / "other.pt", path)
            return got
        return reading

    monkeypatch.setattr(fileio, "file_digest", swapped_after(fileio.file_digest))
    monkeypatch.setattr(Path, "read_bytes", swapped_after(Path.read_bytes))
    swapped = load_reference(str(path), str(mnist_dir))
    assert path.read_bytes() != first  # it was replaced
    assert swapped.source_sha256 == ref.source_sha256
    np.testing.assert_allclose(swapped.log_probs, ref.log_probs, atol=1e-5)


def test_a_manifests_checkpoint_path_leads_nowhere_outside_the_project(short_run, mnist_dir, tmp_path, monkeypatch):
    """export records the checkpoint relative to the manifest (exported/../runs/...), and verify follows that path
    to a regular file in the folder holding the export folder, or in the current folder; never out of them (an
    absolute path, ../.. out, a symbolic link out), not even to a file of the recorded SHA-256."""
    import os
    import shutil

    from toolkit import fileio

    project = tmp_path / "project"
    (project / "runs" / "run").mkdir(parents=True)
    checkpoint = project / "runs" / "run" / "checkpoint.pt"
    shutil.copyfile(short_run / "checkpoint.pt", checkpoint)
    shutil.copyfile(checkpoint, tmp_path / "outside.pt")  # the very weights, outside the project
    (project / "runs" / "link.pt").symlink_to(tmp_path / "outside.pt")
    for out in ("exported", "exported/nested"):  # README's layouts: exported/ and exported/NAME beside runs/
        result = run_cli("export", "--checkpoint", checkpoint, "--format", "onnx", "--out", project / out,
                         "--data-dir", mnist_dir)
        assert result.exit_code == 0, result.stderr
    assert read_manifest(project / "exported")[0].source_checkpoint == "../runs/run/checkpoint.pt"
    digested = []
    opened = fileio.open_regular
    monkeypatch.setattr(fileio, "open_regular", lambda path, *a, **k: digested.append(os.path.abspath(path)) or
                        opened(path, *a, **k))

    def verified(folder, reference="auto"):
        result = run_cli("verify", "--artifacts", folder, "--reference", reference, "--batch1-images", "2",
                         "--data-dir", mnist_dir, "--json", tmp_path / "v.json")
        return result, json.loads((tmp_path / "v.json").read_text()) if result.exit_code == 0 else None

    result, report = verified(project / "exported")  # the normal layout, from any current folder
    assert report["reference"] == f"checkpoint {checkpoint}", result.stdout
    monkeypatch.chdir(project)  # exported/NAME: its checkpoint is in the current folder
    result, report = verified(Path("exported/nested"))
    assert report["reference"] == "checkpoint runs/run/checkpoint.pt", result.stdout
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a current folder that holds neither the project nor outside.pt
    for i, recorded in enumerate(("/etc/passwd", "../../outside.pt", "../runs/link.pt")):
        folder = project / f"copy{i}"
        shutil.copytree(project / "exported", folder)
        path = folder / "manifest.json"
        manifest = json.loads(path.read_text())
        for artifact in manifest["artifacts"]:
            artifact["source_checkpoint"] = recorded
        path.write_text(json.dumps(manifest))
        digested.clear()
        result, report = verified(folder)  # auto: the golden outputs instead
        assert not [p for p in digested if not p.startswith(str(folder))], recorded
        assert report["reference"].startswith("golden.npy"), result.stdout
        why = "the manifest's source_checkpoint is outside the folder above the export and the current folder"
        assert report["reference_note"].startswith(why) and f"checkpoint not used: {why}" in result.stdout
        message = assert_one_line_error(verified(folder, "checkpoint")[0], 2)
        assert f"{recorded} (not followed:" in message
        assert not [p for p in digested if not p.startswith(str(folder))], recorded


def test_a_checkpoint_beside_the_manifest_is_never_read_through_a_symbolic_link(short_run, mnist_dir, tmp_path,
                                                                               monkeypatch):
    """Where the recorded path is not followed, verify and bench look for the checkpoint among the `*.pt` files
    beside the manifest; a symbolic link there may lead anywhere and is skipped, not even hashed, though it leads
    to a file of the recorded SHA-256. A regular file there is found."""
    import os
    import shutil

    from toolkit import fileio
    from toolkit.errors import CheckpointError
    from toolkit.source_checkpoint import find_checkpoint

    folder = tmp_path / "exported"
    result = run_cli("export", "--checkpoint", short_run / "checkpoint.pt", "--format", "onnx", "--out", folder,
                     "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for artifact in manifest["artifacts"]:
        artifact["source_checkpoint"] = "../runs/run/checkpoint.pt"  # not there
    path.write_text(json.dumps(manifest))
    (tmp_path / "outside").mkdir()
    shutil.copyfile(short_run / "checkpoint.pt", tmp_path / "outside" / "checkpoint.pt")  # the very weights
    (folder / "link.pt").symlink_to(tmp_path / "outside" / "checkpoint.pt")
    monkeypatch.chdir(tmp_path / "outside")
    digested = []
    opened = fileio.open_regular
    monkeypatch.setattr(fileio, "open_regular", lambda p, *a, **k: digested.append(os.path.abspath(p)) or
                        opened(p, *a, **k))

    with pytest.raises(CheckpointError):
        find_checkpoint(folder, read_manifest(folder))
    result = run_cli("verify", "--artifacts", folder, "--batch1-images", "2", "--data-dir", mnist_dir, "--json",
                     tmp_path / "v.json")
    assert result.exit_code == 0, result.stdout + result.stderr
    assert json.loads((tmp_path / "v.json").read_text())["reference"].startswith("golden.npy"), result.stdout
    assert str(folder / "link.pt") not in digested

    # a link put in place of a regular file after the look at the folder is not read either: the file is opened
    # without following a link, and the descriptor read is the one checked to be a regular file
    from toolkit import source_checkpoint

    with monkeypatch.context() as m:
        m.setattr(source_checkpoint, "_beside", lambda folder: [folder / "link.pt"])
        with pytest.raises(CheckpointError):
            find_checkpoint(folder, read_manifest(folder))
        (folder / "link.pt").unlink()
        os.mkfifo(folder / "link.pt")  # nor does a FIFO hold the search (opened, it is no regular file)
        with pytest.raises(CheckpointError):
            find_checkpoint(folder, read_manifest(folder))

    (folder / "link.pt").unlink()
    shutil.copyfile(tmp_path / "outside" / "checkpoint.pt", folder / "copied.pt")
    assert find_checkpoint(folder, read_manifest(folder)) == folder / "copied.pt"


def test_auto_says_why_the_checkpoint_was_not_used(short_run, mnist_dir, tmp_path, monkeypatch):
    """auto falls back to the golden outputs when the checkpoint is gone: the title on stdout and the JSON say
    why; with the checkpoint there it is used, and there is no note."""
    import shutil

    (tmp_path / "runs" / "run").mkdir(parents=True)
    checkpoint = tmp_path / "runs" / "run" / "checkpoint.pt"
    shutil.copyfile(short_run / "checkpoint.pt", checkpoint)
    assert run_cli("export", "--checkpoint", checkpoint, "--format", "onnx", "--precision", "fp32", "--out",
                   tmp_path / "exported", "--data-dir", mnist_dir).exit_code == 0
    monkeypatch.chdir(tmp_path)

    def verified():
        result = run_cli("verify", "--artifacts", "exported", "--batch1-images", "2", "--data-dir", mnist_dir,
                         "--json", "v.json")
        assert result.exit_code == 0 and "not used" not in result.stderr, result.stderr  # stderr: progress only
        return result.stdout, json.loads(Path("v.json").read_text())

    stdout, report = verified()
    assert report["reference"] == "checkpoint runs/run/checkpoint.pt" and report["reference_note"] == ""
    assert "checkpoint not used" not in stdout
    checkpoint.rename(tmp_path / "moved.pt")
    stdout, report = verified()
    assert report["reference"].startswith("golden.npy sha256=")
    assert report["reference_note"] == "the checkpoint runs/run/checkpoint.pt is not there"
    title = stdout.splitlines()[:2]  # the title names the reference, the line under it why
    assert "parity with PyTorch (golden.npy sha256=" in title[0], stdout
    assert title[1].strip() == "checkpoint not used: the checkpoint runs/run/checkpoint.pt is not there", stdout
