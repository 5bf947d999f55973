"""Checks across the Sidecars of a directory: which node would get more than one.

Istio takes the oldest Sidecar when several apply to one workload, and its analyzers
report it (``MultipleSidecarsWithoutWorkloadSelectors`` as an error,
``ConflictingSidecarWorkloadSelectors`` for selectors that pick one workload). Files have
no creation time, so here two Sidecars without selector in one namespace are an error (as
two VirtualServices for one host are), and two whose selectors a workload could match
both (no label with two different values) are a warning: the first by name applies.
"""

from __future__ import annotations

from collections.abc import Sequence

from xdsd.errors import Problem, Severity
from xdsd.model import line_of
from xdsd.model.networking import Sidecar


def sidecar_problems(sidecars: Sequence[Sidecar]) -> list[Problem]:
    """The problems of ``sidecars`` (sorted by key, as a mesh holds them), each on the
    file of the Sidecar that does not apply."""
    problems: list[Problem] = []
    by_namespace: dict[str, list[Sidecar]] = {}
    for sidecar in sidecars:
        by_namespace.setdefault(sidecar.namespace, []).append(sidecar)
    for namespace in sorted(by_namespace):
        group = by_namespace[namespace]
        plain = [s for s in group if not s.workload_selector]
        for extra in plain[1:]:
            problems.append(
                Problem(
                    extra.origin.path,
                    extra.origin.line,
                    "",
                    f"namespace {namespace!r} already has a Sidecar without workloadSelector "
                    f"({plain[0].name}, {plain[0].origin}): merge the two, or give one a "
                    "workloadSelector",
                )
            )
        selected = [s for s in group if s.workload_selector]
        for i, later in enumerate(selected):
            for first in selected[:i]:
                if _compatible(first.workload_selector, later.workload_selector):
                    problems.append(
                        Problem(
                            later.origin.path,
                            line_of(later.lines, "workloadSelector", later.origin.line),
                            "workloadSelector",
                            f"a workload labelled {_labels(first, later)} is selected by "
                            f"Sidecar {first.name} ({first.origin}) too, which applies to it "
                            "(the first by name)",
                            Severity.WARNING,
                        )
                    )
                    break
    return problems


def _compatible(a: tuple[tuple[str, str], ...], b: tuple[tuple[str, str], ...]) -> bool:
    """True when some set of labels matches both selectors."""
    first = dict(a)
    return all(first.get(k, v) == v for k, v in b)


def _labels(a: Sidecar, b: Sidecar) -> str:
    merged = {**dict(a.workload_selector), **dict(b.workload_selector)}
    return ", ".join(f"{k}={v}" for k, v in sorted(merged.items()))
