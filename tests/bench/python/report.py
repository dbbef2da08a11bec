"""Merges the Python numbers into scripts/bench's results file and prints their table.

    python report.py RESULTS_JSON PART_JSON [PART_JSON ...]

Each PART_JSON is a file holding one JSON object (bench.py's output, the procrastinate
peer's line). Their keys are laid over RESULTS_JSON (created when missing), with the
ratio checks against numbers of the same run added, and the result is written back. The
table has the layout of the Rust bench's (tests/bench/src/results.rs): each headline
number beside its target, then the other Python numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

# (key, kind, bound): "at_most"/"at_least" compare with a constant; "times" with
# bound[1] x the number named bound[0] of the same run.
HEADLINE: List[Tuple[str, Optional[str], Any]] = [
    ("ffi_noop_call_ns_python", "at_most", 3000.0),
    ("ffi_noop_call_ns_python_ping", None, None),
    ("steps_per_s_python_sqlite", "times", ("steps_per_s_sqlite", 0.5)),
    ("python_sqlite_over_rust_sqlite", "at_least", 0.5),
    ("steps_per_s_python_postgres", "times", ("peer_procrastinate_jobs_per_s", 10.0)),
    ("python_postgres_over_procrastinate", "at_least", 10.0),
    ("peer_procrastinate_jobs_per_s", None, None),
]
# Ratio checks: name -> (numerator, denominator).
RATIOS = {
    "python_sqlite_over_rust_sqlite": ("steps_per_s_python_sqlite", "steps_per_s_sqlite"),
    "python_postgres_over_procrastinate": ("steps_per_s_python_postgres", "peer_procrastinate_jobs_per_s"),
}


def rounded(v: Any) -> Any:
    """Numbers as the Rust bench stores them: whole above 100, else 3 decimals."""
    if isinstance(v, float):
        return float(round(v)) if abs(v) >= 100 else round(v, 3)
    return v


def fmt(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3f}"


def number(results: Dict[str, Any], key: str) -> Optional[float]:
    v = results.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def table(results: Dict[str, Any], own: List[str]) -> str:
    lines = [f"{'metric':<40} {'value':>14}  {'target':<12} status", "-" * 76]
    for key, kind, bound in HEADLINE:
        v = number(results, key)
        target, status = "", ""
        if kind == "at_most":
            target = f"<= {fmt(bound)}"
            status = "not measured" if v is None else ("ok" if v <= bound else "MISSED")
        elif kind == "at_least":
            target = f">= {fmt(bound)}"
            status = "not measured" if v is None else ("ok" if v >= bound else "MISSED")
        elif kind == "times":
            other, factor = bound
            base = number(results, other)
            if base is None:
                target, status = f">= {fmt(factor)}x {other}", "no same-run number"
            else:
                target = f">= {fmt(factor * base)}"
                status = "not measured" if v is None else ("ok" if v >= factor * base else "MISSED")
        lines.append(f"{key:<40} {('-' if v is None else fmt(v)):>14}  {target:<12} {status}".rstrip())
    lines.append("-" * 76)
    shown = {k for k, _, _ in HEADLINE}
    for key in own:
        if key not in shown:
            lines.append(f"{key:<40} {fmt(results[key]):>14}")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: report.py RESULTS_JSON PART_JSON [PART_JSON ...]")
    path = Path(sys.argv[1])
    results: Dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    own: List[str] = []
    for part in sys.argv[2:]:
        for key, value in json.loads(Path(part).read_text()).items():
            results[key] = rounded(value)
            if key not in own:
                own.append(key)
    for name, (num, den) in RATIOS.items():
        a, b = number(results, num), number(results, den)
        if a is not None and b:
            results[name] = rounded(a / b)
            own.append(name)
        else:
            # A ratio left from an earlier run must not pass for this run's.
            results.pop(name, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(results.items())), indent=2) + "\n")
    print(table(results, sorted(own)))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
