"""The HTTP guard's checks, request by request (no server): what Triton 2.51's HTTP front end would
crash on is refused with a reason, and well-formed requests pass untouched."""

from __future__ import annotations

import json

import pytest

from mtasr.http_guard import MAX_REQUEST_BYTES, infer_request_problem


def json_request(shape: list, data: object, datatype: str = "FP32") -> bytes:
    return json.dumps({"inputs": [{"name": "AUDIO", "shape": shape, "datatype": datatype, "data": data}]}).encode()


def binary_request(shape: list, payload: bytes, declared: int | None = None) -> tuple[bytes, int]:
    size = len(payload) if declared is None else declared
    tensor = {"name": "AUDIO", "shape": shape, "datatype": "FP32", "parameters": {"binary_data_size": size}}
    header = json.dumps({"inputs": [tensor], "parameters": {"sequence_id": 3, "sequence_start": True}}).encode()
    return header + payload, len(header)


def test_well_formed_json_and_binary_requests_pass():
    assert infer_request_problem(json_request([1, 3], [[0.1, 0.2, 0.3]]), None) is None
    assert infer_request_problem(json_request([1, 3], [0.1, 0.2, 0.3]), None) is None  # flat data is allowed
    body, header = binary_request([1, 4], bytes(16))
    assert infer_request_problem(body, header) is None
    end, header = binary_request([1, 0], b"")  # an END with no samples
    assert infer_request_problem(end, header) is None


@pytest.mark.parametrize("shape", [[1, 2**40], [1, 2**62], [2**32, 2**32]])
def test_a_shape_larger_than_a_request_can_carry_is_refused(shape):
    problem = infer_request_problem(json_request(shape, [0.0]), None)
    assert problem and f"larger than the {MAX_REQUEST_BYTES} bytes" in problem


def test_binary_sizes_that_wrap_around_or_disagree_are_refused():
    # 2^62 FP32 elements are 2^64 bytes: 0 in Triton's 64-bit arithmetic, which then lets 0 bytes through.
    body, header = binary_request([1, 2**62], b"")
    assert "larger than" in infer_request_problem(body, header)
    body, header = binary_request([1, 4], bytes(16), declared=12)
    assert "needs 16 bytes, binary_data_size says 12" in infer_request_problem(body, header)
    body, header = binary_request([1, 4], bytes(16))
    assert "carries 20" in infer_request_problem(body + bytes(4), header)


def test_json_data_must_hold_exactly_the_declared_elements():
    assert "declares 4 elements, 'data' holds 3" in infer_request_problem(json_request([1, 4], [1, 2, 3]), None)
    assert "declares 1 elements, 'data' holds 2" in infer_request_problem(json_request([1, 1], [[1, 2]]), None)


def test_deeply_nested_or_malformed_json_is_refused():
    deep = b'{"inputs": [{"name": "AUDIO", "shape": [1, 1], "datatype": "FP32", "data": ' + b"[" * 100_000
    deep += b"]" * 100_000 + b"}]}"
    assert "nested too deeply" in infer_request_problem(deep, None)
    assert "not valid JSON" in infer_request_problem(b'{"inputs": [', None)
    assert "'inputs' list" in infer_request_problem(b"[]", None)


@pytest.mark.parametrize(
    ("shape", "why"),
    [([1, -1], "non-negative"), ([1, 2.5], "non-negative"), ([1, True], "non-negative"), ("1,2", "non-negative")],
)
def test_shapes_must_be_lists_of_non_negative_integers(shape, why):
    assert why in infer_request_problem(json_request(shape, [0.0]), None)


def test_unknown_datatypes_and_header_lengths_beyond_the_body_are_refused():
    assert "unknown datatype" in infer_request_problem(json_request([1], [0], "FLOAT"), None)
    body, _ = binary_request([1, 4], bytes(16))
    assert "does not fit" in infer_request_problem(body, len(body) + 1)
