"""What the docs claim, compared with the code: serving errors (statuses, codes, the body),
the paths, Python names and `medflow` commands they give, the benchmark figures they quote
and the defaults they state."""

from __future__ import annotations

import ast
import json
import re
from http import HTTPStatus
from itertools import pairwise

import typer
import yaml

from medflow.cli import app
from medflow.config import load_params
from medflow.serving.errors import ServeError
from medflow.serving.inputs import check_upload
from tests.helpers.docs import (
    ROOT,
    USER_DOCS,
    json_examples,
    medflow_commands,
    module_names,
    repo_paths,
    section,
    serving_error_table,
    status_claims,
)

SERVING = ROOT / "src" / "medflow" / "serving"
# Codes the service gives that no client reads as a refusal of its request, so the table of
# docs/serving.md leaves them out: a 400 to a client that has already gone, and the 500 of a
# bug in the service (docs/serving.md mentions it below the table).
NOT_IN_TABLE = {"disconnected", "internal_error"}


def _statuses(node: ast.expr) -> set[int]:
    """The statuses an expression such as `HTTPStatus.NOT_FOUND` or `A if c else B` gives."""
    if isinstance(node, ast.IfExp):
        return _statuses(node.body) | _statuses(node.orelse)
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "HTTPStatus"
    ):
        return {HTTPStatus[node.attr].value}
    return set()


def code_error_table() -> dict[str, set[int]]:
    """error code -> every HTTP status medflow.serving gives it, read from the source: each
    status expression directly followed by a string, as in `ServeError(HTTPStatus.X, "code",
    ...)` and the (exception, status, code) rows of errors.py."""
    table: dict[str, set[int]] = {}
    for path in sorted(SERVING.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            items = getattr(node, "args", None) if isinstance(node, ast.Call) else None
            items = node.elts if isinstance(node, ast.Tuple) else items
            found = False
            for first, second in pairwise(items or []):
                statuses = _statuses(first)
                if statuses and isinstance(second, ast.Constant) and isinstance(second.value, str):
                    table.setdefault(second.value, set()).update(statuses)
                    found = True
            is_serve_error = (
                isinstance(node, ast.Call) and getattr(node.func, "id", "") == "ServeError"
            )
            if is_serve_error and not found:
                # forwarding (status, code) it was given is fine; computing them is not readable
                assert all(isinstance(a, ast.Name) for a in node.args[:2]), (
                    f"{path.name}:{node.lineno}: a ServeError whose status or code this test"
                    " cannot read; write them as HTTPStatus.X and a string literal"
                )
    return table


CODE = code_error_table()
TABLE = serving_error_table()


def test_the_code_table_is_read() -> None:
    """The reader finds the codes of inputs.py, guard.py, service.py and errors.py' rows."""
    assert CODE["not_dicom"] == {415}
    assert CODE["no_pixel_data"] == {422}  # a row of errors.py's _DICOM_ERRORS
    assert CODE["unauthorized"] == {401}  # guard.py
    assert CODE["batch_size"] == {400, 413}  # service.py, a conditional status
    assert len(CODE) >= 20, CODE


def test_serving_table_matches_the_code() -> None:
    """docs/serving.md's table: each code with a status the service gives it, and every code
    the service gives in it (but the two it leaves out on purpose)."""
    wrong = {c: (s, CODE.get(c)) for c, s in TABLE.items() if s not in CODE.get(c, set())}
    assert not wrong, f"docs/serving.md: code -> (documented, given by the code): {wrong}"
    missing = sorted(set(CODE) - set(TABLE) - NOT_IN_TABLE)
    assert not missing, f"the service gives {missing}; docs/serving.md's table lacks them"
    assert not NOT_IN_TABLE & set(TABLE)


def test_every_status_the_docs_give_a_code_is_the_codes() -> None:
    """Wherever README.md, deploy/README.md or docs/*.md put an error code after an HTTP
    status, the service gives that code that status."""
    claims = {
        doc.relative_to(ROOT).as_posix(): status_claims(doc.read_text(), set(CODE))
        for doc in USER_DOCS
    }
    wrong = {
        (doc, code): sorted(statuses - CODE[code])
        for doc, found in claims.items()
        for code, statuses in found.items()
        if statuses - CODE[code]
    }
    assert not wrong, f"(doc, code): statuses the code never gives it: {wrong}"
    # the summaries a client reads first name the common refusals
    for doc in ("README.md", "deploy/README.md"):
        assert {"not_dicom", "no_pixel_data", "empty_upload"} <= set(claims[doc]), claims[doc]


def test_documented_error_body_is_the_services() -> None:
    """The error bodies deploy/README.md and README.md show are what the service answers to a
    text file: the same keys and code, and the detail with '...' for what varies."""
    serve = load_params(ROOT / "params.yaml")
    try:
        check_upload(b"this is not an image\n", serve.package.serve, serve.preprocess)
    except ServeError as exc:
        response = exc.response()
    real = json.loads(response.body)
    assert response.status_code == 415

    examples = [
        example
        for doc in (ROOT / "deploy" / "README.md", ROOT / "README.md")
        for example in json_examples(doc.read_text())
        if "error" in json.dumps(example)
    ]
    assert examples, "deploy/README.md shows no error body"
    for example in examples:
        assert isinstance(example, dict) and set(example) == set(real), (example, real)
        assert example["error"] == real["error"], (example, real)
        pattern = ".*".join(map(re.escape, example["detail"].split("...")))
        assert re.fullmatch(pattern, real["detail"]), (example["detail"], real["detail"])
    # and the shape the pages give in a line: `{"error": <code>, "detail": <...>}`
    shapes = [
        (doc.name, shape)
        for doc in USER_DOCS
        for shape in re.findall(r'`(\[?\{"error"[^`]*)`', " ".join(doc.read_text().split()))
    ]
    assert shapes, "no page gives the shape of an error body"
    for name, shape in shapes:
        assert shape.startswith("{"), (name, shape)
        assert set(re.findall(r'"(\w+)":', shape)) == set(real), (name, shape, real)


# ---------------------------------------------------------------------------- names and commands

SRC = ROOT / "src"
# dotted names that are not Python: Prefect event names and labels, a file name
NOT_MODULES = {"medflow.data.changed", "medflow.monitor.drift", "medflow.root", "medflow.bento"}
PAGES = (*USER_DOCS, ROOT / "benchmarks" / "README.md")


def _defined(tree: ast.Module | ast.ClassDef, name: str) -> ast.AST | None:
    """The top-level definition, assignment or import of `name` in a module or class body."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if node.name == name:
                return node
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(getattr(t, "id", None) == name for t in targets):
                return node
        elif isinstance(node, ast.Import | ast.ImportFrom):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return node
    return None


def _resolves(dotted: str) -> bool:
    """Whether a module (src/ or the repository root, as flows/) defines the dotted name,
    read from the source: the longest prefix that is a module, then its attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        for base in (SRC, ROOT):
            folder = base.joinpath(*parts[:i])
            path = folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")
            if not path.is_file():
                continue
            scope: ast.AST | None = ast.parse(path.read_text())
            for name in parts[i:]:
                if not isinstance(scope, ast.Module | ast.ClassDef):
                    return False
                scope = _defined(scope, name)
                if scope is None:
                    return False
            return True
    return False


def test_named_paths_exist() -> None:
    missing = {
        (page.relative_to(ROOT).as_posix(), path)
        for page in PAGES
        for path in repo_paths(page.read_text())
        if not (ROOT / path).exists()
    }
    assert not missing, f"(page, path) that does not exist: {sorted(missing)}"


def test_named_modules_and_attributes_exist() -> None:
    missing = {
        (page.relative_to(ROOT).as_posix(), name)
        for page in PAGES
        for name in module_names(page.read_text())
        if name not in NOT_MODULES and not _resolves(name)
    }
    assert not missing, f"(page, name) that the code does not define: {sorted(missing)}"


def test_markdown_links_resolve() -> None:
    broken = {
        (page.relative_to(ROOT).as_posix(), target)
        for page in PAGES
        for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", page.read_text())
        if "://" not in target and not (page.parent / target).exists()
    }
    assert not broken, f"(page, link) to nothing: {sorted(broken)}"


def test_medflow_commands_and_options_exist() -> None:
    """Every `medflow ...` the docs show names a command, and its --options are that
    command's."""
    root = typer.main.get_command(app)
    wrong = set()
    for page in PAGES:
        for words in medflow_commands(page.read_text()):
            cmd, path = root, ["medflow"]
            while words and hasattr(cmd, "commands") and words[0] in cmd.commands:
                cmd = cmd.commands[words[0]]
                path.append(words.pop(0))
            opts = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
            if hasattr(cmd, "commands") and words and not words[0].startswith(("-", "<")):
                wrong.add((page.name, " ".join(path), words[0]))
            for word in words:
                option = word.split("=")[0]
                if option.startswith("-") and option not in opts:
                    wrong.add((page.name, " ".join(path), option))
    assert not wrong, f"(page, command, unknown word): {sorted(wrong)}"


# ---------------------------------------------------------------------------- benchmark figures

RATIO = r"(?<![\w.])(\d+\.\d+x)"


def test_quoted_benchmark_ratios_are_benchmarks_readmes() -> None:
    """benchmarks/README.md holds the latest figures; README.md's Benchmarks paragraph and the
    Speed sections of docs/*.md quote them: every ratio they give is one of its figures."""
    latest = set(re.findall(RATIO, (ROOT / "benchmarks" / "README.md").read_text()))
    readme = (ROOT / "README.md").read_text()
    quotes = {"README.md": re.search(r"\nBenchmarks \(.*?(?:\n\n|$)", readme, re.DOTALL)}
    assert quotes["README.md"], "README.md has no Benchmarks paragraph"
    quoted = {"README.md": quotes["README.md"].group(0)}
    for page in sorted((ROOT / "docs").glob("*.md")):
        try:
            quoted[page.name] = section(page.read_text(), "## Speed")
        except KeyError:
            continue
    assert "ingest.md" in quoted, "docs/ingest.md has no Speed section"
    stale = {
        (name, ratio)
        for name, text in quoted.items()
        for ratio in re.findall(RATIO, text)
        if ratio not in latest
    }
    assert not stale, f"(page, ratio) that benchmarks/README.md does not give: {sorted(stale)}"


# ---------------------------------------------------------------------------- defaults


def _percent(text: str) -> float:
    return float(text) / 100


def _on(text: str) -> bool:
    return {"on": True, "off": False, "true": True, "false": False, "default": True}[text]


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z_]\w*", text)


def _none(text: str) -> list:
    assert text == "none", text
    return []


# (page, pattern with one group per value, [(params.yaml key, value of the group)]): the
# defaults the docs state, in their words (whitespace collapsed); params.yaml holds them.
BURNED_IN = "deid.burned_in_text"
DRIFT = "validate.drift"
DEFAULTS = [
    (
        "docs/monitoring.md",
        r"`package.serve.prediction_log_url` \(default `([^`]+)`\)",
        [("package.serve.prediction_log_url", str)],
    ),
    (
        "docs/monitoring.md",
        r"`package.serve.prediction_log_retention_days` \(default (\d+)\)",
        [("package.serve.prediction_log_retention_days", int)],
    ),
    (
        "docs/pacs.md",
        r"\(`pacs.timeout_seconds: ([\d.]+)`\)",
        [("pacs.timeout_seconds", float)],
    ),
    (
        "docs/pacs.md",
        r"\(`pacs.retries: (\d+)`, the first wait `pacs.backoff_seconds: ([\d.]+)`",
        [("pacs.retries", int), ("pacs.backoff_seconds", float)],
    ),
    ("docs/pacs.md", r"`pacs.workers` \(`(\d+)`\) requests", [("pacs.workers", int)]),
    (
        "docs/pacs.md",
        r"listening on `pacs.receive.host` \(`([\d.]+)`\) and `pacs.receive.port` \(`(\d+)`\)"
        r" with the AE title `pacs.receive.ae_title` \(`(\w+)`\)",
        [("pacs.receive.host", str), ("pacs.receive.port", int), ("pacs.receive.ae_title", str)],
    ),
    (
        "docs/pacs.md",
        r"`pacs.infer.lookback_days` \(`(\d+)`\)",
        [("pacs.infer.lookback_days", int)],
    ),
    ("docs/pacs.md", r"on `pacs.infer.cron` \(`([^`]+)`", [("pacs.infer.cron", str)]),
    (
        "docs/ingest.md",
        r"`ingest.max_quarantine_fraction` of the files are quarantined \(default (\d+) %\)",
        [("ingest.max_quarantine_fraction", _percent)],
    ),
    (
        "docs/ingest.md",
        r"unless `deid.safe_private_tags` lists them \([^)]*; default: (\w+)\)",
        [("deid.safe_private_tags", _none)],
    ),
    *(
        ("docs/ingest.md", rf"\| `{key}` \|[^|]*\| (on|off) \|", [(f"deid.{key}", _on)])
        for key in (
            "retain_modified_dates",
            "retain_patient_characteristics",
            "retain_device_identity",
            "clean_descriptors",
        )
    ),
    (
        "docs/ingest.md",
        r"Modality is in `modalities` \(default ([A-Z, ]+)\), and, with `secondary_capture`"
        r" \((default)\)",
        [(f"{BURNED_IN}.modalities", _words), (f"{BURNED_IN}.secondary_capture", _on)],
    ),
    (
        "docs/ingest.md",
        r"up to `max_frames` \(default (\d+)\) per image",
        [(f"{BURNED_IN}.max_frames", int)],
    ),
    ("docs/ingest.md", r"`min_chars` \((\d+)\) letters", [(f"{BURNED_IN}.min_chars", int)]),
    (
        "docs/ingest.md",
        r"`min_confidence` \(default (\d+); `min_confidence_bright`, (\d+),",
        [(f"{BURNED_IN}.min_confidence", float), (f"{BURNED_IN}.min_confidence_bright", float)],
    ),
    ("docs/ingest.md", r"\*\*action\*\* `(\w+)` \(default\)", [(f"{BURNED_IN}.action", str)]),
    ("docs/ingest.md", r"by `margin` pixels \((\d+)\)", [(f"{BURNED_IN}.margin", int)]),
    (
        "docs/validation.md",
        r"Defaults: label_balance ([\d.]+) (\w+), manufacturer_mix ([\d.]+) (\w+),"
        r" intensity ([\d.]+) (\w+), lesion_area ([\d.]+) (\w+)\.",
        [
            (f"{DRIFT}.{check}.{field}", convert)
            for check in ("label_balance", "manufacturer_mix", "intensity", "lesion_area")
            for field, convert in (("max_change", float), ("action", str))
        ],
    ),
    (
        "docs/evaluation.md",
        r"\(`evaluate.ci_level`, default (\d+)%\)",
        [("evaluate.ci_level", _percent)],
    ),
    (
        "docs/evaluation.md",
        r"- `(\w+)` \(default\): the \*\*highest\*\* threshold",
        [("evaluate.threshold_policy", str)],
    ),
    (
        "docs/evaluation.md",
        r"at least `evaluate.target_sensitivity` \(([\d.]+)\)",
        [("evaluate.target_sensitivity", float)],
    ),
    (
        "docs/evaluation.md",
        r"to slice the test split by \(default ((?:`\w+`,? ?)+)\)",
        [("evaluate.subgroups", _words)],
    ),
    (
        "docs/evaluation.md",
        r"evaluate.min_subgroup_n` \(default (\d+)\)",
        [("evaluate.min_subgroup_n", int)],
    ),
    (
        "docs/serving.md",
        r"The default, (\d+), matches deploy/k8s",
        [("package.serve.workers", int)],
    ),
    (
        "docs/serving.md",
        r"`api_token_env`: the environment variable holding the bearer token \(default `(\w+)`\)",
        [("package.serve.api_token_env", str)],
    ),
    (
        "docs/serving.md",
        r"`trace_predictions` \(default (\w+)\)",
        [("package.serve.trace_predictions", _on)],
    ),
    ("docs/orchestration.md", r"`cron: \"([^\"]*)\"`", [("orchestration.cron", str)]),
    (
        "docs/orchestration.md",
        r"`watch_interval_seconds: (\d+)`",
        [("orchestration.watch_interval_seconds", int)],
    ),
    (
        "docs/orchestration.md",
        r"`collision_strategy` `(\w+)` \(default",
        [("orchestration.collision_strategy", str)],
    ),
]


def _param(params: dict, key: str) -> object:
    for part in key.split("."):
        params = params[part]
    return params


def test_documented_defaults_are_params_yaml() -> None:
    """Each default a doc states is the value params.yaml holds (its one source)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    wrong, unread = [], []
    for page, pattern, keys in DEFAULTS:
        text = " ".join((ROOT / page).read_text().split())
        found = re.findall(pattern, text)
        if len(found) != 1:
            unread.append((page, pattern, len(found)))
            continue
        values = found[0] if isinstance(found[0], tuple) else (found[0],)
        for value, (key, convert) in zip(values, keys, strict=True):
            if convert(value) != _param(params, key):
                wrong.append((page, key, value, _param(params, key)))
    assert not unread, (
        f"(page, pattern, matches): the doc no longer says it; update DEFAULTS: {unread}"
    )
    assert not wrong, f"(page, param, the doc's default, params.yaml's): {wrong}"


def test_deploy_readme_states_the_manifests() -> None:
    """deploy/README.md's summary of deploy/k8s: replicas, probes, ports and autoscaling."""
    text = " ".join((ROOT / "deploy" / "README.md").read_text().split())
    said = re.search(
        r"a Deployment \((\d+) replicas, rolling updates with no unavailable pod, `(/\w+)`"
        r" readiness and start-up probes, `(/\w+)` liveness.*?a ClusterIP Service \(port (\d+)"
        r" to the container's (\d+)\) and a HorizontalPodAutoscaler \((\d+) to (\d+) replicas"
        r" at (\d+) % CPU\)",
        text,
    )
    assert said, "deploy/README.md no longer summarises deploy/k8s in the words this test reads"
    k8s = {
        name: yaml.safe_load((ROOT / "deploy" / "k8s" / f"{name}.yaml").read_text())
        for name in ("deployment", "service", "hpa")
    }
    spec = k8s["deployment"]["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (service_port,) = k8s["service"]["spec"]["ports"]
    hpa = k8s["hpa"]["spec"]
    (metric,) = hpa["metrics"]
    actual = (
        str(spec["replicas"]),
        container["readinessProbe"]["httpGet"]["path"],
        container["livenessProbe"]["httpGet"]["path"],
        str(service_port["port"]),
        str(ports.get(service_port["targetPort"], service_port["targetPort"])),
        str(hpa["minReplicas"]),
        str(hpa["maxReplicas"]),
        str(metric["resource"]["target"]["averageUtilization"]),
    )
    assert said.groups() == actual
    assert container["startupProbe"]["httpGet"]["path"] == said.group(2)
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert metric["resource"]["name"] == "cpu"


def test_exit_codes_the_docs_give_an_error_are_the_clis() -> None:
    """A sentence that names an error (`GateFailed`, `ValidationFailed`, ...) and an exit code
    gives the code the CLI exits with for that error."""
    import medflow.errors
    from medflow.cli.common import exit_code
    from medflow.config import ConfigError

    errors = {
        name: kind
        for name, kind in {**vars(medflow.errors), "ConfigError": ConfigError}.items()
        if isinstance(kind, type) and issubclass(kind, Exception)
    }
    claims, wrong = 0, []
    for page in USER_DOCS:
        text = " ".join(page.read_text().split())
        for sentence in re.split(r"(?<=[.;])\s", text):
            named = [n for n in re.findall(r"`(\w+)`", sentence) if n in errors]
            codes = re.findall(r"\bexits?(?: with)?(?: code)? (\d)\b", sentence)
            for name in named if codes else ():
                claims += 1
                if {int(c) for c in codes} != {exit_code(errors[name]("x"))}:
                    wrong.append((page.name, name, codes, int(exit_code(errors[name]("x")))))
    assert claims >= 2, "the docs no longer say which exit code an error gives"
    assert not wrong, f"(page, error, the doc's exit code, the CLI's): {wrong}"
