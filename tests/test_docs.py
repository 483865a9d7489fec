"""The documentation: the API reference builds with ``mkdocs build --strict`` and covers every
public module and name, and every recipe of docs/extending.md runs and checks its answer."""

import html
import importlib
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

import diffeqgen as dg

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXTENDING = DOCS / "extending.md"
# Skip only without mkdocs itself; a missing plugin (mkdocstrings[python]) fails the build loudly.
HAVE_MKDOCS = importlib.util.find_spec("mkdocs") is not None
needs_mkdocs = pytest.mark.skipif(
    not HAVE_MKDOCS, reason="mkdocs is not importable (pip install -e '.[test]' installs it)"
)


def _mkdocs_build(config: pathlib.Path, site: pathlib.Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict"]
        + ["--config-file", str(config), "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )  # no wall-clock limit: the suite's pytest-timeout catches a hang


def _api_pages() -> dict[str, str]:
    """Module name -> page path (relative to docs/) of the API section of mkdocs.yml's nav."""
    text = (ROOT / "mkdocs.yml").read_text()
    return dict(re.findall(r"^\s*- diffeqgen\.(\w+): (api/\w+\.md)\s*$", text, flags=re.M))


def test_every_public_module_has_an_api_page():
    pages = _api_pages()
    assert sorted(pages) == sorted(dg.__all__), "nav API section must list exactly dg.__all__"
    for module, page in pages.items():
        assert (DOCS / page).read_text().lstrip().startswith(f"::: diffeqgen.{module}"), page


@needs_mkdocs
def test_api_reference_builds_strict_and_documents_all_exports(tmp_path):
    """``mkdocs build --strict`` passes, and every name in each public module's ``__all__`` has
    its own anchor on that module's page (one build for all modules: it takes seconds)."""
    site = tmp_path / "site"
    result = _mkdocs_build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    problems = []
    for module, page in sorted(_api_pages().items()):
        text = (site / page).with_suffix("").joinpath("index.html").read_text()
        ids = set(re.findall(r'id="([^"]+)"', text))
        exported = importlib.import_module(f"diffeqgen.{module}").__all__
        missing = [name for name in exported if f"diffeqgen.{module}.{name}" not in ids]
        if missing:
            problems.append(f"{page} lacks {missing}")
        # Sphinx roles (:func:`x`) are not Markdown: they render as literal text, unchecked.
        if re.search(r":(?:func|class|meth|attr|mod|obj):", html.unescape(text)):
            problems.append(f"{page} holds Sphinx roles; write [`name`][] (scoped) instead")
    assert not problems, "\n".join(problems)


@needs_mkdocs
def test_strict_build_fails_on_a_broken_reference(tmp_path):
    """The guard works: an unresolved cross-reference fails ``mkdocs build --strict``."""
    docs = tmp_path / "docs"
    (docs / "api").mkdir(parents=True)
    (docs / "index.md").write_text("See [`nothing`][diffeqgen.paths.no_such_name].\n")
    (docs / "api" / "paths.md").write_text((DOCS / "api" / "paths.md").read_text())
    config = (ROOT / "mkdocs.yml").read_text()
    config = re.sub(r"(?ms)^nav:.*?^\n", "nav:\n  - index.md\n  - api/paths.md\n\n", config)
    config = config.replace("paths: [.]", f"paths: [{ROOT.as_posix()!r}]")
    (tmp_path / "mkdocs.yml").write_text(config)
    result = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "diffeqgen.paths.no_such_name" in result.stderr, result.stderr


# ------------------------------------------------------------------ recipes of the guide


def _recipes() -> list[tuple[str, str]]:
    """(id, source) of every ```python block of docs/extending.md, named by its section."""
    recipes, section, counts = [], "intro", {}
    block = None
    for line in EXTENDING.read_text().splitlines(keepends=True):
        if block is None and line.startswith("## "):
            section = re.sub(r"\W+", "-", line[3:].strip().lower()).strip("-")
        elif block is None and line.rstrip() == "```python":
            block = []
        elif block is not None and line.rstrip() == "```":
            counts[section] = counts.get(section, 0) + 1
            recipes.append((f"{section}-{counts[section]}", "".join(block)))
            block = None
        elif block is not None:
            block.append(line)
    assert block is None, "unterminated ```python block in docs/extending.md"
    return recipes


RECIPES = _recipes()


def test_guide_has_recipes():
    names = {name.rsplit("-", 1)[0] for name, _ in RECIPES}
    assert {"custom-loss", "a-custom-butcher-tableau", "an-unnamed-diffrax-solver"} <= names
    assert "a-custom-sde" in names


@pytest.mark.parametrize("name, source", RECIPES, ids=[name for name, _ in RECIPES])
def test_recipe_runs(name, source):
    # A recipe must check its answer, not only run.
    assert re.search(r"^\s*assert ", source, flags=re.M), f"recipe {name} asserts nothing"
    code = compile(source, f"{EXTENDING}:{name}", "exec")
    exec(code, {"__name__": f"__recipe_{name.replace('-', '_')}__"})
