"""Checks the built HTML: every local link, image and anchor must exist.

Usage: ``python docs/check_links.py docs/_build/html``. Sphinx's ``-W -n`` already fails
on unresolved cross-references; this also catches plain Markdown links and images to
files or ``#anchors`` that are not there. External (http, mailto) links are not checked:
CI has no network.
"""

from __future__ import annotations

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit


class _Page(HTMLParser):
  def __init__(self) -> None:
    super().__init__()
    self.links: list[str] = []
    self.ids: set[str] = set()

  def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
    a = dict(attrs)
    if a.get("id"):
      self.ids.add(a["id"])
    if tag == "a" and a.get("name"):
      self.ids.add(a["name"])
    for key in ("href", "src"):
      if a.get(key) and tag in ("a", "img", "script", "link"):
        self.links.append(a[key])


def check(root: Path) -> list[str]:
  pages: dict[Path, _Page] = {}
  for path in root.rglob("*.html"):
    if "_static" in path.relative_to(root).parts:
      continue  # the theme's template fragments
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    pages[path.resolve()] = page
  errors = []
  for path, page in pages.items():
    for link in page.links:
      parts = urlsplit(link)
      if parts.scheme or link.startswith("//"):
        continue  # http(s), mailto, data: external, not checked
      target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
      if target.is_dir():
        target = target / "index.html"
      if not target.exists():
        errors.append(f"{path.relative_to(root.resolve())}: missing {link}")
      elif parts.fragment and target in pages and parts.fragment not in pages[target].ids:
        errors.append(f"{path.relative_to(root.resolve())}: missing anchor {link}")
  return errors


def main() -> int:
  root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
  errors = check(root)
  for e in errors:
    print(e)
  n = sum("_static" not in p.relative_to(root).parts for p in root.rglob("*.html"))
  print(f"{n} pages, {len(errors)} broken local links" if errors else f"{n} pages: links OK")
  return 1 if errors else 0


if __name__ == "__main__":
  sys.exit(main())
