"""Native log lines: what C++ code writes to file descriptor 2 while a converter runs."""

import os
import sys

from toolkit import native_logs


def test_filtered_drops_info_and_warning_log_lines_and_keeps_the_rest(capfd):
    with native_logs.filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796554880.275008    5871 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"W1206 11:01:07.122000 5871 torch/utils/_pytree.py:630] <enum 'K'> is an Enum subclass\n")
        print("exporting: tflite fp32 1/7 (14%), 0:02 elapsed, ETA 0:12", file=sys.stderr)  # progress: late, kept
        os.write(2, b"E0000 00:00:1796554880.3  5871 converter.cc:9] a real error\n")
    assert capfd.readouterr().err.splitlines() == ["exporting: tflite fp32 1/7 (14%), 0:02 elapsed, ETA 0:12",
                                                   "E0000 00:00:1796554880.3  5871 converter.cc:9] a real error"]
    os.write(2, b"I0000 00:00:1.0  1 after.cc:1] after the block\n")  # stderr is itself again
    assert "after the block" in capfd.readouterr().err


def test_silenced_drops_everything(capfd):
    with native_logs.silenced():
        os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
        print("said in Python", file=sys.stderr)
    assert capfd.readouterr().err == ""
