"""The rule registry: `rule` registers a rule function under its id; `Rule.run` turns its hits into findings."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from trtq.exporter.check.graph import Graph
from trtq.exporter.check.report import Finding

__all__ = ["REGISTRY", "Hit", "Rule", "rule"]


class Hit(NamedTuple):
    """What a rule function yields: node index (None: the whole model), message, fix, severity override."""

    node: int | None
    message: str
    fix: str
    severity: str | None = None


@dataclass(frozen=True)
class Rule:
    """One check: its id, the severity it reports (unless a hit overrides it), a summary, its function."""

    id: str
    severity: str
    summary: str
    func: Callable[[Graph], Iterable[Hit]]

    def run(self, g: Graph) -> list[Finding]:
        """The rule's findings on an indexed graph."""
        return [
            Finding(hit.severity or self.severity, self.id, g.name(hit.node), hit.message, hit.fix)
            for hit in self.func(g)
        ]


REGISTRY: list[Rule] = []


def rule(rule_id: str, severity: str, summary: str) -> Callable[[Callable[[Graph], Iterable[Hit]]], Any]:
    """Register a rule function under `rule_id` (the order of registration is the order of `RULES`)."""

    def register(func: Callable[[Graph], Iterable[Hit]]) -> Callable[[Graph], Iterable[Hit]]:
        REGISTRY.append(Rule(rule_id, severity, summary, func))
        return func

    return register
