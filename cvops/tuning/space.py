"""A search space as data: typed genes with bounds and a default, parsed from JSON with 422s naming the gene.

A gene is one of :class:`FloatGene` (linear or log scale), :class:`IntGene`, :class:`CategoricalGene` or
:class:`BoolGene`.  :func:`parse_space` reads the JSON form an API user sends::

    {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": true, "default": 1e-3},
     "batch_size": {"type": "categorical", "choices": [16, 32, 64]},   # "choice" is accepted too
     "augment_flip": {"type": "bool"}}

and checks every gene against :class:`cvops.ml.hyperparameters.Hyperparameters` (the name is a field, the
gene's type fits the field's, its bounds, default and choices are valid values), so a genome drawn from a
parsed space is always trainable.  ``lr0`` (ultralytics' name) is read as ``lr``.

The operators work in the *unit cube*: :func:`to_unit` / :func:`from_unit` map a numeric gene to [0, 1] in
its own scale (log genes in log space), so one mutation step means the same thing for every gene.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import msgspec

from cvops.errors import ValidationFailed
from cvops.ml.hyperparameters import DEFAULTS, HYPERPARAMETER_FIELDS, Hyperparameters

Choice = str | int | float | bool
Genome = dict[str, Any]
Task = Literal["classification", "detection"]

ALIASES = {"lr0": "lr"}  # ultralytics' names of cvops' knobs


class FloatGene(msgspec.Struct, frozen=True, tag="float", kw_only=True):
    low: float
    high: float
    log: bool = False
    default: float


class IntGene(msgspec.Struct, frozen=True, tag="int", kw_only=True):
    low: int
    high: int
    default: int


class CategoricalGene(msgspec.Struct, frozen=True, tag="categorical", kw_only=True):
    choices: tuple[Choice, ...]
    default: Choice


class BoolGene(msgspec.Struct, frozen=True, tag="bool", kw_only=True):
    default: bool


Gene = FloatGene | IntGene | CategoricalGene | BoolGene
NumericGene = FloatGene | IntGene


class SearchSpace(msgspec.Struct, frozen=True):
    """Genes by hyperparameter name, in name order (the order every operator walks them in)."""

    genes: dict[str, Gene]

    def names(self) -> list[str]:
        return sorted(self.genes)


# ----------------------------------------------------------------------------------------- unit cube


def to_unit(gene: NumericGene, value: float) -> float:
    """``value`` in [0, 1] in the gene's own scale (an int gene's cells are equal-width)."""
    if isinstance(gene, IntGene):
        return (float(value) - gene.low + 0.5) / (gene.high - gene.low + 1)
    if gene.high == gene.low:
        return 0.5
    if gene.log:
        lo, hi = math.log(gene.low), math.log(gene.high)
        return (math.log(max(gene.low, min(gene.high, float(value)))) - lo) / (hi - lo)
    return (float(value) - gene.low) / (gene.high - gene.low)


def quantise(value: float) -> float:
    """Six significant digits: genomes stay JSON-stable and near-equal floats count as duplicates."""
    return float(f"{value:.6g}")


def from_unit(gene: NumericGene, u: float) -> float | int:
    """The gene's value at ``u`` (clipped to [0, 1]), within its bounds."""
    u = min(1.0, max(0.0, u))
    if isinstance(gene, IntGene):
        return min(gene.high, gene.low + int(u * (gene.high - gene.low + 1)))
    if gene.log:
        lo, hi = math.log(gene.low), math.log(gene.high)
        value = math.exp(lo + u * (hi - lo))
    else:
        value = gene.low + u * (gene.high - gene.low)
    return min(gene.high, max(gene.low, quantise(value)))


def default_genome(space: SearchSpace) -> Genome:
    return {name: space.genes[name].default for name in space.names()}


def genome_key(genome: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable identity of a genome (floats compared at six significant digits)."""
    return tuple(
        (k, quantise(v) if isinstance(v, float) else (type(v).__name__, v)) for k, v in sorted(genome.items())
    )


def in_space(space: SearchSpace, genome: Mapping[str, Any]) -> bool:
    """Every gene present, of its type, and within its bounds or choices."""
    if set(genome) != set(space.genes):
        return False
    for name, gene in space.genes.items():
        v = genome[name]
        if isinstance(gene, BoolGene):
            ok = isinstance(v, bool)
        elif isinstance(gene, CategoricalGene):
            ok = any(type(v) is type(c) and v == c for c in gene.choices)
        elif isinstance(gene, IntGene):
            ok = isinstance(v, int) and not isinstance(v, bool) and gene.low <= v <= gene.high
        else:
            ok = isinstance(v, float) and gene.low <= v <= gene.high
        if not ok:
            return False
    return True


# ------------------------------------------------------------------------------------------- parsing

_KIND_OF_FIELD: dict[str, str] = {}
for _f in msgspec.inspect.type_info(Hyperparameters).fields:  # type: ignore[attr-defined]
    _t = _f.type
    if isinstance(_t, msgspec.inspect.UnionType):
        _t = next(t for t in _t.types if not isinstance(t, msgspec.inspect.NoneType))
    _KIND_OF_FIELD[_f.name] = type(_t).__name__.removesuffix("Type").lower()  # int, float, bool, literal


def _bad(name: str, message: str, **extra: Any) -> ValidationFailed:
    return ValidationFailed(f"search_space.{name}: {message}", {"field": f"search_space.{name}", **extra})


def _check_value(name: str, field: str, value: Any, what: str) -> None:
    try:
        msgspec.convert({field: value}, Hyperparameters)
    except msgspec.ValidationError as exc:
        raise _bad(name, f"{what} {value!r} is not a valid {field}: {exc}") from exc


def _number(name: str, spec: Mapping[str, Any], key: str) -> float:
    v = spec.get(key)
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _bad(name, f"{key} must be a finite number")
    return v


def _parse_gene(name: str, field: str, spec: Any, *, check_field: bool) -> Gene:
    if not isinstance(spec, Mapping):
        raise _bad(name, "a gene spec must be an object")
    kind = spec.get("type")
    fkind = _KIND_OF_FIELD.get(field, "")
    has_default = "default" in spec
    gene: Gene
    if kind in ("float", "int"):
        low, high = _number(name, spec, "low"), _number(name, spec, "high")
        if low > high:
            raise _bad(name, "needs low <= high")
        if kind == "float":
            log = spec.get("log", False)
            if not isinstance(log, bool):
                raise _bad(name, "log must be true or false")
            if log and low <= 0:
                raise _bad(name, "a log scale needs low > 0")
            if check_field and fkind != "float":
                raise _bad(name, f"{field} takes {fkind} values, not floats")
            fallback = math.sqrt(low * high) if log else (low + high) / 2
            default = _number(name, spec, "default") if has_default else _field_default(field, fallback)
            gene = FloatGene(low=float(low), high=float(high), log=log, default=float(default))
        else:
            if low != int(low) or high != int(high):
                raise _bad(name, "an int gene needs integer bounds")
            if check_field and fkind not in ("int", "float"):
                raise _bad(name, f"{field} takes {fkind} values, not integers")
            fallback = int(low + high) // 2
            default = _number(name, spec, "default") if has_default else _field_default(field, fallback)
            if default != int(default):
                if has_default:
                    raise _bad(name, "an int gene needs an integer default")
                default = fallback
            gene = IntGene(low=int(low), high=int(high), default=int(default))
        if not gene.low <= gene.default <= gene.high:
            if has_default:
                raise _bad(name, f"default {gene.default!r} is outside [{gene.low}, {gene.high}]")
            gene = msgspec.structs.replace(gene, default=type(gene.default)(fallback))
        if check_field:
            for what, v in (("low", gene.low), ("high", gene.high), ("default", gene.default)):
                _check_value(name, field, v, what)
        return gene
    if kind in ("categorical", "choice"):
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise _bad(name, "choices must be a non-empty list")
        if not all(isinstance(c, str | int | float | bool) for c in choices):
            raise _bad(name, "choices must be strings, numbers or booleans")
        keys = [(type(c).__name__, c) for c in choices]
        if len(set(keys)) != len(keys):
            raise _bad(name, "choices must be distinct")
        default = spec["default"] if has_default else _field_default(field, choices[0])
        if (type(default).__name__, default) not in keys:
            if has_default:
                raise _bad(name, f"default {default!r} is not one of the choices")
            default = choices[0]
        if check_field:
            for c in choices:
                _check_value(name, field, c, "choice")
        return CategoricalGene(choices=tuple(choices), default=default)
    if kind == "bool":
        default = spec.get("default", _field_default(field, False))
        if not isinstance(default, bool):
            raise _bad(name, "a bool gene's default must be true or false")
        if check_field and fkind != "bool":
            raise _bad(name, f"{field} takes {fkind} values, not booleans")
        return BoolGene(default=default)
    raise _bad(name, "type must be float, int, categorical (or choice) or bool")


def _field_default(field: str, fallback: Any) -> Any:
    value = getattr(DEFAULTS, field, None)
    return fallback if value is None else value


def parse_space(
    raw: Mapping[str, Any] | None, *, task: Task = "classification", hyperparameters: bool = True
) -> SearchSpace:
    """A validated :class:`SearchSpace` from its JSON form (empty or None: :func:`default_space` of ``task``).

    With ``hyperparameters`` (the default) every gene must be a trainable
    :class:`~cvops.ml.hyperparameters.Hyperparameters` field; without, any name goes (test functions).
    Raises :class:`ValidationFailed` with ``details.field = "search_space.<name>"``.
    """
    if not raw:
        return default_space(task)
    if not isinstance(raw, Mapping):
        raise ValidationFailed("search_space must be an object", {"field": "search_space"})
    genes: dict[str, Gene] = {}
    for name in sorted(raw):
        if not isinstance(name, str) or not name:
            raise ValidationFailed("gene names must be non-empty strings", {"field": "search_space"})
        field = ALIASES.get(name, name) if hyperparameters else name
        if hyperparameters and field not in HYPERPARAMETER_FIELDS:
            raise _bad(name, f"{name!r} is not a hyperparameter", allowed=sorted(HYPERPARAMETER_FIELDS))
        if field in genes:
            raise _bad(name, f"{name!r} names {field!r} twice")
        genes[field] = _parse_gene(name, field, raw[name], check_field=hyperparameters)
    if hyperparameters and "warmup_epochs" in genes and "epochs" not in genes:
        g = genes["warmup_epochs"]
        if isinstance(g, IntGene) and g.high > DEFAULTS.epochs:
            raise _bad(
                "warmup_epochs", f"high must be <= epochs ({DEFAULTS.epochs}) when epochs is not a gene"
            )
    return SearchSpace(genes=dict(sorted(genes.items())))


def space_json(space: SearchSpace) -> dict[str, Any]:
    """The JSON form of a space (what :func:`parse_space` reads back)."""
    out: dict[str, Any] = {}
    for name, gene in space.genes.items():
        d = msgspec.to_builtins(gene)
        if isinstance(gene, CategoricalGene):
            d["type"] = "categorical"
            d["choices"] = list(gene.choices)
        out[name] = d
    return out


# ------------------------------------------------------------------------------------ default spaces

CLASSIFICATION_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True, "default": 1e-3},
    "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True, "default": 1e-4},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "adamw"], "default": "adamw"},
    "momentum": {"type": "float", "low": 0.6, "high": 0.98, "default": 0.9},
    "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2, "default": 0.0},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64], "default": 32},
    "augment_flip": {"type": "bool", "default": True},
    "color_jitter": {"type": "float", "low": 0.0, "high": 0.3, "default": 0.0},
    "epochs": {"type": "categorical", "choices": [3], "default": 3},
}

# ultralytics' tuner space (engine/tuner.py), restricted to cvops' bounds; lr0 is cvops' lr
DETECTION_SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True, "default": 1e-3},
    "lrf": {"type": "float", "low": 0.01, "high": 1.0, "default": 0.01},
    "momentum": {"type": "float", "low": 0.7, "high": 0.98, "default": 0.9},
    "weight_decay": {"type": "float", "low": 0.0, "high": 0.001, "default": 0.0005},
    "warmup_epochs": {"type": "int", "low": 0, "high": 5, "default": 0},
    "box": {"type": "float", "low": 1.0, "high": 20.0, "default": 7.5},
    "cls": {"type": "float", "low": 0.1, "high": 4.0, "default": 0.5},
    "dfl": {"type": "float", "low": 0.4, "high": 12.0, "default": 1.5},
    "hsv_h": {"type": "float", "low": 0.0, "high": 0.1, "default": 0.015},
    "hsv_s": {"type": "float", "low": 0.0, "high": 0.9, "default": 0.7},
    "hsv_v": {"type": "float", "low": 0.0, "high": 0.9, "default": 0.4},
    "degrees": {"type": "float", "low": 0.0, "high": 45.0, "default": 0.0},
    "translate": {"type": "float", "low": 0.0, "high": 0.9, "default": 0.1},
    "scale": {"type": "float", "low": 0.0, "high": 0.95, "default": 0.5},
    "fliplr": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.5},
    "mosaic": {"type": "float", "low": 0.0, "high": 1.0, "default": 1.0},
    "mixup": {"type": "float", "low": 0.0, "high": 1.0, "default": 0.0},
}


def default_space(task: Task = "classification") -> SearchSpace:
    """The space an evolution searches when its request names none."""
    return parse_space(DETECTION_SPACE if task == "detection" else CLASSIFICATION_SPACE, task=task)
