"""Facts about an .onnx read straight from its protobuf wire format, for the torch-free side, where the `onnx`
package (and with it the generated ModelProto classes) is not installed.

Only the messages on a path to what is asked for are walked (field numbers from onnx/onnx.proto); every other
field, the weights' raw bytes included, is stepped over by its length without being copied.
"""

from __future__ import annotations

from collections.abc import Iterator

# message -> {field number: the message that field holds}, for the fields that lead to a TensorProto
NESTED = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse_tensor"},
    "function": {7: "node"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse_tensor", 23: "sparse_tensor"},
    "sparse_tensor": {1: "tensor", 2: "tensor"},
    "tensor": {},
}
DATA_LOCATION = 14  # TensorProto.data_location
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL: the tensor's bytes are in another file
METADATA_PROPS, KEY, VALUE = 14, 1, 2  # ModelProto.metadata_props, StringStringEntryProto's key and value
MAX_DEPTH = 100  # protobuf's own nesting limit, past which ONNX Runtime refuses a file anyway


def has_external_data(model: bytes) -> bool:
    """Whether a tensor of the ONNX model `model` (an initializer, a constant, one in a subgraph or a function)
    keeps its data in another file. False for bytes that are not a well-formed protobuf: loading them fails
    with its own reason."""
    try:
        return _external(memoryview(model), "model", 0)
    except ValueError:
        return False


def metadata(model: bytes) -> dict[str, str]:
    """The ONNX model's metadata_props as a dict (a later entry of a key wins, as in ONNX Runtime); empty for
    bytes that are not a well-formed protobuf or whose entries are not UTF-8 text."""
    props: dict[str, str] = {}
    try:
        for number, entry in _fields(memoryview(model)):
            if number == METADATA_PROPS and isinstance(entry, memoryview):
                fields = {n: v for n, v in _fields(entry) if isinstance(v, memoryview)}
                props[bytes(fields.get(KEY, b"")).decode()] = bytes(fields.get(VALUE, b"")).decode()
    except (ValueError, UnicodeDecodeError):
        return {}
    return props


def _external(data: memoryview, message: str, depth: int) -> bool:
    if depth > MAX_DEPTH:
        raise ValueError("messages nested too deeply")
    nested = NESTED[message]
    for number, value in _fields(data):
        if message == "tensor" and number == DATA_LOCATION and value == EXTERNAL:
            return True
        if number in nested and isinstance(value, memoryview) and _external(value, nested[number], depth + 1):
            return True
    return False


def _fields(data: memoryview) -> Iterator[tuple[int, int | memoryview | None]]:
    """(field number, value) of each field of one message: an int for a varint, a view of the bytes of a
    length-delimited field, None for a fixed-width one; ValueError where the bytes are not a message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | memoryview | None = None
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:  # 3 and 4 are groups, which ONNX never uses; 6 and 7 do not exist
            raise ValueError(f"wire type {wire}")
        if number == 0 or pos > len(data):
            raise ValueError("not a protobuf message")
        yield number, value


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    value = shift = 0
    while shift < 64:
        if pos >= len(data):
            break
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos
    raise ValueError("truncated or overlong varint")
