"""Property-based tests of PSA configuration: any mapping of settings, as a JSON or TOML file could
hold them, gives a config the kernels accept or one `OptionError` line, never another exception."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qvl.errors import OptionError
from qvl.psa import CONFIG_FIELDS, AttentionConfig

odd_numbers = st.sampled_from([0, -1, 1, 2, 3, 7, 8, 16, 17, 64, 128, 256, 1024, 2**40, math.nan, math.inf, -0.0, 0.5])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    odd_numbers,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["energybound", "topk", "xattn", "default", "fast", "balanced", "dense", "1", ""]),
)
band = st.one_of(st.lists(st.one_of(st.floats(-1, 2), odd_numbers), max_size=3), scalars)
mask_ratios = st.one_of(
    scalars,
    st.dictionaries(st.sampled_from([1, 2, 4, 8, "1", "2", "4", "8", 3, "x", 0]), band, max_size=5),
    st.just({1: [0.0, 0.5], 2: [0.5, 0.8], 4: [0.8, 0.9], 8: [0.9, 1.0]}),
)
values = {
    "mask_ratios": mask_ratios,
    "similarity_thresholds": st.one_of(scalars, st.lists(st.one_of(st.floats(-2, 2), odd_numbers), max_size=4)),
}
settings_maps = st.dictionaries(
    st.sampled_from([*CONFIG_FIELDS, "unknown_field", 3]),
    st.deferred(lambda: scalars),
    max_size=6,
).flatmap(
    lambda d: st.fixed_dictionaries(
        {k: values.get(k, st.just(v)) if isinstance(k, str) else st.just(v) for k, v in d.items()}
    )
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=settings_maps)
def test_any_settings_make_a_valid_config_or_one_option_error(data):
    try:
        config = AttentionConfig.from_dict(data, source="PSA config x.json")
    except OptionError as exc:
        message = str(exc)
        assert message.startswith("PSA config x.json: ") and "\n" not in message, message
        return
    config.kernel_config(4096)  # a config that was accepted is one the kernels take


@pytest.mark.parametrize("preset", ["default", "balanced", "fast", "dense"])
@settings(max_examples=60, deadline=None)
@given(block=odd_numbers, stride=odd_numbers, min_tokens=odd_numbers)
def test_numeric_overrides_of_every_preset(preset, block, stride, min_tokens):
    try:
        config = AttentionConfig.preset(preset, block=block, xattn_stride=stride, min_tokens=min_tokens)
    except OptionError as exc:
        assert "\n" not in str(exc)
        return
    assert config.block >= 16 and config.xattn_stride <= config.block and config.min_tokens >= 0
