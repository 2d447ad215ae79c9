"""The backdoor grid: per (dataset, model), rows are poisoning attacks (with the options that differ from their
defaults, so a sweep over rates gets a row per rate), columns are defenses (``none``: the
``task=backdoor`` run itself), cells are CA / ASR / RA in percent; the latest finished record of each cell wins.
BackdoorBench's layout. DER per cell goes to the CSV (and a second Markdown table).
"""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

GRID_NOTE = (
    "Cells: clean accuracy / attack success rate (triggered test images of non-target classes sent to the target) "
    "/ robust accuracy (the same images still given their true label), in %. Column none: the poisoned model "
    "undefended. An input filter's refused inputs count as neither correct nor a success. DER = [max(0, ΔASR) − "
    "max(0, ΔCA) + 1] / 2 (BackdoorBench): 1 removes the backdoor at no cost, 0.5 changes nothing."
)


@dataclass
class BackdoorGrid:
    dataset: str
    model: str
    attacks: list[str] = field(default_factory=list)
    defenses: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)


def build_backdoor_grids(records: Iterable[Mapping[str, Any]]) -> list[BackdoorGrid]:
    """One grid per (dataset, model) from finished ``backdoor`` and ``backdoor_defense`` records (oldest first).

    A row is one poisoned model (its cache key), named by the attack and its changed options; where one name
    covers several models (other recipes or seeds), the key is added to it.
    """
    raw: dict[tuple[str, str], dict[tuple[str, str], Mapping[str, Any]]] = {}
    labels: dict[tuple[str, str], dict[str, str]] = {}
    for record in records:
        names = record.get("names") or {}
        if record.get("status") != "finished" or names.get("task") not in ("backdoor", "backdoor_defense"):
            continue
        where = (str(names.get("dataset")), str(names.get("model")))
        key = str(names.get("backdoor_key"))
        labels.setdefault(where, {})[key] = str(names.get("attack_label") or names.get("attack"))
        defense = "none" if names["task"] == "backdoor" else str(names.get("defense"))
        raw.setdefault(where, {})[(key, defense)] = record.get("metrics") or {}  # later records replace earlier
    grids = []
    for where in sorted(raw):
        named = labels[where]
        shown = {k: v if list(named.values()).count(v) == 1 else f"{v} [{k}]" for k, v in named.items()}
        grid = BackdoorGrid(*where, cells={(shown[k], d): m for (k, d), m in raw[where].items()})
        grid.attacks = sorted({a for a, _ in grid.cells})
        defenses = {d for _, d in grid.cells}
        grid.defenses = ["none", *sorted(defenses - {"none"})] if "none" in defenses else sorted(defenses)
        grids.append(grid)
    return grids


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, int | float) else "–"


def cell_text(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return "–"
    return " / ".join(_percent(metrics.get(k)) for k in ("clean_accuracy", "asr", "ra"))


def render_backdoor_markdown(grids: list[BackdoorGrid]) -> str:
    parts = []
    for g in grids:
        head = ["attack", *g.defenses]
        rows = [[a, *(cell_text(g.cells.get((a, d))) for d in g.defenses)] for a in g.attacks]
        der = [[a, *(_der(g.cells.get((a, d))) for d in g.defenses if d != "none")] for a in g.attacks]
        parts.append(f"### {g.dataset} / {g.model}: CA / ASR / RA (%)\n\n" + _markdown(head, rows))
        if len(g.defenses) > 1 or g.defenses[:1] != ["none"]:
            parts.append("DER\n\n" + _markdown(["attack", *(d for d in g.defenses if d != "none")], der))
    return "\n\n".join(parts) + "\n\n" + GRID_NOTE + "\n"


def _der(metrics: Mapping[str, Any] | None) -> str:
    value = (metrics or {}).get("der")
    return f"{value:.3f}" if isinstance(value, int | float) else "–"


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render_backdoor_csv(grids: list[BackdoorGrid]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    keys = ("clean_accuracy", "asr", "ra", "der", "detection_auroc")
    writer.writerow(["dataset", "model", "attack", "defense", *keys])
    for g in grids:
        for (attack, defense), m in sorted(g.cells.items()):
            writer.writerow([g.dataset, g.model, attack, defense, *(m.get(k, "") for k in keys)])
    return out.getvalue()


def render_backdoor_html(grids: list[BackdoorGrid]) -> str:
    body = []
    for g in grids:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in ["attack", *g.defenses])
        rows = "".join(
            "<tr>" + f"<th>{html.escape(a)}</th>"
            + "".join(f"<td>{html.escape(cell_text(g.cells.get((a, d))))}</td>" for d in g.defenses) + "</tr>"
            for a in g.attacks
        )  # fmt: skip
        body.append(f"<h2>{html.escape(g.dataset)} / {html.escape(g.model)}: CA / ASR / RA (%)</h2>"
                    f"<table><tr>{head}</tr>{rows}</table>")  # fmt: skip
    return ("<!doctype html><meta charset='utf-8'><title>advsuite backdoor grid</title>"
            "<style>td,th{padding:4px 10px;border:1px solid #ccc}table{border-collapse:collapse}</style>"
            + "".join(body) + f"<p>{html.escape(GRID_NOTE)}</p>\n")  # fmt: skip
