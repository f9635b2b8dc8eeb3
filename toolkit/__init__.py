"""toolkit: train the MNIST ConvNet (or bring your own), export it to ONNX and the other runtimes' formats, prove
each file computes what PyTorch does, and benchmark it."""

from toolkit import telemetry as _telemetry

_telemetry.keep_off()  # before anything imports ONNX Runtime or OpenVINO

__version__ = "0.1.0"
