"""The response JSON codec: orjson, same values as the standard library, never a failure."""

import json
import math

import numpy as np

from app.web import json_codec


def test_round_trips_what_responses_carry():
    data = {
        "data": {
            "embed": {"embeddings": [{"index": 0, "vector": np.float32([0.1, -1e-7, 3.5]).tolist(), "cached": True}]},
            "meta": {"ünïcode": "\u2603", "none": None, "long": 2**40, "nested": [{"a": [1, 2.5]}]},
        }
    }
    encoded = json_codec.dumps(data)
    assert isinstance(encoded, bytes)
    assert json.loads(encoded) == data
    assert json_codec.loads(encoded) == data
    assert json_codec.dumps_str(data) == encoded.decode()
    # Floats survive bit for bit (shortest round-trip form, as json.dumps).
    assert [float(x) for x in json.loads(encoded)["data"]["embed"]["embeddings"][0]["vector"]] == np.float32(
        [0.1, -1e-7, 3.5]
    ).tolist()


def test_what_orjson_refuses_falls_back_to_the_standard_library():
    huge = {"n": 2**70}
    assert json.loads(json_codec.dumps(huge)) == huge


def test_numpy_values_serialise():
    assert json.loads(json_codec.dumps({"v": np.arange(3, dtype=np.float32)})) == {"v": [0.0, 1.0, 2.0]}
    assert math.isclose(json.loads(json_codec.dumps({"x": np.float32(0.5)}))["x"], 0.5)


def test_decode_errors_are_json_decode_errors():
    try:
        json_codec.loads(b"{nope")
    except json.JSONDecodeError:
        pass
    else:  # pragma: no cover
        raise AssertionError("expected a JSONDecodeError")
