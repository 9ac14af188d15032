"""Audit the installed packages with pip-audit: fail on any known vulnerability.

pip-audit asks PyPI's JSON API (or OSV) for advisories. Where neither answers, as on machines
that reach only a package mirror, it skips every package; that is said loudly and does not
fail the run, because nothing was learned either way. A package it could audit and found
vulnerable always fails it.
"""

# A CI step: what it prints is its output.
# ruff: noqa: T201

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PIP_AUDIT = Path(sys.executable).parent / "pip-audit"


def main() -> int:
    run = subprocess.run([str(PIP_AUDIT), "--local", "--progress-spinner", "off",
                          "--format", "json"], capture_output=True, text=True, check=False)
    try:
        dependencies = json.loads(run.stdout)["dependencies"]
    except (json.JSONDecodeError, KeyError):
        print(f"pip-audit gave no report (exit {run.returncode}):\n{run.stderr[-2000:]}")
        return 1
    vulnerable = [dep for dep in dependencies if dep.get("vulns")]
    audited = [dep for dep in dependencies if "skip_reason" not in dep]
    for dep in vulnerable:
        ids = ", ".join(vuln["id"] for vuln in dep["vulns"])
        print(f"VULNERABLE {dep['name']} {dep['version']}: {ids}")
    if vulnerable:
        return 1
    if not audited:
        print(f"pip-audit: none of the {len(dependencies)} packages could be audited: no "
              "advisory service (PyPI's JSON API, OSV) answers from this machine. Nothing "
              "known, nothing checked.")
        return 0
    print(f"pip-audit: {len(audited)} of {len(dependencies)} packages audited, no known "
          "vulnerability.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
