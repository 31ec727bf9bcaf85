"""Every third-party package hicur_monai imports is declared in setup.cfg (install_requires or its extra).

The imports are read with :mod:`ast` (lazy imports inside functions included); each top-level
module maps to its distribution through :func:`importlib.metadata.packages_distributions`. A
module of a part that needs an extra (``EXTRA_OF``) may import what that extra declares; every
other module may import only what ``install_requires`` declares (with the extras it names,
e.g. ``monai[pillow]`` declares pillow).
"""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "hicur_monai"

#: parts of the package (path prefixes, relative to the repository) -> the extra they need
EXTRA_OF = {
    "hicur_monai/survival/": "survival",
    "hicur_monai/vlm/": "vlm",
    "hicur_monai/llm/": "vlm",
    "hicur_monai/networks/vlm.py": "vlm",
    "hicur_monai/evaluation/": "web",
}
#: modules that do not run in the toolkit's environment, with why
RUN_ELSEWHERE = {
    "hicur_monai/label/app_main.py": "the MONAI Label app: runs in its own environment "
                                     "(make label; monailabel pins numpy<2)",
    "hicur_monai/label/guard.py": "the MONAI Label app's route guards: "
                                  "imported by app_main.py in the label environment",
}
#: imports a user brings only for an opt-in feature, with why they are not declared
OPTIONAL = {
    "deepspeed": "imported only when a DeepSpeed config is given; it is built against the user's CUDA toolchain",
}


def _norm(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement(line: str) -> tuple[str, set[str]]:
    """``(name, extras)`` of a requirement line such as ``monai[fire,ignite]>=1.4``."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", line)
    assert m, f"cannot read requirement {line!r}"
    return _norm(m[1]), {_norm(e) for e in (m[2] or "").split(",") if e.strip()}


def _with_extras(lines: list[str]) -> set[str]:
    """Distribution names the requirement lines declare, including what their named extras pull in."""
    names = set()
    for line in lines:
        name, extras = _requirement(line)
        names.add(name)
        try:
            deps = requires(name) or []
        except PackageNotFoundError:
            continue
        for dep in deps:
            m = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", dep)
            if m and _norm(m[1]) in extras:
                names.add(_requirement(dep)[0])
    return names


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """``install_requires`` and each extra, as normalised distribution names."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(REPO / "setup.cfg")

    def lines(text: str) -> list[str]:
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("%(")]

    core = _with_extras(lines(cfg["options"]["install_requires"]))
    extras = {name: _with_extras(lines(text)) for name, text in cfg["options.extras_require"].items()}
    return core, extras


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports in ``path`` that are neither stdlib nor hicur_monai."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("hicur_monai", "__future__")}


def undeclared_imports() -> list[str]:
    """One line per import whose distribution is not declared where the importing module may use it."""
    core, extras = declared()
    dists = packages_distributions()
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel in RUN_ELSEWHERE:
            continue
        extra = next((e for prefix, e in EXTRA_OF.items() if rel.startswith(prefix)), None)
        allowed = core | (extras.get(extra, set()) if extra else set())
        for module in sorted(third_party_imports(path) - OPTIONAL.keys()):
            candidates = {_norm(d) for d in dists.get(module, [])}
            if not candidates:
                problems.append(f"{rel}: imports {module!r}, which no installed distribution provides")
            elif not candidates & allowed:
                where = f"install_requires or the [{extra}] extra" if extra else "install_requires"
                problems.append(f"{rel}: imports {module!r} ({', '.join(sorted(candidates))}), not in {where}")
    return problems


def test_every_import_is_declared():
    problems = undeclared_imports()
    assert not problems, "undeclared dependencies (fix setup.cfg):\n" + "\n".join(problems)


def test_the_check_sees_an_undeclared_import(tmp_path, monkeypatch):
    """A core module importing an extra-only package is reported (the check can fail)."""
    fake = tmp_path / "hicur_monai"
    fake.mkdir()
    (fake / "core.py").write_text("def f():\n    import lifelines\n    from os import path\n")
    (tmp_path / "setup.cfg").write_text((REPO / "setup.cfg").read_text())
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    problems = undeclared_imports()
    assert problems and "'lifelines'" in problems[0] and "install_requires" in problems[0]


def test_extras_of_a_requirement_count_as_declared():
    """``monai[pillow]`` declares pillow (read from monai's own metadata)."""
    assert "pillow" in _with_extras(["monai[pillow]>=1.4"])
    assert "pillow" not in _with_extras(["monai>=1.4"])
