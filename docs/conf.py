"""Sphinx configuration: MyST Markdown pages, autodoc/autosummary API, sphinx-book-theme.

Build (from the repository root)::

  pip install -e ".[docs]"
  sphinx-build -W -n -b html docs docs/_build/html      # the site
  sphinx-build -W -n -b doctest docs docs/_build/doctest  # run the pages' code blocks
"""

import inspect
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))  # relax_optax, examples, benchmarks from this checkout
sys.path.insert(0, str(DOCS / "_ext"))

import relax_optax  # noqa: E402

project = "relax_optax"
author = "the relax_optax authors"
copyright = "the relax_optax authors, Apache-2.0"
release = relax_optax.__version__
version = release

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.doctest",
  "sphinx.ext.intersphinx",
  "sphinx.ext.mathjax",
  "sphinx.ext.napoleon",
  "sphinx.ext.viewcode",
  "api_check",  # docs/_ext: the build fails if docs/api.md misses a public name
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# MyST: ``` {testcode} blocks run under the doctest builder; $...$ maths; heading anchors
# so that [text](#some-heading) and [text](page.md#some-heading) resolve.
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# API reference: autosummary writes one page per public name (docs/api/_autosummary).
autosummary_generate = True
templates_path = ["_templates"]  # a class page documents its own members, not tuple's
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
# Keep the ecosystem's type names as written (the core uses `from __future__ import
# annotations`), instead of expanding e.g. ArrayLike into a ten-member Union.
autodoc_type_aliases = {
  name: name
  for name in [
    "jax.typing.ArrayLike",
    "jax.Array",
    "optax.ScalarOrSchedule",
    "optax.Schedule",
    "optax.Updates",
    "optax.GradientTransformation",
    "optax.GradientTransformationExtraArgs",
  ]
}
# The core's own aliases link to their entries on the API page.
CORE_ALIASES = ["Mode", "Formula", "BiasCorrection", "SpeedLimit", "AxisName"]
autodoc_type_aliases |= {name: f"relax_optax.{name}" for name in CORE_ALIASES}
# Signatures one parameter per line, as Optax's reference shows them.
maximum_signature_line_length = 68
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Names that appear in type hints and that no inventory resolves.
nitpick_ignore_regex = [
  (r"py:.*", r"(optax|chex|jax|jaxtyping|numpy|np)\..*"),
  (r"py:.*", r"(ArrayLike|DTypeLike|Array|PyTree|Params|Updates|ScalarOrSchedule)"),
  (r"py:.*", r"(Any|Callable|NamedTuple|Sequence|Mapping|collections\.abc\..*|typing\..*)"),
  (r"py:class", r"relax_optax\._\w+\..*"),
  (r"py:class", r"TypeAliasForwardRef"),  # Sphinx's stand-in where an alias meets a default
]

# The doctest builder runs ``{testcode}``/``{doctest}`` blocks of the pages and the
# ``>>>`` examples of the API docstrings (pytest --doctest-modules runs those too).
doctest_global_setup = """
import jax
import jax.numpy as jnp
import optax
import relax_optax
"""

# Links to JAX, Optax and Flax. No network at build time (CI has none): the inventories are
# committed under docs/_intersphinx/, written by docs/_intersphinx/make_inventories.py for
# the names these docs use; the links point at the projects' published pages.
intersphinx_mapping = {
  "jax": ("https://docs.jax.dev/en/latest/", str(DOCS / "_intersphinx" / "jax.inv")),
  "optax": ("https://optax.readthedocs.io/en/latest/", str(DOCS / "_intersphinx" / "optax.inv")),
  "flax": ("https://flax.readthedocs.io/en/latest/", str(DOCS / "_intersphinx" / "flax.inv")),
}

html_theme = "sphinx_book_theme"
html_favicon = "_static/favicon.svg"
html_title = f"relax_optax {release}"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_js_files = ["figures.js"]
html_theme_options = {
  "navbar_persistent": [],  # one search box (the sidebar's), not a second in a top bar
  "show_toc_level": 2,
  "navigation_with_keys": False,
  "use_download_button": False,
  "use_fullscreen_button": False,
  "home_page_in_toc": True,
}
html_show_sourcelink = False


# A function's signature as its source writes the types. Sphinx evaluates the annotations
# and prints what they expand to (``jax.typing.DTypeLike`` as a union of five types, an
# alias in a union with ``None`` as ``TypeAliasForwardRef('optax.ScalarOrSchedule')``), or,
# where one name does not evaluate (``optax.Params``), keeps every annotation of that
# function unqualified. The source's text (``from __future__ import annotations``: every
# annotation is a string) reads as the code does; the core's aliases are qualified so that
# they link to the API page.
_CORE_ALIAS = re.compile(r"(?<![\w.])(" + "|".join(CORE_ALIASES) + r")\b")


class _AsWritten:
  """An annotation that ``inspect`` prints as its text."""

  def __init__(self, text: str):
    self.text = _CORE_ALIAS.sub(r"relax_optax.\1", text)

  def __repr__(self) -> str:
    return self.text


def _written(annotation):
  if annotation is inspect.Signature.empty:
    return annotation
  if isinstance(annotation, str):
    return _AsWritten(annotation)
  return _AsWritten(inspect.formatannotation(annotation))


def signature_as_written(app, what, name, obj, options, signature, return_annotation):
  if what != "function" or not getattr(obj, "__module__", "").startswith("relax_optax"):
    return None
  sig = inspect.signature(obj)
  params = [p.replace(annotation=_written(p.annotation)) for p in sig.parameters.values()]
  returns = _written(sig.return_annotation)
  text = str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))
  return text, None if returns is inspect.Signature.empty else repr(returns)


def setup(app):
  app.connect("autodoc-process-signature", signature_as_written)
