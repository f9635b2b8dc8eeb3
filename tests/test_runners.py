"""The runner layer on real exported files: every runtime opens them from hash-checked bytes and agrees."""

import json
import os
import sys

import numpy as np
import pytest

from tests.conftest import NO_BF16, REPO, fake_cpu_flags, run_process
from toolkit import devices, formats, runners, sysinfo
from toolkit.artifacts import read_manifest
from toolkit.data import load_split
from toolkit.errors import ArtifactError, ConfigError, ProviderUnavailable
from toolkit.runners import openvino
from toolkit.source_checkpoint import find_checkpoint


@pytest.fixture(scope="module")
def manifest(exported):
    return {a.file: a for a in read_manifest(exported)}


@pytest.fixture(scope="module")
def pixels(mnist_dir):
    return load_split(mnist_dir, "test")[0][:64]


@pytest.fixture(scope="module")
def reference(manifest, pixels):
    """ONNX Runtime's answers, the runtime the toolkit's other checks already compare with PyTorch."""
    return {name: runners.open_runner("onnxruntime", manifest[name]).run(pixels)
            for name in ("model.onnx", "model.app.onnx")}


@pytest.mark.parametrize("runtime", ["openvino", "opencv"])
@pytest.mark.parametrize("name", ["model.onnx", "model.app.onnx"])
def test_runtimes_agree_with_onnxruntime_at_every_batch_size(runtime, name, manifest, pixels, reference):
    runner = runners.open_runner(runtime, manifest[name])
    for n in (1, 5, 64):  # batch 1 and above: the app graph must import everywhere at any batch
        out = runner.run(pixels[:n])
        assert set(out) == set(reference[name])
        for key, value in out.items():
            np.testing.assert_allclose(value.astype(np.float64), reference[name][key][:n], atol=1e-4, rtol=0)


@pytest.mark.parametrize("native, named, openvino_fp32_modes", [
    (False, (), {"f32"}),  # emulated bf16: left out, with a note
    (True, (), {"f32", "bf16"}),  # native: run by default
    (False, ("bf16",), {"bf16"}),  # named: exactly that, no note
])
def test_modes_apply_to_openvinos_fp32_files_only(manifest, monkeypatch, native, named, openvino_fp32_modes):
    fake_cpu_flags(monkeypatch, NO_BF16 | ({"avx512_bf16"} if native else set()))
    files = [manifest[name] for name in ("model.onnx", "model.int8.onnx")]
    todo, _ = runners.runs(files, ["onnxruntime", "openvino"], "cpu")
    kept, notes = runners.choose_modes(todo, named)
    modes = {(r.runtime, r.precision): set() for r in kept}
    for r in kept:
        modes[r.runtime, r.precision].add(r.mode)
    assert modes == {("onnxruntime", "fp32"): {"f32"}, ("onnxruntime", "int8"): {"f32"},
                     ("openvino", "fp32"): openvino_fp32_modes, ("openvino", "int8"): {"f32"}}
    assert notes == ({"openvino bf16": runners.NO_NATIVE_MODE} if not native and not named else {})


def test_torch_runners_agree(manifest, pixels, reference, exported):
    scripted = runners.open_runner("torchscript", manifest["model.ts.pt"]).run(pixels)
    checkpoint = find_checkpoint(exported, [manifest["model.onnx"]])
    eager = runners.open_runner("pytorch", str(checkpoint)).run(pixels)
    np.testing.assert_allclose(scripted["log_probs"], reference["model.onnx"]["log_probs"], atol=1e-4)
    np.testing.assert_allclose(eager["log_probs"], reference["model.onnx"]["log_probs"], atol=1e-4)


def openvino_capabilities() -> list[str]:
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def test_openvino_bf16_and_int8_modes(manifest, pixels, reference):
    bf16 = runners.open_runner("openvino", manifest["model.onnx"], runners.RunnerOptions(mode="bf16"))
    diff = np.abs(bf16.run(pixels)["log_probs"] - reference["model.onnx"]["log_probs"]).max()
    computed = bf16.settings()["inference_precision"]
    assert computed == bf16.computed_mode
    if computed == "bf16":
        assert 1e-4 < diff < 1.0  # really bf16, still close
    else:  # OpenVINO computes f32 where the CPU has neither bf16 nor AVX-512, and then says it has no BF16
        assert computed == "f32" and diff <= 1e-4 and "BF16" not in openvino_capabilities()
    int8 = runners.open_runner("openvino", manifest["model.int8.onnx"]).run(pixels)["log_probs"]
    assert (int8.argmax(1) == reference["model.onnx"]["log_probs"].argmax(1)).mean() >= 0.95
    assert formats.judged_precision("fp32", "bf16") == "bf16" and formats.judged_precision("int8", "bf16") == "int8"


def test_throughput_hint_keeps_several_requests_in_flight(manifest, pixels):
    runner = runners.open_runner("openvino", manifest["model.onnx"], runners.RunnerOptions(hint="throughput"))
    timed = runner.timed([pixels[:8], pixels[8:16]])
    optimal = openvino.optimal_requests(runner.compiled)
    # each call starts OpenVINO's optimal number of requests; twice as many are queued, so none waits idle
    assert timed.batches_per_call == optimal and runner.in_flight == runner.settings()["infer_requests"] == 2 * optimal
    timed.call(0)  # returns with its requests queued or running
    timed.drain()


def test_a_tampered_file_is_never_loaded(exported_copy):
    artifact = next(a for a in read_manifest(exported_copy) if a.file == "model.onnx")
    (exported_copy / "model.onnx").write_bytes(b"\x08\x01" + (exported_copy / "model.onnx").read_bytes()[2:])
    for runtime in ("onnxruntime", "openvino", "opencv"):
        with pytest.raises(ArtifactError, match="changed since export"):
            runners.open_runner(runtime, artifact)


def test_what_a_runtime_cannot_open_or_run_on(manifest):
    with pytest.raises(ArtifactError, match="does not open onnx/int8"):
        runners.open_runner("opencv", manifest["model.int8.onnx"])
    with pytest.raises(ProviderUnavailable, match="runs on cpu"):
        runners.open_runner("openvino", manifest["model.onnx"], runners.RunnerOptions(device="cuda"))
    with pytest.raises(ConfigError, match="unknown runtime"):
        runners.select_runtimes(["tensorflow"])
    assert runners.select_runtimes([]).runtimes == [r for r in runners.RUNTIMES if runners.RUNTIMES[r].installed()]


def test_a_module_an_import_hook_refuses_is_not_installed(monkeypatch):
    """A process that blocks torch with an import hook (as the torch-free tests do) sees what an install without
    torch sees: the torch runtimes skipped, no CUDA through torch, never the hook's ImportError."""
    class BlockTorch:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "torch":
                raise ImportError(f"{name} is blocked")

    monkeypatch.setattr(sys, "meta_path", [BlockTorch(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # else find_spec answers from the module already imported
    assert not sysinfo.installed("torch") and sysinfo.installed("numpy")
    selection = runners.select_runtimes([])
    torch_runtimes = {name for name, r in runners.RUNTIMES.items() if r.module == "torch"}
    assert torch_runtimes == set(selection.skipped) and not torch_runtimes & set(selection.runtimes)
    assert devices.torch_unavailable("cuda") == "torch is not installed"


def test_the_eager_baseline_is_missed_only_where_it_would_have_run():
    no_torch = runners.Selection([], {"pytorch": "not installed"})
    assert runners.would_run(no_torch, [], ["cpu"], baseline=True) == {"pytorch": []}  # it runs no artifact
    assert runners.would_run(no_torch, [], ["tensorrt", "cuda"], None, ["fp32"], baseline=True) == {"pytorch": []}
    assert runners.would_run(no_torch, [], ["cpu"]) == {}  # not asked about
    assert runners.would_run(no_torch, [], ["cpu"], ["onnx"], baseline=True) == {}  # its format is not selected
    assert runners.would_run(no_torch, [], ["cpu"], None, ["int8"], baseline=True) == {}  # nor its precision
    assert runners.would_run(no_torch, [], ["tensorrt"], baseline=True) == {}  # it does not run there
    assert runners.would_run(runners.Selection(["pytorch"]), [], ["cpu"], baseline=True) == {}  # installed


def test_an_allocation_failure_is_a_one_line_config_error(manifest):
    runner = runners.open_runner("onnxruntime", manifest["model.onnx"])

    def fail(native):
        raise MemoryError

    runner._infer = fail
    with pytest.raises(ConfigError, match="not enough memory"):
        runner.run(np.zeros((2, 28, 28), np.uint8))


def test_the_app_graph_uses_ops_every_engine_imports(manifest, pixels, reference):
    import cv2
    import onnx

    from toolkit.artifacts import read_verified

    data = read_verified(manifest["model.app.onnx"])
    ops = [node.op_type for node in onnx.load_from_string(data).graph.node]
    assert "Unsqueeze" not in ops and ops[:2] == ["Cast", "Reshape"]  # the channel axis comes from a Reshape
    if hasattr(cv2.dnn, "ENGINE_CLASSIC"):  # OpenCV 5 keeps the 4.x importer as its classic engine
        net = cv2.dnn.readNetFromONNX(np.frombuffer(data, np.uint8), cv2.dnn.ENGINE_CLASSIC)
        net.setInput(pixels[:16])
        probabilities, _ = net.forward(["probabilities", "digit"])
        np.testing.assert_allclose(probabilities, reference["model.app.onnx"]["probabilities"][:16], atol=1e-5)


PINNED_SESSION = """
import glob, json, os, sys
os.sched_setaffinity(0, {int(sys.argv[2])})  # before numpy, whose own threads take the mask they start with
import numpy as np
from toolkit.runners.onnxruntime import create_session
session = create_session(sys.argv[1])
session.run(None, {session.get_inputs()[0].name: np.zeros((8, 1, 28, 28), np.float32)})
allowed = set()
for status in glob.glob(f"/proc/{os.getpid()}/task/*/status"):
    line = next(l for l in open(status) if l.startswith("Cpus_allowed_list:"))
    allowed.add(line.split(":", 1)[1].strip())
print(json.dumps(sorted(allowed)))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a CPU affinity mask and two CPUs")
def test_an_onnx_runtime_session_stays_on_the_cpus_the_process_may_use(exported, python):
    """ONNX Runtime pins its default thread pool to cores itself; where the process is confined to fewer CPUs
    (taskset, a pinned container), a session must stay inside that mask."""
    cpu = min(os.sched_getaffinity(0))  # ONNX Runtime places its own pool threads on the cores after the first
    done = run_process(python, "-c", PINNED_SESSION, exported / "model.onnx", str(cpu), cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [str(cpu)]


ONNX_RUNTIME_STORE = ("Microsoft", "DeveloperTools", ".onnxruntime")  # where its builds with telemetry keep it
# ONNX Runtime records nothing where one of these says it runs in CI (the names are in its library): the tests
# below run without them, as in a user's shell, so that CI checks what a user gets
CI_VARIABLES = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS", "JENKINS_URL",
                "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION", "APPVEYOR", "BITBUCKET_BUILD_NUMBER")


def _users_shell() -> dict[str, str]:
    """This environment without ORT_DISABLE_TELEMETRY (importing toolkit set it here) or a CI's variables."""
    return {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", *CI_VARIABLES)}


def _ort_store(root) -> bool:
    return root.joinpath(*ONNX_RUNTIME_STORE).exists()


def test_onnx_runtimes_telemetry_is_off_in_the_toolkits_processes(exported, python, tmp_path, png):
    """ONNX Runtime's official builds record each session (the model's file name, the Python executable's path, a
    device id) under the user's cache folder for upload: a plain ONNX Runtime process does, the CLI does not."""
    model = exported / "model.onnx"
    env = _users_shell()
    plain = run_process(python, "-c", f"import onnxruntime as ort; ort.InferenceSession({str(model)!r})",
                        env={**env, "XDG_CACHE_HOME": str(tmp_path / "plain")})
    assert plain.returncode == 0, plain.stderr
    if not _ort_store(tmp_path / "plain"):
        pytest.skip("this ONNX Runtime build records no telemetry")
    cli = run_process(python, "-m", "toolkit", "predict", png, "--model", model, cwd=REPO,
                      env={**env, "XDG_CACHE_HOME": str(tmp_path / "cli")})
    assert cli.returncode == 0, cli.stderr
    assert not _ort_store(tmp_path / "cli")


@pytest.mark.parametrize("given, seen", [(None, "1"), ("0", "0"), ("1", "1")])
def test_a_users_own_telemetry_setting_is_kept(python, given, seen):
    env = _users_shell()
    if given is not None:
        env["ORT_DISABLE_TELEMETRY"] = given
    out = run_process(python, "-c", "import os, toolkit; print(os.environ['ORT_DISABLE_TELEMETRY'])", env=env,
                      cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == seen, out.stderr


def test_openvino_and_nncf_send_nothing_from_the_toolkits_processes(exported, python, tmp_path, png):
    """OpenVINO sends a Google Analytics event when it is imported, and NNCF more while quantizing, through
    `openvino_telemetry`; in a toolkit process both get their stubs, and nothing is written to the home folder."""
    env = {**_users_shell(), "HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    probe = ("import toolkit, openvino.tools.ovc.telemetry_utils as ov, nncf.telemetry.wrapper as nncf; "
             "print(ov.tm.__name__, isinstance(nncf.telemetry, nncf.NNCFTelemetryStub))")
    out = run_process(python, "-c", probe, env=env, cwd=REPO)
    assert out.returncode == 0 and out.stdout.split() == ["openvino.tools.ovc.telemetry_stub", "True"], out.stderr
    cli = run_process(python, "-m", "toolkit", "predict", png, "--model", exported / "model.xml", cwd=REPO, env=env)
    assert cli.returncode == 0, cli.stderr
    assert not (tmp_path / "home" / "intel").exists()  # where OpenVINO's telemetry keeps its client id


@pytest.mark.parametrize("consent, hidden", [(None, True), ("0", True), ("1", False), ("fifo", True)])
def test_openvino_telemetry_runs_only_for_a_user_who_opted_in(python, tmp_path, consent, hidden):
    home = tmp_path / "home"
    (home / "intel").mkdir(parents=True)
    if consent == "fifo":
        os.mkfifo(home / "intel" / "openvino_telemetry")  # must not block the import of toolkit
    elif consent is not None:
        (home / "intel" / "openvino_telemetry").write_text(f"{consent}\n")
    out = run_process(python, "-c", "import sys, toolkit; print('openvino_telemetry' in sys.modules)", cwd=REPO,
                      env={**_users_shell(), "HOME": str(home)}, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == str(hidden), out.stderr
