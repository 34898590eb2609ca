"""Print pip constraints that pin every declared dependency to its floor (``>=X`` -> ``==X``).

CI installs the project with these (``.ci/run``, "minimum versions") and runs the fast tests,
so the floors in pyproject.toml stay true: a floor that no longer works fails CI.
Dependencies with no ``>=`` floor are left free. Run: python .ci/min_constraints.py [extras...]
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
project = project["project"]
deps = list(project["dependencies"])
for extra in sys.argv[1:]:
    deps += project["optional-dependencies"][extra]
for dep in deps:
    match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][0-9A-Za-z.]*)(,.*)?", dep.strip())
    if match:
        name = match.group(1).split("[")[0]
        print(f"{name}=={match.group(2)}")
