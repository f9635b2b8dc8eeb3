"""toolkit: train the MNIST ConvNet (or bring your own), export it to ONNX and the other runtimes' formats, prove
each file computes what PyTorch does, and benchmark it."""

import os

# ONNX Runtime's official builds record every session (the model's file name, the Python executable's path, the
# machine, a device id kept under the user's cache folder) and upload it to Microsoft. The toolkit opens
# sessions on its users' files, so it turns that off unless the user has set the variable, which ONNX Runtime
# reads when it is imported (docs/trust.md#the-network).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
