"""LayerOption validation and serialization; Plan JSON round trip."""

from __future__ import annotations

import pytest

from slimline.errors import InvalidOption
from slimline.search.accounting import layer_options
from slimline.search.layers import LayerGeometry
from slimline.search.options import LayerOption, Plan, nm_pattern_bits

GEOM = LayerGeometry(name="fc", kind="linear", shape=(64, 256), has_bias=True)


def test_every_enumerated_option_round_trips_through_its_string() -> None:
    opts = layer_options(GEOM, group_sizes=(16, 32, 64, 128))
    assert len(opts) == len(set(opts)) > 300
    for opt in opts:
        assert LayerOption.from_str(opt.to_str()) == opt
        assert LayerOption.from_dict(opt.to_dict()) == opt


def test_enumeration_covers_the_design_space() -> None:
    opts = layer_options(GEOM)
    kinds = {o.sparsity for o in opts}
    assert kinds == {"dense", "nm", "unstructured", "removed"}
    assert {(o.n, o.m) for o in opts if o.sparsity == "nm"} == {
        (1, 4),
        (2, 4),
        (1, 8),
        (2, 8),
        (4, 8),
    }
    assert {o.bits for o in opts} == {0, 2, 3, 4, 5, 6, 8, 16}


def test_enumeration_skips_patterns_longer_than_a_row() -> None:
    tiny = LayerGeometry(name="c", kind="conv2d", shape=(4, 1, 2, 3), has_bias=False)  # rows of 6
    assert all(o.m <= 6 for o in layer_options(tiny) if o.sparsity == "nm")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sparsity": "blocky"}, "sparsity"),
        ({"bits": 7, "granularity": "channel"}, "bits"),
        ({"sparsity": "nm", "n": 3, "m": 4, "bits": 4, "granularity": "channel"}, "n:m"),
        (
            {"sparsity": "unstructured", "density": 1.5, "bits": 4, "granularity": "channel"},
            "density",
        ),
        ({"bits": 4}, "granularity"),
        ({"bits": 16, "granularity": "channel"}, "granularity"),
        ({"bits": 4, "granularity": "group"}, "group_size"),
        ({"bits": 4, "granularity": "group", "group_size": 48}, "group_size"),
    ],
)
def test_invalid_options_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidOption) as info:
        LayerOption(**kwargs)
    assert info.value.field == field
    assert (
        str(kwargs.get(field.split(":")[0], "")) in info.value.message
        or field in info.value.message
    )


@pytest.mark.parametrize("text", ["", "nm2:4", "dense/4", "nm2-4/b4/ch", "un/b4/ch", "dense/b4/x"])
def test_unparseable_strings_say_what_is_accepted(text: str) -> None:
    with pytest.raises(InvalidOption, match="expected e.g."):
        LayerOption.from_str(text)


def test_plan_json_round_trip_and_version_check() -> None:
    plan = Plan(
        {
            "a": LayerOption.from_str("nm2:4/b4/ch"),
            "b.c": LayerOption.from_str("removed"),
            "d": LayerOption.from_str("un0.0625/b3/g64"),
        }
    )
    assert Plan.from_json(plan.to_json()) == plan
    with pytest.raises(InvalidOption, match="version"):
        Plan.from_dict({"version": 99, "layers": {}})


def test_nm_pattern_bits_are_the_rounded_up_log_of_the_combinations() -> None:
    assert [nm_pattern_bits(n, m) for n, m in [(1, 4), (2, 4), (1, 8), (2, 8), (4, 8)]] == [
        2,
        3,
        3,
        5,
        7,
    ]
