"""The Python API takes what a user naturally passes, and answers a wrong type with a TrtqError."""

from __future__ import annotations

import pytest

import trtq
from trtq.config import QuantConfig
from trtq.errors import TrtqError

import graphs


def test_exclude_string_is_one_pattern(conv_model, conv_calib):
    """exclude="conv1" keeps conv1 in floating point; it is not one regex per character."""
    result = trtq.quantize(conv_model, conv_calib, exclude="conv1", progress=False)
    assert result.report["config"]["exclude"] == ["conv1"]
    assert "conv1" not in result.report["quantized_nodes"] and "fc" in result.report["quantized_nodes"]
    assert QuantConfig(exclude="conv1").exclude == ("conv1",)


@pytest.mark.parametrize("config", ["foo", 3])
def test_config_of_the_wrong_type(conv_model, conv_calib, config):
    with pytest.raises(TrtqError, match="not a QuantConfig"):
        trtq.quantize(conv_model, conv_calib, config=config, progress=False)


def test_config_as_a_dict(conv_model, conv_calib):
    result = trtq.quantize(conv_model, conv_calib, config={"precision": "int8", "exclude": ["fc"]}, progress=False)
    assert "fc" not in result.report["quantized_nodes"]


def test_exclude_of_the_wrong_type():
    with pytest.raises(TrtqError, match="field exclude=.3,. is not a tuple"):
        QuantConfig(exclude=[3])


@pytest.mark.parametrize(("field", "value"), [("calib", "minmax"), ("target", ("orin",)), ("block_size", None),
                                               ("opset", "17"), ("check", 1), ("passes", [1])])
def test_config_field_of_the_wrong_type(field, value):
    with pytest.raises(TrtqError, match=f"QuantConfig field {field}="):
        QuantConfig(**{field: value})
    with pytest.raises(TrtqError, match=f"QuantConfig field {field}="):
        QuantConfig.from_dict({field: value})


def test_compare_without_data_names_the_data_argument(conv_model):
    with pytest.raises(TrtqError, match="no evaluation data") as err:
        trtq.compare(conv_model, conv_model, None)
    assert "--data" in err.value.fix and "calib" not in err.value.fix


def test_int4_sidecar_counts_the_samples_gptq_read(attention_model, tmp_path):
    result = trtq.quantize(attention_model, graphs.attention_data(6), precision="int4", progress=False,
                           config=QuantConfig(precision="int4", block_size=32))
    assert result.report["summary"]["calibration_samples"] == 6
