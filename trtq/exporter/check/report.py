"""What `check` returns: `Finding` (one problem) and `CheckReport` (all of them, printable, JSON-able)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SEVERITIES", "CheckReport", "Finding"]


SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Finding:
    """One problem the check found.

    Args:
        severity: 'error' (TensorRT refuses or miscomputes), 'warning' (slower, or higher precision than
            asked), 'info' (worth knowing).
        rule: short kebab-case rule id, a key of the module docstring's table.
        node: the node at fault (its name, `<OpType>#<index>` when unnamed), or `<model>`.
        message: what is wrong.
        fix: what to change.
    """

    severity: str
    rule: str
    node: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        """The finding as a JSON-able dict."""
        return asdict(self)


@dataclass
class CheckReport:
    """Everything `check` found, in rule order, errors first.

    Args:
        findings: the findings.
        target: the target checked against (None: TensorRT's rules only).
        trt: the TensorRT version checked against (None: the newest, for version-dependent rules).
    """

    findings: list[Finding] = field(default_factory=list)
    target: str | None = None
    trt: str | None = None

    @property
    def errors(self) -> list[Finding]:
        """Findings TensorRT would refuse or miscompute."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings that cost speed or precision."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def counts(self) -> dict[str, int]:
        """Number of findings per severity."""
        return {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES}

    def to_dict(self) -> dict[str, Any]:
        """The report as a JSON-able dict."""
        return {
            "ok": self.ok,
            "target": self.target,
            "trt": self.trt,
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
        }

    def format(self) -> str:
        """A readable table, one line per finding, then a summary line."""
        rows = [("SEVERITY", "RULE", "NODE", "MESSAGE / FIX")]
        rows += [(f.severity, f.rule, f.node, f"{f.message} Fix: {f.fix}") for f in self.findings]
        widths = [min(40, max(len(r[k]) for r in rows)) for k in range(3)]
        lines = [
            "  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows
        ]
        counts = self.counts()
        lines.append(
            f"trtq check (target {self.target or 'any'}, TensorRT {self.trt or 'any'}): "
            f"{counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info — "
            f"{'OK' if self.ok else 'FAILED'}"
        )
        return "\n".join(lines if self.findings else lines[-1:])
