"""dvc.yaml cannot drift from the code: each stage's deps and params are checked by reading source (AST).

Code deps. A stage's closure is its script (``python stages/X.py`` in ``cmd``) plus every ``discovla``
module it imports, directly or through other modules, anywhere in a file (imports inside functions too):
``import discovla.a.b``, ``from discovla.a import b`` (b a submodule or a name), ``from discovla import a``
and relative imports. Importing ``discovla.a.b`` also runs the ``__init__.py`` of ``discovla`` and
``discovla.a``: a package ``__init__.py`` is in the closure only when it holds code besides a docstring,
imports and literal assignments (``__all__``, ``__version__``); its imports are followed either way. A file
a module reads by a path fixed in code, ``Path(__file__).parent / "a" / "b"`` with string constants, is in
the closure too (a directory: every file under it). A dep covers a path when it is that path or a directory
above it. Fails when (a) a closure path is not covered; (b) a code dep (under ``discovla/`` or ``stages/``)
does not exist (``${...}`` and data deps, i.e. under ``data/``, ``models/`` or another stage's outs, are not
checked); (c) a code dep covers no closure path (stale).

Params. Params values are the results of ``load_params``/``load_params_or_exit`` and the function parameters
that receive a params value at a call: the call is followed into the called function (defined in the
script or the closure; resolved by name, the calling module first). An alias is a name assigned
``<params>.<section>`` (also in a tuple assignment). ``<params>.<section>.<key>`` and ``<alias>.<key>`` read
a key; ``<params>.<section>`` or an alias used any other way (passed on, returned) reads the whole section.
Only the section and key names of ``discovla.config.Params`` count; names are flow-insensitive within a
function. Fails when a read is not covered by the stage's ``params:`` (a section covers its keys) and when a
listed section or key is never read.
"""

from __future__ import annotations

import ast
import copy
import re
import shlex
import shutil
from pathlib import Path

import yaml

from discovla.config import Params
from discovla.provenance import file_imports, module_path

REPO = Path(__file__).resolve().parents[1]
PKG = "discovla"
LOADERS = {"load_params", "load_params_or_exit"}
SECTIONS = {s: set(f.annotation.model_fields) for s, f in Params.model_fields.items()}
HERE = ("Path(__file__).parent / ", "Path(__file__).resolve().parent / ")


def _inert(node: ast.stmt) -> bool:
    """An import, a docstring or a literal assignment (``__all__``, ``__version__``): no behaviour."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        return True
    if isinstance(node, ast.Expr):
        return isinstance(node.value, ast.Constant)
    if not isinstance(node, ast.Assign | ast.AnnAssign) or node.value is None:
        return False
    try:
        ast.literal_eval(node.value)
    except (ValueError, TypeError, SyntaxError):
        return False
    return True


def _fixed_paths(path: Path, tree: ast.Module) -> set[Path]:
    """Files named by ``Path(__file__).parent / "a" / "b"`` (whole chains of string constants only)."""
    divs = [n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div)]
    inner = {id(n.left) for n in divs}
    out: set[Path] = set()
    for text in (ast.unparse(n) for n in divs if id(n) not in inner):
        names = next((text.removeprefix(h).split(" / ") for h in HERE if text.startswith(h)), [])
        if names and all(re.fullmatch(r"'[\w.-]+'", n) for n in names):
            target = path.parent.joinpath(*(n.strip("'") for n in names))
            out.update([target] if target.is_file() else (f for f in target.rglob("*") if f.is_file()))
    return out


def closure(script: Path, root: Path) -> tuple[set[str], dict[Path, ast.Module]]:
    """Repo-relative paths of a script's code closure, and every Python file parsed on the way."""
    pkg = root / PKG
    trees = {script: ast.parse(script.read_text())}
    todo = list(file_imports(script, pkg))  # the project's one import walker (discovla/provenance.py)
    while todo:
        path = module_path(todo.pop(), pkg)
        if path is not None and path not in trees:
            trees[path] = ast.parse(path.read_text())
            todo.extend(file_imports(path, pkg))
    files = {p for p, t in trees.items() if p.name != "__init__.py" or not all(map(_inert, t.body))}
    files.update(f for p, t in trees.items() for f in _fixed_paths(p, t))
    return {f.relative_to(root).as_posix() for f in files if "__pycache__" not in f.parts}, trees


def _is_params(node: ast.AST, pvs: set[str]) -> bool:
    if isinstance(node, ast.Call):
        return getattr(node.func, "id", getattr(node.func, "attr", None)) in LOADERS
    return isinstance(node, ast.Name) and node.id in pvs


def params_read(script: Path, trees: dict[Path, ast.Module]) -> set[str]:
    """``section`` and ``section.key`` strings a stage reads (see the module docstring)."""
    defs: dict[str, list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef]]] = {}
    for path, tree in trees.items():
        for n in ast.walk(tree):
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                defs.setdefault(n.name, []).append((path, n))
    reads: set[str] = set()
    todo: list[tuple[Path, ast.AST, frozenset[str]]] = [(script, trees[script], frozenset())]
    seen: set[tuple[int, frozenset[str]]] = set()
    while todo:
        path, unit, given = todo.pop()
        if (id(unit), given) in seen:
            continue
        seen.add((id(unit), given))
        nodes = list(ast.walk(unit))
        parent = {id(c): n for n in nodes for c in ast.iter_child_nodes(n)}
        named: list[tuple[str, ast.expr]] = []  # (name, value) of every assignment, tuples unpacked
        for a in (n for n in nodes if isinstance(n, ast.Assign)):
            for t in a.targets:
                unpack = isinstance(t, ast.Tuple) and isinstance(a.value, ast.Tuple)
                pairs = zip(t.elts, a.value.elts, strict=False) if unpack else [(t, a.value)]  # type: ignore
                named += [(t.id, v) for t, v in pairs if isinstance(t, ast.Name)]
        pvs = set(given) | {t for t, v in named if _is_params(v, set())}
        pvs |= {t for t, v in named if _is_params(v, pvs)}
        aliased = {
            id(v): v.attr for t, v in named if isinstance(v, ast.Attribute) and _is_params(v.value, pvs)
        }
        alias = {t: aliased[id(v)] for t, v in named if aliased.get(id(v)) in SECTIONS}
        for n in nodes:
            up, sec = parent.get(id(n)), None
            if isinstance(n, ast.Attribute) and _is_params(n.value, pvs) and id(n) not in aliased:
                sec = n.attr  # an alias's reads are counted where the alias is used
                if sec == "model_dump":  # the whole params, e.g. a diff against the defaults
                    reads.update(Params.model_fields)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
                sec = alias.get(n.id)
            if sec in SECTIONS and isinstance(up, ast.Attribute) and up.value is n:
                if up.attr in SECTIONS[sec]:
                    reads.add(f"{sec}.{up.attr}")
                elif up.attr == "model_dump":  # the whole section, e.g. PretrainConfig(**p.model_dump())
                    reads.add(sec)
            elif sec in SECTIONS:
                reads.add(sec)
            if isinstance(n, ast.Call):
                found = defs.get(getattr(n.func, "id", getattr(n.func, "attr", "")), [])
                for cpath, fn in [d for d in found if d[0] == path] or found:
                    args = [a.arg for a in fn.args.posonlyargs + fn.args.args]
                    if args[:1] in (["self"], ["cls"]) and isinstance(n.func, ast.Attribute):
                        args = args[1:]
                    names = {args[i] for i, a in enumerate(n.args[: len(args)]) if _is_params(a, pvs)}
                    names |= {k.arg for k in n.keywords if k.arg and _is_params(k.value, pvs)}
                    if names:
                        todo.append((cpath, fn, frozenset(names)))
    return reads


def check_stage(name: str, stage: dict, outs: set[str], root: Path = REPO) -> list[str]:
    """Every problem of one stage, one line each (empty: deps and params match the code)."""
    found = re.search(r"\bpython3?\s+(stages/\S+\.py)", stage.get("cmd", ""))
    if found is None:
        return [f"stage {name}: cmd does not run a stages/*.py script"]
    code, trees = closure(root / found.group(1), root)
    deps = [str(d).rstrip("/") for d in stage.get("deps", [])]
    own = {
        str(next(iter(o))) if isinstance(o, dict) else str(o)
        for k in ("outs", "metrics", "plots")
        for o in stage.get(k, [])
    }
    problems = [
        f"stage {name}: cmd names {a}, which is neither a dep nor an out of the stage"
        for a in shlex.split(stage["cmd"])[2:]
        if not a.startswith(("-", ".work/"))
        and not any(a == o or o.startswith(a + "/") for o in own)
        and not any(a == d or a.startswith(d + "/") for d in deps)
    ]
    problems += [
        f"stage {name}: deps miss {p} (imported or read by its code)"
        for p in sorted(code)
        if not any(p == d or p.startswith(d + "/") for d in deps)
    ]
    for d in deps:
        if "${" in d or d in outs or d.startswith(("data/", "models/")):
            continue
        if not (root / d).exists():
            problems.append(f"stage {name}: dep {d} does not exist")
        elif d.startswith((f"{PKG}/", "stages/")) and not any(p == d or p.startswith(d + "/") for p in code):
            problems.append(f"stage {name}: dep {d} is not imported or read by its code (stale)")
    reads = params_read(root / found.group(1), trees)
    listed = [e for e in stage.get("params", []) if isinstance(e, str)]
    listed += [k for e in stage.get("params", []) if isinstance(e, dict) for keys in e.values() for k in keys]
    problems += [
        f"stage {name}: reads params {r} but dvc.yaml does not list it"
        for r in sorted(reads)
        if r not in listed and r.split(".")[0] not in listed
    ]
    problems += [
        f"stage {name}: lists params {e} but never reads it"
        for e in listed
        if not (e in reads or e.split(".")[0] in reads or e in {r.split(".")[0] for r in reads})
    ]
    return problems


def check_pipeline(dvc: dict, root: Path = REPO) -> list[str]:
    def paths(stage: dict, key: str) -> set[str]:
        return {str(next(iter(o))) if isinstance(o, dict) else str(o) for o in stage.get(key, [])}

    stages = dvc["stages"]
    outs = {p for s in stages.values() for k in ("outs", "metrics", "plots") for p in paths(s, k)}
    return [p for name, stage in stages.items() for p in check_stage(name, stage, outs, root)]


def _dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_dvc_yaml_deps_and_params_match_the_code() -> None:
    problems = check_pipeline(_dvc())
    assert not problems, "dvc.yaml drifted from the code:\n" + "\n".join(problems)


def test_checker_reports_drift() -> None:
    """A mutated dvc.yaml: a dropped module and section, a stale and a missing code dep, an unread section."""
    dvc = copy.deepcopy(_dvc())
    train = dvc["stages"]["train"]
    train["deps"] = [d for d in train["deps"] if d != "discovla/losses.py"]
    train["deps"] += ["discovla/serve.py", "discovla/nope.py", "data/not-yet", "models/not-yet"]
    train["params"] = [p for p in train["params"] if p != "fusion"] + ["shapes"]
    train["outs"] = [o for o in train["outs"] if o != "models/discovla"]
    problems = check_pipeline(dvc)
    assert all(p.startswith("stage train: ") for p in problems), problems
    assert {
        "stage train: deps miss discovla/losses.py (imported or read by its code)",
        "stage train: dep discovla/serve.py is not imported or read by its code (stale)",
        "stage train: dep discovla/nope.py does not exist",
        "stage train: reads params fusion.alpha but dvc.yaml does not list it",
        "stage train: reads params fusion.enabled but dvc.yaml does not list it",
        "stage train: lists params shapes but never reads it",
        "stage train: cmd names models/discovla, which is neither a dep nor an out of the stage",
    } <= set(problems)
    assert not [p for p in problems if "not-yet" in p or "params model" in p or "params train" in p]
    evaluate = dvc["stages"]["evaluate"]
    evaluate["deps"].remove("discovla/model")  # a directory dep covers every module under it
    evaluate["params"] = ["model.backbone", "model.pretrained", "evaluate", "lora"]
    assert {
        "stage evaluate: deps miss discovla/model/lora.py (imported or read by its code)",
        "stage evaluate: reads params model.context_length but dvc.yaml does not list it",
        "stage evaluate: lists params lora but never reads it",
    } <= set(check_pipeline(dvc))


def test_checker_knows_the_engine_section() -> None:
    """``engine`` must be listed by the stages that read it (frames, captions, index), and only by them."""
    dvc = copy.deepcopy(_dvc())
    dvc["stages"]["frames"]["params"] = ["data", "frames"]
    dvc["stages"]["shapes"]["params"] += ["engine"]
    assert {
        "stage frames: reads params engine but dvc.yaml does not list it",
        "stage shapes: lists params engine but never reads it",
    } == set(check_pipeline(dvc))


def test_checker_follows_new_imports_and_params(tmp_path: Path) -> None:
    """A script edited to import one more module (inside a function) and read one more key is caught."""
    for sub in ("stages", PKG):
        shutil.copytree(REPO / sub, tmp_path / sub, ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp_path / "stages" / "frames.py"
    script.write_text(
        script.read_text()
        + "\n\ndef _extra(q):\n    from discovla import augment  # noqa: F401\n    return q.train.seed\n"
        + "\n\ndef _more():\n    _extra(load_params_or_exit())\n"
    )
    stage = _dvc()["stages"]["frames"]
    assert check_stage("frames", stage, set(), REPO) == []
    assert check_stage("frames", stage, set(), tmp_path) == [
        "stage frames: deps miss discovla/augment.py (imported or read by its code)",
        "stage frames: reads params train.seed but dvc.yaml does not list it",
    ]


def test_lazy_exports_are_not_used_inside_the_project() -> None:
    """``discovla.Retriever`` is loaded lazily (``importlib`` in the package's ``__getattr__``), which the
    import walker does not follow: so the project's own code must import it from its module."""
    offenders = []
    for path in [*(REPO / PKG).rglob("*.py"), *(REPO / "stages").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            lazy = isinstance(node, ast.ImportFrom) and node.module == PKG and not node.level
            if lazy and any(a.name == "Retriever" for a in node.names):
                offenders.append(str(path.relative_to(REPO)))
            elif isinstance(node, ast.Attribute) and node.attr == "Retriever":
                if isinstance(node.value, ast.Name) and node.value.id == PKG:
                    offenders.append(str(path.relative_to(REPO)))
    assert not offenders, offenders
