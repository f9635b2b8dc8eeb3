"""toolkit: train the MNIST ConvNet, export it to TorchScript/ONNX, prove parity, and benchmark it."""

__version__ = "0.1.0"
