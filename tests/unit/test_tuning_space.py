"""Search spaces as data: typed genes, defaults, the unit cube, and 422s that name the bad gene."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cvops.errors import ValidationFailed
from cvops.ml.hyperparameters import (
    DETECTION_KEYS,
    HYPERPARAMETER_FIELDS,
    Hyperparameters,
    detection_overrides,
    validate_hyperparameters,
)
from cvops.tuning.space import (
    BoolGene,
    CategoricalGene,
    FloatGene,
    IntGene,
    default_genome,
    default_space,
    from_unit,
    genome_key,
    in_space,
    parse_space,
    space_json,
    to_unit,
)


def test_parse_every_gene_type_with_defaults() -> None:
    space = parse_space(
        {
            "lr0": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2, "default": 0.1},
            "epochs": {"type": "int", "low": 1, "high": 5},
            "optimizer": {"type": "categorical", "choices": ["sgd", "adam"]},
            "batch_size": {"type": "choice", "choices": [16, 32]},
            "augment_flip": {"type": "bool"},
        }
    )
    g = space.genes
    assert g["lr"] == FloatGene(
        low=1e-4, high=1e-1, log=True, default=1e-3
    )  # lr0 is lr; default: the field's
    assert g["label_smoothing"] == FloatGene(low=0.0, high=0.2, default=0.1)
    assert g["epochs"] == IntGene(low=1, high=5, default=3)  # field default 10 is out of range: the middle
    assert g["optimizer"] == CategoricalGene(choices=("sgd", "adam"), default="sgd")  # adamw not offered
    assert g["batch_size"] == CategoricalGene(choices=(16, 32), default=32)
    assert g["augment_flip"] == BoolGene(default=True)
    assert space.names() == sorted(g)
    assert parse_space(space_json(space)) == space  # the JSON form round-trips
    validate_hyperparameters(default_genome(space))


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"nonsense": {"type": "float", "low": 0, "high": 1}}, "nonsense"),
        ({"lr": {"type": "float", "low": 1, "high": 0}}, "lr"),
        ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, "lr"),
        ({"lr": {"type": "float", "low": 1e-3, "high": 5.0}}, "lr"),  # above Hyperparameters' bound
        ({"lr": {"type": "float", "low": 1e-3, "high": 0.1, "default": 0.5}}, "lr"),
        ({"lr": {"type": "float", "low": "a", "high": 0.1}}, "lr"),
        ({"lr": {"type": "float", "low": 0.001, "high": float("inf")}}, "lr"),
        ({"epochs": {"type": "float", "low": 1, "high": 3}}, "epochs"),  # an int field
        ({"epochs": {"type": "int", "low": 1.5, "high": 3}}, "epochs"),
        ({"optimizer": {"type": "choice", "choices": []}}, "optimizer"),
        ({"optimizer": {"type": "categorical", "choices": ["sgd", "rmsprop"]}}, "optimizer"),
        ({"optimizer": {"type": "categorical", "choices": ["sgd", "sgd"]}}, "optimizer"),
        ({"optimizer": {"type": "categorical", "choices": ["sgd"], "default": "adam"}}, "optimizer"),
        ({"augment_flip": {"type": "bool", "default": 1}}, "augment_flip"),
        ({"lr": {"type": "bool"}}, "lr"),
        ({"lr": {"type": "gaussian"}}, "lr"),
        ({"lr": 3}, "lr"),
        ({"warmup_epochs": {"type": "int", "low": 0, "high": 20}}, "warmup_epochs"),  # > epochs (10)
    ],
)
def test_bad_genes_are_named(raw: dict, field: str) -> None:
    with pytest.raises(ValidationFailed) as exc:
        parse_space(raw)
    assert exc.value.status == 422
    assert exc.value.details["field"] == f"search_space.{field}"
    assert field in exc.value.message


def test_free_spaces_for_test_functions() -> None:
    space = parse_space({"x": {"type": "float", "low": -5, "high": 5}}, hyperparameters=False)
    assert space.genes["x"].default == 0.0


@pytest.mark.parametrize("task", ["classification", "detection"])
def test_default_spaces_are_trainable(task: str) -> None:
    space = default_space(task)  # type: ignore[arg-type]
    assert set(space.genes) <= set(HYPERPARAMETER_FIELDS)
    assert in_space(space, default_genome(space))
    validate_hyperparameters(default_genome(space))


def test_detection_space_mirrors_ultralytics_tuner_keys() -> None:
    keys = {"lr", "lrf", "momentum", "weight_decay", "warmup_epochs", "box", "cls", "dfl", "hsv_h"}
    keys |= {"hsv_s", "hsv_v", "degrees", "translate", "scale", "fliplr", "mosaic", "mixup"}
    assert set(default_space("detection").genes) == keys


def test_detection_knobs_change_nothing_unless_set() -> None:
    assert detection_overrides(Hyperparameters()) == {}
    hp = validate_hyperparameters({"mosaic": 0.0, "lrf": 0.1, "box": 5.0})
    assert detection_overrides(hp) == {"lrf": 0.1, "box": 5.0, "mosaic": 0.0}
    assert set(DETECTION_KEYS) <= set(HYPERPARAMETER_FIELDS)


@settings(max_examples=200, deadline=None)
@given(u=st.floats(0.0, 1.0), log=st.booleans(), low=st.floats(1e-4, 10.0), width=st.floats(0.0, 100.0))
def test_unit_cube_maps_into_bounds_and_back(u: float, log: bool, low: float, width: float) -> None:
    gene = FloatGene(low=low, high=low + width, log=log, default=low)
    v = from_unit(gene, u)
    assert gene.low <= v <= gene.high
    assert 0.0 <= to_unit(gene, v) <= 1.0
    assert abs(from_unit(gene, to_unit(gene, v)) - v) <= 1e-5 * abs(v)  # a value maps back to itself
    if width > 10.0 and not log:
        assert abs(to_unit(gene, v) - u) < 1e-4


@given(u=st.floats(0.0, 1.0), low=st.integers(-5, 5), width=st.integers(0, 10))
def test_int_cells_are_equal(u: float, low: int, width: int) -> None:
    gene = IntGene(low=low, high=low + width, default=low)
    v = from_unit(gene, u)
    assert isinstance(v, int) and gene.low <= v <= gene.high
    assert from_unit(gene, to_unit(gene, v)) == v


def test_genome_key_sees_types_and_six_digits() -> None:
    assert genome_key({"a": 0.1234567}) == genome_key({"a": 0.12345671})
    assert genome_key({"a": 1}) != genome_key({"a": True})
    assert genome_key({"a": 1, "b": 2}) == genome_key({"b": 2, "a": 1})
