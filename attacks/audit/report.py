"""The audit report: Markdown and HTML from the same data."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .battery import Settings, Stage
from .checks import Check

#: what each stage is, for the report
ABOUT = {
    "pgd_naive": "PGD-CE, gradients through the defense as autograd sees it (the naive evaluation)",
    "pgd": "PGD-CE through the defense's BPDA surrogate",
    "pgd_margin": "PGD with the margin (CW) loss, BPDA",
    "apgd_ce": "APGD-CE (Croce & Hein 2020), BPDA, EOT when randomized",
    "apgd_dlr": "APGD-DLR, scale-invariant loss",
    "apgd_t": "APGD-T, targeted DLR towards the runner-up classes",
    "pgd_long": "PGD with more steps and restarts (convergence)",
    "square": "Square (score-based, probabilities only)",
    "hsja": "HSJA through the defended model's label oracle",
    "transfer": "PGD on an undefended surrogate, judged on the defended model",
    "random": "random points in the ε-ball",
}


@dataclass
class AuditReport:
    """Everything an audit found; :meth:`markdown` and :meth:`html` render it."""

    title: str
    settings: Settings
    clean_accuracy: float
    n: int
    stages: dict[str, Stage]
    checks: list[Check]
    #: images handed to the audit; only the ``n`` it classified correctly are attacked
    total: int
    info: dict[str, Any] = field(default_factory=dict)

    def robust_accuracy(self, stage: Stage) -> float:
        """Over every image handed in, as RobustBench and ``task=evaluate`` count: a misclassified image is not
        robust (``Stage.accuracy`` counts only the attacked images, which the checks compare)."""
        return sum(stage.robust) / max(1, self.total)

    @property
    def scored(self) -> dict[str, Stage]:
        return {k: s for k, s in self.stages.items() if s.robust}

    @property
    def lowest(self) -> tuple[str, float]:
        """(attack, robust accuracy): the lowest robust accuracy under any attack, and which one found it."""
        name = min(self.scored, key=lambda k: (self.scored[k].accuracy, k))
        return name, self.robust_accuracy(self.scored[name])

    @property
    def combined(self) -> float:
        """Robust accuracy when every attack's points count: images no attack broke."""
        robust = [all(s.robust[i] for s in self.scored.values()) for i in range(self.n)]
        return sum(robust) / max(1, self.total)

    @property
    def images_line(self) -> str:
        return (
            f"{self.total} images, clean accuracy {self.clean_accuracy:.3f}: the {self.n} classified correctly "
            "are attacked, and robust accuracy counts all of them (a misclassified image is not robust)."
        )

    @property
    def flags(self) -> list[str]:
        return [c.name for c in self.checks if c.flagged]

    @property
    def verdict(self) -> str:
        name, low = self.lowest
        if not self.flags:
            return f"no flag, lowest robust accuracy {low:.3f} under the battery ({name}); all attacks combined " \
                   f"{self.combined:.3f}"  # fmt: skip
        naive = self.robust_accuracy(self.stages["pgd_naive"])
        return (f"unreliable: flags {', '.join(self.flags)}; robust accuracy drops from {naive:.3f} (naive PGD) to "
                f"{low:.3f} ({name}); all attacks combined {self.combined:.3f}")  # fmt: skip

    def summary(self) -> dict[str, Any]:
        name, low = self.lowest
        return {
            "clean_accuracy": self.clean_accuracy,
            "lowest_robust_accuracy": low,
            "lowest_attack": name,
            "combined_robust_accuracy": self.combined,
            "naive_robust_accuracy": self.robust_accuracy(self.stages["pgd_naive"]),
            "robust_accuracy_by_attack": {k: self.robust_accuracy(s) for k, s in self.scored.items()},
            "n_images": self.total,
            "n_attacked": self.n,
            "flags": self.flags,
            "checks": {c.name: {"verdict": c.verdict, "evidence": c.evidence} for c in self.checks},
            "verdict": self.verdict,
        }

    def markdown(self) -> str:
        s = self.settings
        threat = f"Threat model: {s.norm}, ε = {s.eps:g}; {self.images_line}"
        lines = [f"# Audit: {self.title}", "", f"**Verdict:** {self.verdict}", "", threat, ""]
        lines += ["## Robust accuracy by attack", "", "| attack | robust accuracy | what it is |", "|---|---|---|"]
        lines += [f"| {k} | {self.robust_accuracy(v):.3f} | {ABOUT.get(k, '')} |" for k, v in self.scored.items()]
        curve = self.stages["unbounded"].details.get("curve", {}) if "unbounded" in self.stages else {}
        if curve:
            share = self.n / max(1, self.total)  # the curve counts attacked images; report it over all of them
            lines += [
                "",
                "PGD (margin) robust accuracy by ε: " + ", ".join(f"{e}: {a * share:.3f}" for e, a in curve.items()),
            ]
        lines += ["", "## Checks", "", "| check | result | evidence |", "|---|---|---|"]
        lines += [f"| {c.name} | {c.verdict} | {c.evidence} |" for c in self.checks]
        lines += ["", f"Settings: {s}"]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{self.robust_accuracy(v):.3f}</td><td>"
                       f"{html.escape(ABOUT.get(k, ''))}</td></tr>" for k, v in self.scored.items())  # fmt: skip
        checks = "".join(f"<tr class='{c.verdict.lower()}'><td>{html.escape(c.name)}</td><td>{c.verdict}</td><td>"
                         f"{html.escape(c.evidence)}</td></tr>" for c in self.checks)  # fmt: skip
        style = "body{font-family:sans-serif;max-width:60em}td,th{padding:.2em .6em;border-bottom:1px solid #ddd}" \
                ".flag td:nth-child(2){color:#b00;font-weight:bold}.pass td:nth-child(2){color:#070}"  # fmt: skip
        s = self.settings
        return (f"<!doctype html><meta charset='utf-8'><title>Audit: {html.escape(self.title)}</title>"
                f"<style>{style}</style><h1>Audit: {html.escape(self.title)}</h1>"
                f"<p><b>Verdict:</b> {html.escape(self.verdict)}</p><p>Threat model: {s.norm}, ε = {s.eps:g}; "
                f"{html.escape(self.images_line)}</p>"
                f"<h2>Robust accuracy by attack</h2><table><tr><th>attack</th><th>robust accuracy</th><th>what it "
                f"is</th></tr>{rows}</table><h2>Checks</h2><table><tr><th>check</th><th>result</th><th>evidence</th>"
                f"</tr>{checks}</table>")  # fmt: skip

    def write(self, folder: Path) -> dict[str, str]:
        """``audit.md`` and ``audit.html`` in ``folder``; returns their names."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "audit.md").write_text(self.markdown())
        (folder / "audit.html").write_text(self.html())
        return {"report": "audit.md", "report_html": "audit.html"}
