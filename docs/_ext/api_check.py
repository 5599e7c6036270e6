"""Sphinx build check: ``docs/api.md`` lists every name of ``relax_optax.__all__``.

The results pages' tables and the example pages' code excerpts are written into the
Markdown files themselves by ``docs/generate.py`` (from ``benchmarks/results/*.json`` and
the example scripts), so that they read the same in a checkout as on the site; this
extension only fails the build when a public name goes undocumented.
"""

from __future__ import annotations

import re
from pathlib import Path

from sphinx.errors import ExtensionError


def check_public_api(app) -> None:
  """Fails the build unless docs/api.md's autosummary lists exactly ``relax_optax.__all__``."""
  import relax_optax

  text = (Path(app.srcdir) / "api.md").read_text()
  listed = set(re.findall(r"^   ([A-Za-z_]\w*)\s*$", text, flags=re.M))
  listed |= set(re.findall(r"^\.\. py:data:: ([A-Za-z_]\w*)\s*$", text, flags=re.M))
  missing = sorted(set(relax_optax.__all__) - listed)
  extra = sorted(listed - set(relax_optax.__all__))
  if missing or extra:
    raise ExtensionError(
      f"docs/api.md must list every public name of relax_optax.__all__ in an autosummary: "
      f"missing {missing}, not public {extra}"
    )


def setup(app):
  app.connect("builder-inited", check_public_api)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
