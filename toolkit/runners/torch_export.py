"""torch.export programs (pt2) and AOTInductor packages (aoti): loaders from hash-checked bytes, run in torch.

Both files are PT2 archives (zips). Before anything is loaded, the archive's own metadata (the extra file
export wrote) must name the format, precision and source checkpoint the manifest lists. Loading either can
run code: `torch.export.load` unpickles parts of the archive and an AOTInductor package is a shared library.

AOTInductor's loader reads a path, not bytes: the verified bytes are written to a private file (0600, in a
fresh 0700 folder), loaded from there and deleted, so what runs is exactly what was hashed. The loader unpacks
the package into that folder too, and the folder goes with the loaded model.
torch is imported inside the functions, so importing this module stays cheap.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit import devices
from toolkit.artifacts import META_KEY, Artifact, read_verified
from toolkit.errors import ArtifactError, ProviderUnavailable
from toolkit.runners.base import RunnerOptions, one_line
from toolkit.runners.torch import TorchRunner, check_device, open_scripted

PT2, AOTI = "pt2", "aoti"
# The model names inside an AOTInductor package, per device (exporters/aoti.py compiles them).
AOTI_MODELS = {"cpu": "model", "cuda": "cuda"}
MAX_METADATA_BYTES = 1 << 16


def _names(data: bytes) -> list[str]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


def archive_kind(data: bytes) -> str | None:
    """PT2 for a torch.export program, AOTI for an AOTInductor package, None for anything else (a TorchScript
    zip, an ONNX file). Read from the zip's directory alone."""
    names = _names(data)
    if not any(n.endswith("/archive_format") for n in names):
        return None  # not a PT2 archive (TorchScript archives have no archive_format record)
    if any("/data/aotinductor/" in n for n in names):
        return AOTI
    return PT2 if any("/models/" in n and n.endswith(".json") for n in names) else None


def aoti_devices(data: bytes) -> list[str]:
    """The devices an AOTInductor package holds a compiled model for."""
    names = _names(data)
    return [d for d, model in AOTI_MODELS.items() if any(f"/data/aotinductor/{model}/" in n for n in names)]


def archive_metadata(data: bytes, label: str) -> dict[str, Any]:
    """The toolkit metadata a PT2 archive carries (its extra file), read without loading anything."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            entry = next((i for i in z.infolist() if i.filename.endswith(f"/extra/{META_KEY}")), None)
            raw = z.read(entry) if entry is not None and entry.file_size <= MAX_METADATA_BYTES else None
    except Exception as e:  # zipfile raises its own, zlib's, lzma's, NotImplementedError... for a damaged entry
        raise ArtifactError(f"{label} is not a readable PT2 archive ({one_line(e, 120)}); export again") from None
    if entry is None:
        raise ArtifactError(f"{label} carries no toolkit metadata ({META_KEY}); export again")
    if raw is None:
        raise ArtifactError(f"{label}: its {META_KEY} is larger than {MAX_METADATA_BYTES} bytes")
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, an integer too long to read, nesting too deep
        why = one_line(e, 120)
        raise ArtifactError(f"{label}: its {META_KEY} is not readable JSON ({why}); export again") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{label}: its {META_KEY} is not an object; export again")
    return meta


def check_metadata(data: bytes, artifact: Artifact) -> None:
    """ArtifactError unless the archive's own metadata names the manifest's format, precision and source."""
    meta = archive_metadata(data, artifact.file)
    expected = {"artifact_format": artifact.format, "precision": artifact.precision,
                "source_checkpoint_sha256": artifact.source_sha256}
    wrong = [k for k, v in expected.items() if meta.get(k) != v]
    if wrong:
        raise ArtifactError(f"{artifact.file}: its own metadata disagrees with the manifest on {', '.join(wrong)}; "
                            "export again")


@contextlib.contextmanager
def _torch_quiet() -> Iterator[None]:
    """torch logs warnings (and tracebacks) while it tries readers on a damaged archive: errors say it here."""
    log = logging.getLogger("torch")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def load_exported(data: bytes, device: str, label: str) -> Any:
    """The program's module on `device`, from bytes already read (and hash-checked). Loading unpickles parts of
    the archive: only load files you trust. ArtifactError when torch cannot load it."""
    import torch
    from torch.export.passes import move_to_device_pass

    check_device(device)
    try:
        with _torch_quiet():
            program = torch.export.load(io.BytesIO(data))
            if device != devices.CPU:
                program = move_to_device_pass(program, devices.torch_device(device))
            return program.module()
    except Exception as e:  # torch raises RuntimeError, KeyError, zipfile errors ... for damaged archives
        raise ArtifactError(f"{label} is not a loadable torch.export program ({one_line(e, 200)})") from None


def load_aoti(data: bytes, device: str, label: str) -> Any:
    """The package's compiled model for `device`, from bytes already read (and hash-checked). Loading runs the
    package's shared library: only load files you trust."""
    import torch

    check_device(device)
    if device not in aoti_devices(data):
        have = ", ".join(aoti_devices(data)) or "no device"
        raise ProviderUnavailable(f"{label} was compiled for {have}, not {device}; export it again on a machine "
                                  f"with {device.upper()} to compile it for {device}")
    from torch.export.pt2_archive._package import AOTICompiledModel

    folder = tempfile.mkdtemp(prefix="toolkit-aoti-")  # 0700
    try:
        path = Path(folder) / "model.pt2"
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
        try:
            with _torch_quiet(), _temp_dir(folder):
                # the loader C++ programs use (examples/cpp), for this device's model alone: torch's
                # load_package would also try to load the other devices' models
                loader = torch._C._aoti.AOTIModelPackageLoader(str(path), AOTI_MODELS[device], False, 1, -1)
        except Exception as e:
            raise ArtifactError(f"{label} is not a loadable AOTInductor package ({one_line(e, 200)})") from None
        path.unlink()
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    model = AOTICompiledModel(loader)
    # The loader unpacks the package into a folder of its own, which only its C++ destructor removes, and an
    # interpreter leaves objects undestroyed at exit: unpacked inside `folder`, it goes with the model or at
    # exit (finalize runs at exit), whichever comes first.
    weakref.finalize(model, shutil.rmtree, folder, ignore_errors=True)
    return model


@contextlib.contextmanager
def _temp_dir(folder: str) -> Iterator[None]:
    """TMPDIR set to `folder` (where AOTInductor's loader makes its folder) for the block."""
    before = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = folder
    try:
        yield
    finally:
        if before is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = before


def open_exported(artifact: Artifact, options: RunnerOptions, data: bytes | None = None) -> TorchRunner:
    """`data`: the artifact's bytes, already read and checked against its manifest entry (None: read them)."""
    check_device(options.device)  # before reading: no GPU here is the first thing to say
    data = read_verified(artifact) if data is None else data
    check_metadata(data, artifact)
    return TorchRunner(load_exported(data, options.device, artifact.file), artifact.file, "torch-export", options)


def open_aoti(artifact: Artifact, options: RunnerOptions, data: bytes | None = None) -> TorchRunner:
    """`data`: as for `open_exported`."""
    check_device(options.device)
    data = read_verified(artifact) if data is None else data
    check_metadata(data, artifact)
    return TorchRunner(load_aoti(data, options.device, artifact.file), artifact.file, "aoti", options)


def open_listed(data: bytes, artifact: Artifact, label: str, options: RunnerOptions) -> TorchRunner:
    """A TorchScript, .pt2 or .aoti.pt2 file a manifest lists (`artifact`), opened by its path (`label`) as verify
    and bench open that artifact, from the bytes read and checked against that entry (`data`): fed the toolkit's
    normalization in its export's layout, as a toolkit .onnx is, not as options say."""
    kind = archive_kind(data) or "torchscript"
    if artifact.format != kind:
        raise ArtifactError(f"{label} is a {kind} archive, but the manifest beside it lists it as {artifact.format}; "
                            "export again")
    runner = {"torchscript": open_scripted, PT2: open_exported, AOTI: open_aoti}[kind](artifact, options, data)
    runner.label = label
    return runner
