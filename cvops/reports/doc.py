"""The layout of a report, independent of its format: a title, summary sentences and sections of blocks
(paragraphs, bullet lists, tables, charts, preformatted text).  :mod:`cvops.reports.render` turns one into
Markdown or HTML; each kind (benchmark, training, evolution, model card) builds one from its data."""

from __future__ import annotations

import msgspec


class Para(msgspec.Struct, frozen=True, tag=True):
    text: str
    highlight: bool = False  # the "what to use and why" box
    warn: bool = False


class Bullets(msgspec.Struct, frozen=True, tag=True):
    items: list[str]


class Table(msgspec.Struct, frozen=True, tag=True):
    headers: list[str]
    rows: list[list[str]]
    empty: str = "Nothing to show."


class Chart(msgspec.Struct, frozen=True, tag=True):
    """An inline SVG (drawn by :mod:`cvops.reports.svg`) and the sentence that stands for it in Markdown."""

    svg: str
    alt: str


class Pre(msgspec.Struct, frozen=True, tag=True):
    text: str
    lang: str = ""


Block = Para | Bullets | Table | Chart | Pre


class Section(msgspec.Struct, frozen=True):
    heading: str
    blocks: list[Block]


class Doc(msgspec.Struct, frozen=True):
    title: str
    facts: list[tuple[str, str]]  # the line under the title: (label, value)
    sections: list[Section]
