import collections
import json
import os
import subprocess
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import toolkit.artifacts
import toolkit.export
from tests.conftest import assert_one_line_error, run_cli, run_process
from toolkit.artifacts import read_manifest, read_manifest_field
from toolkit.checkpoint import load_checkpoint, save_checkpoint
from toolkit.data import load_split
from toolkit.fileio import file_digest

EXPECTED = {("onnx", "fp32"): "model.onnx", ("onnx", "fp16"): "model.fp16.onnx", ("onnx", "int8"): "model.int8.onnx",
            ("torchscript", "fp32"): "model.ts.pt", ("onnx-app", "fp32"): "model.app.onnx",
            ("pt2", "fp32"): "model.pt2", ("openvino", "fp32"): "model.xml", ("openvino", "int8"): "model.int8.xml"}


def test_manifest_lists_every_artifact_with_checksums(exported, trained):
    artifacts = read_manifest(exported)
    assert {(a.format, a.precision): a.file for a in artifacts} == EXPECTED
    source_sha = file_digest(trained / "checkpoint.pt")
    for a in artifacts:
        assert a.sha256 == file_digest(exported / a.file)
        assert a.size_bytes == (exported / a.file).stat().st_size
        assert a.source_sha256 == source_sha and a.versions["torch"] == torch.__version__.split("+")[0]
    int8 = next(a for a in artifacts if a.format == "onnx" and a.precision == "int8")
    assert int8.settings["calibration_split"] == "train" and int8.settings["per_channel"] is False
    assert not [p for p in exported.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_onnx_files_pass_the_checker_and_describe_themselves(exported, trained):
    for name in ("model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.app.onnx"):
        model = onnx.load(str(exported / name))
        onnx.checker.check_model(model, full_check=True)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["mean"] == "0.1307" and meta["std"] == "0.3081"
        assert json.loads(meta["labels"]) == [str(d) for d in range(10)]
        assert meta["source_checkpoint_sha256"] == file_digest(trained / "checkpoint.pt")
        assert float(meta["test_accuracy"]) > 98 and meta["torch_version"] and meta["onnx_version"]
    fp16 = onnx.load(str(exported / "model.fp16.onnx"))
    weight_types = {t.data_type for t in fp16.graph.initializer if len(t.dims) > 1}
    assert weight_types == {onnx.TensorProto.FLOAT16}  # every weight tensor is float16
    assert fp16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # callers change nothing
    int8_ops = {n.op_type for n in onnx.load(str(exported / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= int8_ops


@pytest.mark.parametrize("batch", [1, 10000])
def test_onnx_runs_at_batch_one_and_at_the_whole_test_set(exported, mnist_dir, batch):
    x, y = load_split(mnist_dir, "test")
    images = ((x[:batch].astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None]
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": images})[0]
    assert out.shape == (batch, 10)
    if batch > 1:
        assert (out.argmax(1) == y).mean() > 0.98


def test_torchscript_loads_in_a_process_that_never_imported_toolkit(exported, tmp_path, mnist_dir, python):
    x, _ = load_split(mnist_dir, "test")
    images = ((x[:64].astype(np.float32) / 255 - 0.1307) / 0.3081)[:, None]
    np.save(tmp_path / "x.npy", images)
    script = textwrap.dedent(f"""
        import json, sys, numpy as np, torch
        extra = {{"toolkit.json": ""}}
        m = torch.jit.load({str(exported / 'model.ts.pt')!r}, _extra_files=extra)
        y = m(torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))).detach().numpy()
        np.save({str(tmp_path / 'y.npy')!r}, y)
        print(json.loads(extra["toolkit.json"])["output"])
        assert "toolkit" not in sys.modules
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([python, "-c", script], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "log_probs" in done.stdout
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), session.run(None, {"image": images})[0], atol=1e-4)


def test_exporting_again_replaces_cleanly(tmp_path, trained, mnist_dir, monkeypatch):
    out = tmp_path / "exp"
    assert run_cli("export", "--checkpoint", trained / "checkpoint.pt", "--format", "onnx,torchscript",
                   "--out", out, "--data-dir", mnist_dir).exit_code == 0
    first = {a.file: a.sha256 for a in read_manifest(out)}
    assert set(first) == {"model.onnx", "model.ts.pt"}
    # the same checkpoint again, ONNX only: TorchScript stays listed, ONNX is rebuilt
    assert run_cli("export", "--checkpoint", trained / "checkpoint.pt", "--out", out).exit_code == 0
    assert {a.file for a in read_manifest(out)} == {"model.onnx", "model.ts.pt"}
    # another checkpoint: its artifacts never sit beside the old model's
    ckpt = load_checkpoint(trained / "checkpoint.pt")
    ckpt["state_dict"] = {k: v + 0.001 for k, v in ckpt["state_dict"].items()}
    save_checkpoint(tmp_path / "other.pt", {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    (out / "verify.json").write_text("{}")  # a result that describes the old model
    (out / "notes.txt").write_text("mine")
    before = {a.file: a.sha256 for a in read_manifest(out)}
    with monkeypatch.context() as m:  # refused before the work: the golden outputs are never computed
        m.setattr(toolkit.export, "_golden_outputs", lambda *a: pytest.fail("golden outputs computed first"))
        refused = run_cli("export", "--checkpoint", tmp_path / "other.pt", "--out", out)
    assert "--overwrite" in assert_one_line_error(refused, 2)
    assert {a.file: a.sha256 for a in read_manifest(out)} == before  # nothing replaced without --overwrite
    result = run_cli("export", "--checkpoint", tmp_path / "other.pt", "--out", out, "--overwrite")
    assert result.exit_code == 0 and "model.ts.pt" in result.stderr and "verify.json" in result.stderr
    assert [a.file for a in read_manifest(out)] == ["model.onnx"]
    assert not (out / "model.ts.pt").exists() and not (out / "verify.json").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only toolkit's own files are ever removed


def test_golden_and_inputs_files_no_manifest_lists_are_the_users(tmp_path, short_run, mnist_dir):
    out = tmp_path / "mine"
    out.mkdir()
    np.save(out / "inputs.npy", np.ones((2, 3), np.float32))
    np.save(out / "golden.npy", np.zeros((2, 10), np.float32))
    mine = {name: (out / name).read_bytes() for name in ("inputs.npy", "golden.npy")}
    # no test set: no golden outputs are written, and the files of those names stay as they were
    result = run_cli("export", "--checkpoint", short_run / "checkpoint.pt", "--format", "torchscript", "--out", out,
                     "--data-dir", tmp_path / "no-mnist")
    assert result.exit_code == 0, result.stderr
    assert {name: (out / name).read_bytes() for name in mine} == mine and "removed" not in result.stderr
    assert "golden" not in json.loads((out / "manifest.json").read_text())
    # golden outputs on the test set: the user's golden.npy is replaced only with --overwrite, and inputs.npy (which
    # they do not use) stays
    args = ("export", "--checkpoint", short_run / "checkpoint.pt", "--format", "torchscript", "--out", out,
            "--data-dir", mnist_dir)
    assert "holds golden.npy, which no manifest there lists" in assert_one_line_error(run_cli(*args), 2)
    assert (out / "golden.npy").read_bytes() == mine["golden.npy"]
    result = run_cli(*args, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert (out / "inputs.npy").read_bytes() == mine["inputs.npy"] and "removed" not in result.stderr
    assert json.loads((out / "manifest.json").read_text())["golden"]["data"]["split"] == "test"


def test_a_file_no_manifest_lists_is_replaced_only_with_overwrite(tmp_path, short_run, mnist_dir, monkeypatch):
    """A model.onnx of the user's own, or left by an export whose manifest is gone, is named and kept, before
    anything is computed; --overwrite replaces it. What export never writes (a README, bench results) is in no
    export's way."""
    out = tmp_path / "exported"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"mine")
    (out / "README.md").write_text("notes")
    (out / "bench-cpu.json").write_text("{}")
    args = ("export", "--checkpoint", short_run / "checkpoint.pt", "--format", "onnx,torchscript", "--out", out,
            "--data-dir", mnist_dir)
    with monkeypatch.context() as m:
        m.setattr(toolkit.export, "_golden_outputs", lambda *a: pytest.fail("golden outputs computed first"))
        line = assert_one_line_error(run_cli(*args), 2)
    assert line == (f"error: {out}/ holds model.onnx, which no manifest there lists (your own, or left by an export "
                    "whose manifest is gone); move it away, export into another folder with --out, or replace "
                    "it with --overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "bench-cpu.json", "model.onnx"]
    assert (out / "model.onnx").read_bytes() == b"mine"

    result = run_cli(*args, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert {a.file for a in read_manifest(out)} == {"model.onnx", "model.ts.pt"} and "removed" not in result.stderr
    assert (out / "model.onnx").read_bytes() != b"mine"
    assert (out / "README.md").read_text() == "notes" and (out / "bench-cpu.json").read_text() == "{}"
    # listed now: exported again without --overwrite, beside the README and the results
    assert run_cli(*args).exit_code == 0


def test_one_export_reads_the_earlier_manifest_once_before_the_work_and_once_under_the_lock(tmp_path, short_run,
                                                                                             mnist_dir, monkeypatch):
    """What an export decides from the manifest already in its folder (another export there, files no manifest lists,
    what it keeps, the golden outputs) comes from one read before the work and one under the folder's lock, where
    another export may have landed in between."""
    out = tmp_path / "exported"
    args = ("export", "--checkpoint", short_run / "checkpoint.pt", "--out", out)
    assert run_cli(*args, "--format", "torchscript", "--data-dir", mnist_dir).exit_code == 0
    reads, read = [], toolkit.artifacts._manifest_bytes
    with monkeypatch.context() as m:
        m.setattr(toolkit.artifacts, "_manifest_bytes", lambda folder: reads.append(folder) or read(folder))
        # no test set here: the golden outputs the manifest lists are kept, judged on the same read
        result = run_cli(*args, "--format", "onnx", "--data-dir", tmp_path / "no-mnist")
    assert result.exit_code == 0 and "kept the golden outputs" in result.stderr, result.stderr
    assert len(reads) == 2 and all(os.path.samefile(folder, out) for folder in reads)
    assert {a.file for a in read_manifest(out)} == {"model.onnx", "model.ts.pt"}  # the TorchScript file kept


def test_a_refused_export_names_both_checkpoints_and_how_the_default_was_chosen(tmp_path, exported_copy, trained,
                                                                             monkeypatch):
    ckpt = load_checkpoint(trained / "checkpoint.pt")  # a newer run beside the one exported/ came from
    ckpt["state_dict"] = {k: v + 0.001 for k, v in ckpt["state_dict"].items()}
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    save_checkpoint(tmp_path / "runs" / "mine" / "checkpoint.pt",
                    {k: v for k, v in ckpt.items() if k not in ("format", "format_version")})
    monkeypatch.chdir(tmp_path)  # exported_copy is ./exported, its manifest names ../runs/convnet/checkpoint.pt
    (tmp_path / "runs" / "convnet").mkdir()
    line = assert_one_line_error(run_cli("export"), 2)
    assert line.startswith("error: exported/ holds an export of runs/convnet/checkpoint.pt (model.app.onnx, ")
    assert ("the checkpoint to export is runs/mine/checkpoint.pt, the newest run under runs/ (no --checkpoint "
            "given); name the one you mean with --checkpoint, export into another folder with --out, or replace "
            "that export with --overwrite") in line
    named = assert_one_line_error(run_cli("export", "--checkpoint", "runs/mine/checkpoint.pt"), 2)
    assert "(model.app.onnx, " in named and "), not of runs/mine/checkpoint.pt; export into another folder" in named
    # into a folder of its own, the summary says which checkpoint was taken, and why
    done = run_cli("export", "--format", "torchscript", "--out", "exported/mine", "--data-dir", tmp_path / "none")
    assert done.exit_code == 0, done.stderr
    assert "exporting runs/mine/checkpoint.pt, the newest run under runs/" in done.stderr
    assert "artifacts from runs/mine/checkpoint.pt (the newest run)" in done.stdout


def test_torchscript_exports_of_one_checkpoint_are_byte_identical(tmp_path, trained, python):
    # each in a process of its own, as a user runs them (TorchScript numbers the classes it compiles per process);
    # with no test set there, no golden outputs are computed
    for out in ("a", "b"):
        done = run_process(python, "-m", "toolkit", "export", "--checkpoint", trained / "checkpoint.pt", "--format",
                           "torchscript", "--out", tmp_path / out, "--data-dir", tmp_path / "none", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert file_digest(tmp_path / "a" / "model.ts.pt") == file_digest(tmp_path / "b" / "model.ts.pt")


def test_triton_repository_follows_tritons_own_schema(exported_copy, trained):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    result = run_cli("export", "--checkpoint", trained / "checkpoint.pt", "--format", "triton", "--out",
                     exported_copy, "--triton-max-batch-size", "512")
    assert result.exit_code == 0, result.stderr
    repo = exported_copy / "triton"
    assert sorted(p.name for p in repo.iterdir()) == ["mnist_convnet", "mnist_convnet_app", "mnist_convnet_torchscript"]
    configs = {}
    for model in repo.iterdir():
        configs[model.name] = text_format.Parse((model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
        assert configs[model.name].name == model.name and configs[model.name].max_batch_size == 512
        assert configs[model.name].dynamic_batching.preferred_batch_size == [64, 256]
    F, U8, I64 = (model_config_pb2.DataType.Value(t) for t in ("TYPE_FP32", "TYPE_UINT8", "TYPE_INT64"))
    # each config matches what its ONNX file declares, minus the batch dimension
    for name, file in (("mnist_convnet", "model.onnx"), ("mnist_convnet_app", "model.app.onnx")):
        config, graph = configs[name], onnx.load(str(repo / name / "1" / "model.onnx")).graph
        assert config.platform == "onnxruntime_onnx"
        assert file_digest(repo / name / "1" / "model.onnx") == file_digest(exported_copy / file)
        for declared, values in ((config.input, graph.input), (config.output, graph.output)):
            assert [t.name for t in declared] == [v.name for v in values]
            for t, v in zip(declared, values):
                dims = [d.dim_value for d in v.type.tensor_type.shape.dim][1:]
                assert list(t.dims) == (dims or [1]) and (not dims) == t.HasField("reshape")
                elem = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
                assert t.data_type == {"float32": F, "uint8": U8, "int64": I64}[elem]
    ts = configs["mnist_convnet_torchscript"]
    assert ts.platform == "pytorch_libtorch" and (repo / "mnist_convnet_torchscript" / "1" / "model.pt").is_file()
    assert [t.name for t in ts.input] == ["image__0"] and list(ts.input[0].dims) == [1, 28, 28]
    assert [t.name for t in ts.output] == ["log_probs__0"] and ts.output[0].data_type == F
    manifest = json.loads((exported_copy / "manifest.json").read_text())
    assert {m["name"] for m in manifest["triton"]["models"]} == set(configs)
    assert not [p.name for p in exported_copy.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("text", "ckpt.pt is not a PyTorch checkpoint (a torch.save file)"),  # not "a pickle a weights-only load refuses"
    ("onnx", "ckpt.pt is not a PyTorch checkpoint (a torch.save file)"),
    ("empty", "ckpt.pt is empty, not a PyTorch checkpoint"),
    ("garbage", "not a readable checkpoint"),  # the start of a torch.save zip, then noise
    ("foreign", "not a toolkit checkpoint"),
    ("mismatch", "do not fit model 'mlp'"),
])
def test_bad_checkpoints_are_one_line_errors_and_write_nothing(tmp_path, trained, case, message):
    path = tmp_path / "ckpt.pt"
    if case == "text":
        path.write_text("# toolkit\n\nTrain the LeNet-style MNIST ConvNet\n")
    elif case == "onnx":  # how every .onnx begins: ir_version, then the producer's name
        path.write_bytes(b"\x08\x09\x12\x07pytorch\x1a\x052.9.0" + os.urandom(256))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "garbage":
        path.write_bytes(b"PK\x03\x04" + os.urandom(4096))
    elif case == "foreign":
        torch.save({"weights": torch.zeros(3)}, path)
    elif case == "mismatch":  # a checkpoint that claims to be another model
        ckpt = load_checkpoint(trained / "checkpoint.pt")
        ckpt["model"] = {"name": "mlp", "args": {}, "parameters": 0}
        torch.save(ckpt, path)
    out = tmp_path / "out"
    result = run_cli("export", "--checkpoint", path, "--out", out)
    assert message in assert_one_line_error(result, 2)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--format", "coreml"], "unknown format"),
    (["--precision", "int4"], "unknown precision"),
    (["--format", "torchscript", "--precision", "int8"], "supports precision fp32 only"),
    (["--opset", "7"], "opset 7 is out of range"),
    (["--quant-format", "dynamic"], "unknown quantization format"),
])
def test_bad_export_options_are_one_line_errors(tmp_path, trained, args, message):
    out = tmp_path / "out"
    result = run_cli("export", "--checkpoint", trained / "checkpoint.pt", "--out", out, *args)
    assert message in assert_one_line_error(result, 2)
    assert not out.exists() or not any(out.iterdir())


def test_unwritable_export_folder(tmp_path, trained):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("export", "--checkpoint", trained / "checkpoint.pt", "--out", blocker / "out")
    assert "cannot write" in assert_one_line_error(result, 2)


def _poisoned(state_dict, name, value):
    """A copy of `state_dict` with one element of tensor `name` set to `value` (NaN or infinity)."""
    state_dict = {k: v.clone() for k, v in state_dict.items()}
    state_dict[name].view(-1)[7] = value
    return state_dict


def _tampered_checkpoint(source, path, mutate):
    ckpt = torch.load(source, weights_only=True)
    mutate(ckpt)
    torch.save(ckpt, path)


@pytest.mark.parametrize("case, message", [
    ("state-dict-nan", "weight conv2.weight holds NaN or infinite values"),
    ("nested-state-dict-inf", "weight fc_layer2.bias holds NaN or infinite values"),
    ("checkpoint-nan", "weight conv1.weight holds NaN or infinite values"),
    ("raw-weights-nan", "weight fc_layer1.weight holds NaN or infinite values"),
    ("accuracy-150", "records a test accuracy of 150.0, not a percentage from 0 to 100"),
    ("accuracy-nan", "records a test accuracy of nan, not a percentage"),
    ("accuracy-negative", "records a test accuracy of -1.0, not a percentage"),
    ("accuracy-text", "records a test accuracy of 99, not a percentage"),
    ("metrics-not-a-mapping", "has metrics that are not a mapping"),
])
def test_non_finite_weights_and_impossible_accuracies_are_refused_before_writing(tmp_path, short_run, mnist_dir,
                                                                                  case, message):
    from toolkit.model import build_model

    path, source = tmp_path / "ckpt.pt", short_run / "checkpoint.pt"
    if case == "state-dict-nan":  # torch.save(model.state_dict(), ...), as people save weights
        torch.save(_poisoned(build_model("convnet").state_dict(), "conv2.weight", float("nan")), path)
    elif case == "nested-state-dict-inf":
        torch.save({"model_state_dict": _poisoned(build_model("convnet").state_dict(), "fc_layer2.bias",
                                                  float("inf")), "epoch": 3}, path)
    elif case == "checkpoint-nan":
        _tampered_checkpoint(source, path, lambda c: c.update(
            state_dict=_poisoned(c["state_dict"], "conv1.weight", float("nan"))))
    elif case == "raw-weights-nan":  # a run with averaging keeps its raw weights apart
        _tampered_checkpoint(source, path, lambda c: c.update(
            training_state_dict=_poisoned(c["state_dict"], "fc_layer1.weight", float("nan"))))
    elif case == "metrics-not-a-mapping":
        _tampered_checkpoint(source, path, lambda c: c.update(metrics=[99.0]))
    else:
        value = {"accuracy-150": 150.0, "accuracy-nan": float("nan"), "accuracy-negative": -1.0,
                 "accuracy-text": "99"}[case]
        _tampered_checkpoint(source, path, lambda c: c["metrics"].update(test_accuracy=value))
    out = tmp_path / "out"
    result = run_cli("export", "--checkpoint", path, "--out", out, "--data-dir", mnist_dir)
    assert message in assert_one_line_error(result, 2)
    assert not out.exists() or not any(out.iterdir())


def test_a_checkpoint_without_metrics_still_exports(tmp_path, short_run, mnist_dir):
    path = tmp_path / "ckpt.pt"
    _tampered_checkpoint(short_run / "checkpoint.pt", path, lambda c: c.pop("metrics"))
    result = run_cli("export", "--checkpoint", path, "--out", tmp_path / "out", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    accuracy = read_manifest(tmp_path / "out")[0].test_accuracy
    assert 0 < accuracy <= 100  # measured on the test set, as for a plain state_dict


CRAFTED_MODEL_FIELDS = {  # what only the toolkit sets in memory, or only a model from the user's code records
    "class": (lambda c: c.update(_class=collections.OrderedDict) or c["model"].update(args={"a": 1}),
              "holds the key '_class', which no checkpoint file has"),
    "class-name": (lambda c: c.update(_class="os.system"), "holds the key '_class'"),
    "output-kind": (lambda c: c.update(_output="logits"), "holds the key '_output'"),
    "output": (lambda c: c["model"].update(output="probabilities"),
               "records output 'probabilities' for the built-in model convnet"),
    "code": (lambda c: c["model"].update(code="my_models.py:Net"), "records code 'my_models.py:Net'"),
    "input-shape": (lambda c: c["model"].update(input_shape=[3, 8, 8]), "records input_shape"),
    "name": (lambda c: c["model"].update(name="resnet"), "names the model 'resnet', not a built-in one"),
    "args": (lambda c: c["model"].update(args={"hidden_sizes": [8]}),
             "invalid arguments for model convnet (model convnet takes no argument hidden_sizes)"),
    "args-list": (lambda c: c["model"].update(args=[8]), "invalid arguments for model convnet (they are not a"),
}


def test_a_checkpoint_file_names_no_class_and_no_other_model_than_its_own(tmp_path, short_run, mnist_dir):
    """The class a model from code is built with is set in memory, never read from a file; and a toolkit
    checkpoint's model is the built-in one it names, so nothing false about it reaches a manifest. export, verify
    and bench each refuse such a file in one line, having written nothing."""
    folder = tmp_path / "exported"
    result = run_cli("export", "--checkpoint", short_run / "checkpoint.pt", "--format", "onnx", "--out", folder,
                     "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    before = {p.name: file_digest(p) for p in folder.iterdir()}
    for case, (mutate, message) in CRAFTED_MODEL_FIELDS.items():
        path, out = tmp_path / f"{case}.pt", tmp_path / f"out-{case}"
        _tampered_checkpoint(short_run / "checkpoint.pt", path, mutate)
        for argv in (["export", "--checkpoint", path, "--out", out],
                     ["verify", "--artifacts", folder, "--checkpoint", path, "--batch1-images", "2"],
                     ["bench", "--artifacts", folder, "--checkpoint", path, "--runtime", "pytorch", "--batch-sizes",
                      "1", "--seconds", "0.02", "--rounds", "1", "--no-matmul-peak"]):
            result = run_cli(*argv, "--data-dir", mnist_dir)
            assert message in assert_one_line_error(result, 2), (case, argv[0])
        assert not out.exists() or not any(out.iterdir())
    assert {p.name: file_digest(p) for p in folder.iterdir()} == before
    # the same fields as `toolkit train` writes them pass
    _tampered_checkpoint(short_run / "checkpoint.pt", tmp_path / "plain.pt", lambda c: c["model"].update(
        output="log_probs", args={"num_classes": 10}))
    result = run_cli("export", "--checkpoint", tmp_path / "plain.pt", "--format", "onnx", "--out", tmp_path / "plain",
                     "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.stderr
    assert read_manifest_field(tmp_path / "plain", "model")["output"] == "log_probs"
