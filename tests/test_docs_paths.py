"""Every repository path that README.md and docs/*.md name exists.

A path counts when it is written in backticks (inline or in a fenced block) or
as the target of a markdown link. Backticked paths are relative to the
repository root; link targets are relative to the page that holds them, and a
link's `#anchor` must be a heading of the page it points at. Text that is not
a path of this repository is left alone: URLs and `gs://` paths, absolute
paths, globs, placeholders (`<version>`, `{{$}}`), and paths under folders a
run makes (`demo/out`, `OUT/`, `assets.extra/`)."""

import glob
import os
import re
from typing import List, Set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What a repository path may start with: the layout's folders and the files at
# the root. Written out rather than read from disk, so a page that names a
# folder that was renamed away is still checked (and fails).
ROOT_FOLDERS = {"core", "bags", "slides", "data", "beam", "monitoring", "encoders", "trainer",
                "serving", "components", "reports", "pipeline", "kubeflow", "cli", "histopipe",
                "bench", "docs", "tests", "requirements", ".ci"}
ROOT_FILES = {"setup.py", "pyproject.toml", "Makefile", "README.md", "pytest.ini"}

_FENCED_BLOCK = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Inside a code span or block, a path is one of the words; `=` and brackets
# separate a flag or a call from the path it takes (`--setup_file=./setup.py`).
_WORD_SEPARATORS = re.compile(r"[\s=,;()\[\]\"']+")
# A word with any of these is a placeholder, a glob or a list of choices, not a path.
_NOT_A_PATH_MARKS = ("<", ">", "{", "}", "*", "…", "...", "|", "?")


def _as_repo_path(word: str) -> str:
  """The repository path `word` names, relative to the root, or "" if it names none."""
  word = word.split("::")[0].rstrip(".,:;")  # core/configs.py::PipelineConfig
  if word.startswith("./"):
    word = word[2:]
  if (not word or "://" in word or word.startswith(("/", "~", "$", "-", ".."))
      or any(mark in word for mark in _NOT_A_PATH_MARKS)):
    return ""
  first = word.split("/")[0]
  if word in ROOT_FILES or ("/" in word and first in ROOT_FOLDERS):
    return word
  # A Python file under a folder that is not (or is no longer) at the root: a
  # repository path gone wrong, not an output of a run.
  if "/" in word and word.endswith(".py"):
    return word
  return ""


def heading_anchors(markdown: str) -> Set[str]:
  """The anchors GitHub gives the page's headings: lower case, punctuation
  dropped, spaces as hyphens, `-1`, `-2` on repeats."""
  anchors: Set[str] = set()
  for line in _FENCED_BLOCK.sub("", markdown).splitlines():
    if not line.startswith("#"):
      continue
    slug = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
    anchor, repeat = slug, 0
    while anchor in anchors:
      repeat += 1
      anchor = f"{slug}-{repeat}"
    anchors.add(anchor)
  return anchors


def missing_paths(markdown: str, page_folder: str, repo: str = REPO) -> List[str]:
  """The paths (relative to the repository root) and link anchors that
  `markdown`, a page in `page_folder`, names but the repository lacks."""
  missing: List[str] = []

  def check(path: str):
    if path.endswith("/"):
      exists = os.path.isdir(os.path.join(repo, path))
    else:
      exists = os.path.exists(os.path.join(repo, path))
    if not exists and path not in missing:
      missing.append(path)

  blocks = _FENCED_BLOCK.findall(markdown)
  prose = _FENCED_BLOCK.sub("", markdown)
  for text in blocks + _CODE_SPAN.findall(prose):
    for word in _WORD_SEPARATORS.split(text):
      path = _as_repo_path(word)
      if path:
        check(path)

  for target in _LINK.findall(_CODE_SPAN.sub("", prose)):
    if "://" in target or target.startswith("mailto:"):
      continue
    target_path, _, anchor = target.partition("#")
    if target_path:
      page = os.path.normpath(os.path.join(page_folder, target_path))
      path = os.path.relpath(page, repo).replace(os.sep, "/")
      if os.path.isdir(page):
        path += "/"
      check(path)
    else:
      page = None  # an anchor on the same page
    if anchor and (page is None or (page.endswith(".md") and os.path.isfile(page))):
      linked = markdown if page is None else open(page, encoding="utf-8").read()
      if anchor not in heading_anchors(linked):
        where = os.path.relpath(page, repo).replace(os.sep, "/") if page else "this page"
        missing.append(f"{where}#{anchor}")
  return missing


def documentation_pages() -> List[str]:
  return [os.path.join(REPO, "README.md")] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))


def test_every_path_the_docs_name_exists():
  problems = []
  for page in documentation_pages():
    with open(page, encoding="utf-8") as f:
      markdown = f.read()
    for path in missing_paths(markdown, os.path.dirname(page)):
      problems.append(f"{os.path.relpath(page, REPO)}: {path}")
  assert not problems, "named but not in the repository:\n" + "\n".join(problems)


def test_a_missing_path_is_reported_and_outputs_are_not(tmp_path):
  for path, text in {"slides/tiling.py": "", "kubeflow/Dockerfile": "", "setup.py": "",
                     "docs/rerunning.md": "# Re-running\n\n## Code fingerprints\n"}.items():
    (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / path).write_text(text)
  page = """
The tiling is `slides/tiling.py` and the image `kubeflow/Dockerfile`; the old
`histopipe/components/tiling.py` is gone, and so is `slide/tiling.py`.
See [the cache](rerunning.md#code-fingerprints), [nothing](no-such-page.md) and
[a heading](rerunning.md#no-such-heading).

```sh
histopipe run --data demo/data --out demo/out   # then read demo/out/run.log
python bench/no_such_bench.py --beam-arg=--setup_file=./setup.py
```

Outputs and placeholders: `OUT/bags-*.tfrecord`, `train_images/<image_id>.tiff`,
`gs://bucket/slides/a.py`, `/tmp/kfp-root/x.py`, `assets.extra/histopipe_contract.json`,
`serving_model/<version>/`, `core`, `core/configs.py::PipelineConfig` (the one wrong path here).
"""
  missing = missing_paths(page, str(tmp_path / "docs"), repo=str(tmp_path))
  assert sorted(missing) == sorted([
      "histopipe/components/tiling.py", "slide/tiling.py", "bench/no_such_bench.py",
      "core/configs.py", "docs/no-such-page.md", "docs/rerunning.md#no-such-heading"])


def test_the_readme_links_every_docs_page():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    linked = set(_LINK.findall(f.read()))
  pages = {os.path.relpath(p, REPO).replace(os.sep, "/") for p in documentation_pages()[1:]}
  assert pages, "no docs/*.md pages"
  assert not pages - linked, f"docs pages the README does not link: {sorted(pages - linked)}"


def test_the_readme_opens_with_the_two_commands():
  with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
    opening = "".join(f.readlines()[:40])
  assert "make demo" in opening and "make test" in opening
