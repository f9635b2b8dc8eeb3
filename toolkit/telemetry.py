"""The dependencies' own telemetry, kept off in the toolkit's processes (docs/trust.md#the-network).

ONNX Runtime's official builds record every session (the model's file name, the Python executable's path, the
machine, a device id) and upload it, unless ORT_DISABLE_TELEMETRY is set when ONNX Runtime is imported. OpenVINO
(on import) and NNCF (while quantizing) send usage events to Google Analytics through the `openvino_telemetry`
package, and both fall back to stubs that send nothing where that package cannot be imported.

`keep_off()` runs when `toolkit` is imported, before either runtime is. It sets the variable unless the user set it
(`ORT_DISABLE_TELEMETRY=0` keeps ONNX Runtime's default), and hides `openvino_telemetry` from this process unless
the user opted in to OpenVINO's telemetry with `opt_in_out --opt_in`. Nothing outside the process changes.
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

OPENVINO_TELEMETRY = "openvino_telemetry"


def openvino_consent_file() -> Path:
    """Where `opt_in_out` records the user's answer ("1": opted in, "0": opted out)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", "")) / "Intel Corporation" / OPENVINO_TELEMETRY
    return Path.home() / "intel" / OPENVINO_TELEMETRY


def openvino_opted_in() -> bool:
    """Whether the user opted in to OpenVINO's telemetry: its consent file, a regular file, says "1"."""
    try:
        path = openvino_consent_file()
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO there would block the open below
            return False
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline(16).strip() == "1"
    except (OSError, RuntimeError):  # RuntimeError: Path.home() where no home folder can be found
        return False


def keep_off() -> None:
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if OPENVINO_TELEMETRY not in sys.modules and not openvino_opted_in():
        sys.modules[OPENVINO_TELEMETRY] = None  # `import openvino_telemetry` raises ImportError: the stubs run
