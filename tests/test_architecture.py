"""The import rules of docs/architecture.md, read from the source with ast.

Every import counts, at module level or inside a function (a lazy import is
still a dependency). Each failure names the module, the line and the rule.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "reconciler"

# Modules of the command line; every other module is the library.
COMMAND_LINE = ("reconciler.__main__", "reconciler.cli", "reconciler.commands", "reconciler.emulator.command")
SHARED_COMMAND_MODULES = {"reconciler.commands.options", "reconciler.commands.output"}
SENDS = {"reconciler.client", "reconciler.transport", "reconciler.signing", "reconciler.runenv"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def within(name: str, *prefixes: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def imports(module: str) -> Iterator[tuple[int, str]]:
    """(line, imported module) of every import in ``module``; ``from X import y``
    counts as X.y when that is a module of the package, else as X."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join([*base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                yield node.lineno, submodule if submodule in MODULES else source


def own_imports(module: str) -> Iterator[tuple[int, str]]:
    """The imports of snapctl's own modules (``reconciler`` itself: the version)."""
    for line, name in imports(module):
        if within(name, "reconciler") and name != module:
            yield line, name


def violations(modules, allowed, rule: str) -> list[str]:
    found = []
    for module in modules:
        for line, name in own_imports(module):
            if not allowed(name):
                found.append(f"{MODULES[module].relative_to(ROOT)}:{line}: imports {name}: {rule}")
    return found


def test_the_rules_cover_every_module():
    assert {
        "reconciler.manifest.loader",
        "reconciler.plan.planner",
        "reconciler.render.documents",
        "reconciler.commands.plan",
    } <= set(MODULES), sorted(MODULES)


def test_leaf_modules_import_nothing_of_snapctl():
    leaves = ["api", "regions", "signing", "errors", "ratelimit", "transport"]
    problems = violations(
        [f"reconciler.{leaf}" for leaf in leaves],
        lambda name: False,
        "api, regions, signing, errors, ratelimit and transport import nothing else from snapctl",
    )
    problems += violations(
        [name for name in MODULES if within(name, "reconciler.yamlsource")],
        lambda name: within(name, "reconciler.yamlsource"),
        "yamlsource imports nothing else from snapctl",
    )
    problems += layer_violations("reconciler.yamlsource", ("reader", "fast"))
    assert not problems, "\n".join(problems)


#: The manifest package's modules, each of which imports only those before it.
MANIFEST_LAYERS = ("diagnostics", "schema", "resolve", "environment", "loader")


def layer_violations(package: str, layers: tuple[str, ...]) -> list[str]:
    """The imports in ``package`` of a module that comes later in ``layers`` (or of the package
    itself, whose ``__init__`` re-exports them all); each module is one idea built on those before."""
    order = {f"{package}.{name}": i for i, name in enumerate(layers)}
    assert set(order) | {package} == {name for name in MODULES if within(name, package)}, sorted(MODULES)
    problems = []
    for module, rank in order.items():
        problems += violations(
            [module],
            lambda name, rank=rank: not within(name, package) or order.get(name, len(layers)) < rank,
            f"{package} builds one way: {', '.join(layers)}, each importing only those before it",
        )
    return problems


def test_manifests_know_no_state():
    allowed = {"reconciler.api", "reconciler.regions", "reconciler.errors", "reconciler.yamlsource"}
    problems = violations(
        [name for name in MODULES if within(name, "reconciler.manifest")],
        lambda name: name in allowed or within(name, "reconciler.manifest"),
        "manifests know no state: reconciler/manifest imports only api, regions, errors and yamlsource",
    )
    problems += layer_violations("reconciler.manifest", MANIFEST_LAYERS)
    assert not problems, "\n".join(problems)


def test_the_state_knows_no_api():
    state = [name for name in MODULES if within(name, "reconciler.state")]
    problems = violations(
        state,
        lambda name: name in {"reconciler", "reconciler.errors"} or within(name, "reconciler.state"),
        "the state knows no API: reconciler/state imports only errors, the version and itself",
    )
    for module in state:
        for line, name in imports(module):
            if within(name, "httpx", "httpcore"):
                problems.append(f"{MODULES[module].relative_to(ROOT)}:{line}: imports {name}: the state sends nothing")
    assert not problems, "\n".join(problems)


def test_a_database_url_is_only_read_where_it_is_masked():
    """state/pgurl.py, where a URL's password is told apart and masked, stands on errors alone
    and only parses: of psycopg it may use libpq's parser (psycopg.conninfo), never a connection."""
    module = "reconciler.state.pgurl"
    problems = violations(
        [module],
        lambda name: name == "reconciler.errors",
        "the database URL is read and masked apart: reconciler/state/pgurl.py imports only errors",
    )
    for line, name in imports(module):
        if within(name, "psycopg") and name != "psycopg.conninfo":
            problems.append(f"{MODULES[module].relative_to(ROOT)}:{line}: imports {name}: pgurl only parses")
    assert not problems, "\n".join(problems)


#: The plan package's modules, each of which imports only those before it.
PLAN_LAYERS = ("model", "diff", "fingerprints", "planner", "checks")


def test_a_plan_never_touches_the_network():
    plan = [name for name in MODULES if within(name, "reconciler.plan")]
    problems = violations(
        plan,
        lambda name: (
            name in {"reconciler.api", "reconciler.errors"} or within(name, "reconciler.state", "reconciler.plan")
        ),
        "a plan never touches the network: reconciler/plan imports only api, errors and state",
    )
    for module in plan:
        for line, name in imports(module):
            if within(name, "httpx", "httpcore", "socket", "ssl", "urllib.request", *SENDS):
                problems.append(
                    f"{MODULES[module].relative_to(ROOT)}:{line}: imports {name}: a plan never touches the network"
                )
    problems += layer_violations("reconciler.plan", PLAN_LAYERS)
    assert not problems, "\n".join(problems)


#: The render package's modules, each of which imports only those before it.
RENDER_LAYERS = ("fields", "plans", "results", "documents")


def annotation_only_lines(module: str) -> set[int]:
    """The lines of the imports under ``if TYPE_CHECKING:`` in ``module`` (never run)."""
    lines = set()
    for node in ast.walk(parsed(MODULES[module])):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            lines |= {inner.lineno for inner in ast.walk(node) if isinstance(inner, (ast.Import, ast.ImportFrom))}
    return lines


def test_rendering_loads_no_apply_machinery():
    render = [name for name in MODULES if within(name, "reconciler.render")]
    allowed = {"reconciler.api", "reconciler.regions", "reconciler.errors", "reconciler.restarts", "reconciler.style"}
    problems = violations(
        render,
        lambda name: name in allowed or within(name, "reconciler.plan", "reconciler.render", "reconciler.apply"),
        "renderers render values: reconciler/render imports only api, regions, errors, restarts, style and plan "
        "(and apply for annotations)",
    )
    for module in render:
        for line, name in own_imports(module):
            if within(name, "reconciler.apply") and line not in annotation_only_lines(module):
                problems.append(
                    f"{MODULES[module].relative_to(ROOT)}:{line}: imports {name}: rendering loads no apply "
                    "machinery (only under TYPE_CHECKING)"
                )
    problems += layer_violations("reconciler.render", RENDER_LAYERS)
    assert not problems, "\n".join(problems)


def test_the_library_prints_nothing():
    """No library module imports click or rich, calls print() or names sys.stdout or
    sys.stderr; logs.py alone may attach its opt-in handler to stderr."""
    problems = []
    for module, path in MODULES.items():
        if within(module, *COMMAND_LINE) or within(module, "reconciler.emulator"):
            continue
        tree = parsed(path)
        where = path.relative_to(ROOT)
        for line, name in imports(module):
            if within(name, "click", "rich"):
                problems.append(f"{where}:{line}: imports {name}: the library prints nothing")
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                problems.append(f"{where}:{node.lineno}: print(): the library prints nothing")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in {"stdout", "stderr"}
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
                and module != "reconciler.logs"
            ):
                problems.append(f"{where}:{node.lineno}: sys.{node.attr}: the library prints nothing")
    assert not problems, "\n".join(problems)


def test_the_emulator_stands_alone():
    emulator = [name for name in MODULES if within(name, "reconciler.emulator")]

    def allowed_for(module):
        def allowed(name):
            if name in {"reconciler.api", "reconciler.signing"} or within(name, "reconciler.emulator"):
                return True
            return module == "reconciler.emulator.command" and name == "reconciler.commands.options"

        return allowed

    problems = []
    for module in emulator:
        problems += violations(
            [module],
            allowed_for(module),
            "the emulator shares only api and signing (its command also the shared option types)",
        )
    outside = [name for name in MODULES if not within(name, "reconciler.emulator")]
    problems += violations(
        outside,
        lambda name: not within(name, "reconciler.emulator"),
        "the emulator stands alone: nothing outside reconciler/emulator imports it",
    )
    assert not problems, "\n".join(problems)


def test_command_modules_never_import_each_other():
    """A command module may import commands.options and commands.output; options may
    import output; output imports no other command module."""
    commands = [name for name in MODULES if within(name, "reconciler.commands") and name != "reconciler.commands"]
    uses = {"reconciler.commands.options": {"reconciler.commands.output"}, "reconciler.commands.output": set()}
    problems = []
    for module in commands:
        may_use = uses.get(module, SHARED_COMMAND_MODULES)
        problems += violations(
            [module],
            lambda name, may_use=may_use: not within(name, "reconciler.commands") or name in may_use,
            "command modules use commands.options and commands.output, never each other",
        )
    assert not problems, "\n".join(problems)


def test_the_library_never_imports_the_command_line():
    library = [name for name in MODULES if not within(name, *COMMAND_LINE)]
    problems = violations(
        library,
        lambda name: not within(name, "reconciler.cli", "reconciler.commands"),
        "imports run one way: the library never imports cli or commands",
    )
    assert not problems, "\n".join(problems)


def test_imports_have_no_cycle():
    graph = {module: {name for _, name in own_imports(module) if name in MODULES} for module in MODULES}
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for name in sorted(graph[module]):
            if state.get(name) == 1:
                return [*stack[stack.index(name) :], name]
            if name not in state and (cycle := visit(name)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(MODULES):
        if module not in state and (cycle := visit(module)):
            raise AssertionError("an import cycle (layers must flow one way): " + " -> ".join(cycle))
