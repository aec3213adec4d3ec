"""The `unhans` command line: `unhans init`, `unhans audit`, `unhans <stage>`, `unhans status`, ...

Heavy modules (torch, the stages) are imported inside the commands, so `unhans --help` answers at once;
the stage commands are read from the stage modules' source (their `@stage` name, inputs and docstring)
without importing them.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from unhans._version import __version__
from unhans.pipeline.core.errors import UserError

if TYPE_CHECKING:
    from unhans.pipeline.core.runner import Runner

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Audit image datasets for Clever Hans shortcuts (LRP, invariant distances, SpRAy, un-Hansing).",
    pretty_exceptions_enable=False,
)

ConfigOpt = Annotated[str, typer.Option("--config", "-c", help="config name in configs/ or a YAML path")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="override a config key: section.key=value")]
RunDirOpt = Annotated[str | None, typer.Option("--run-dir", help="store root (path or fsspec URL)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="rerun even if the stage is up to date")]
SchedulerOpt = Annotated[
    str | None,
    typer.Option("--scheduler", help="an existing Dask scheduler, e.g. tcp://host:8786 (sets compute.scheduler)"),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", min=0, help="Dask LocalCluster worker processes, one per GPU (sets compute.workers)"),
]


def _runner(
    config: str,
    overrides: list[str] | None,
    run_dir: str | None,
    scheduler: str | None = None,
    workers: int | None = None,
) -> Runner:
    from unhans.stages import load_config, runner

    extra = [f"compute.scheduler={json.dumps(scheduler)}"] if scheduler else []
    extra += [f"compute.workers={workers}"] if workers is not None else []
    cfg = load_config(config, (overrides or []) + extra)
    if run_dir:
        cfg.run_dir = run_dir
    return runner(cfg)


def _guard(fn):
    """Run fn; a UserError becomes one line on stderr and exit code 2, with no traceback; Ctrl-C says how
    to go on (every stage resumes where it stopped) and exits with 130."""
    try:
        return fn()
    except UserError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted; rerun to resume", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"unhans {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its loader reports which CPU build it picked


@app.command()
def init(
    path: Annotated[str, typer.Argument(help="a folder with one sub-folder of images per class")],
    out: Annotated[str | None, typer.Option("--out", "-o", help="the config to write (default: <name>.yaml)")] = None,
    name: Annotated[str | None, typer.Option("--name", help="the run's name (default: the folder's)")] = None,
    arch: Annotated[
        str | None, typer.Option("--arch", help="your model's architecture (e.g. resnet50, python:pkg.mod:fn)")
    ] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="your model's weights (a state dict)")] = None,
    image_size: Annotated[int | None, typer.Option("--image-size", min=8, help="the model's input side")] = None,
    fit: Annotated[
        str | None, typer.Option("--fit", help="pad, squash or crop (default: chosen from the data)")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace the config file if it exists")] = False,
) -> None:
    """Look at a folder of class sub-folders and write a commented config for its audit."""

    def go() -> None:
        from unhans.pipeline.init import plan, write

        if fit not in (None, "pad", "squash", "crop"):
            raise UserError(f"--fit {fit!r}: choose pad, squash or crop")
        p = plan(path, name, arch, weights, image_size, fit)
        target = write(p, out, force)
        for line in p.summary:
            typer.echo(line)
        typer.echo(f"wrote {target} (its comments say why each choice was made)")
        typer.echo(f"next: unhans audit -c {target}    then open reports/{p.name}/index.html")

    _guard(go)


@app.command()
def audit(
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    force: ForceOpt = False,
    until: Annotated[str | None, typer.Option(help="stop after this stage")] = None,
    scheduler: SchedulerOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Run the whole chain; stages whose inputs and settings are unchanged are skipped."""

    def go() -> None:
        r = _runner(config, set_, run_dir, scheduler, workers)
        if until is not None and until not in r.stages:
            raise UserError(f"--until {until!r}: choose one of {', '.join(r.stages)}")
        r.run_all(until=until, force=force)
        _print_status(r)
        typer.echo(f"store: {r.store.url}")
        report = r.cfg.report_path / "index.html"
        if report.exists():
            typer.echo(f"report: {report}")
        if r.store.has_table("manifest"):
            typer.echo(f"manifest: {r.store.url}/tables/manifest.csv")

    _guard(go)


@app.command()
def status(
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    settings: Annotated[bool, typer.Option("--settings", help="also print each stage's settings")] = False,
) -> None:
    """The stage table: done / stale / missing, when, how long, what counts; and the run's warnings."""
    _guard(lambda: _print_status(_runner(config, set_, run_dir), settings))


@app.command()
def poison(
    out: Annotated[str, typer.Option("--out", "-o", help="new folder for the poisoned copy")],
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="images loaded and written at a time")] = 256,
) -> None:
    """Write the poisoned dataset as class folders of PNGs plus ground_truth.csv (runs index if needed)."""

    def go() -> None:
        from unhans.pipeline.harness.poisoned_copy import check_out, write_folder

        r = _runner(config, set_, run_dir)
        if r.cfg.dataset.poison is None:
            raise UserError(
                "the config has no dataset.poison section; add one or --set dataset.poison.target=<class id>"
            )
        check_out(out)
        r.run("index")
        truth = write_folder(r.cfg, r.store.read_table("samples"), Path(out), batch_size)
        typer.echo(
            f"wrote {len(truth)} images ({int(truth['artifact'].sum())} with the artifact, "
            f"{int((truth['label'] != truth['original_label']).sum())} relabelled) to {out}/<class>/; "
            f"ground truth: {out}/ground_truth.csv; audit the copy: unhans audit -c {out}/config.yaml"
        )

    _guard(go)


@app.command()
def validate(
    spec: Annotated[str, typer.Option("--spec", help="validation spec in configs/validate/ or a YAML path")] = "demo",
    scenario: Annotated[list[str] | None, typer.Option("--scenario", help="run only these scenarios")] = None,
    set_: SetOpt = None,
    root: Annotated[str | None, typer.Option("--root", help="folder of the scenario runs")] = None,
    seed: Annotated[
        list[int] | None, typer.Option("--seed", help="run seeds (repeatable; default: the spec's seeds)")
    ] = None,
    collect: Annotated[
        bool, typer.Option("--collect", help="run nothing: gather the finished runs' results into the tables")
    ] = False,
) -> None:
    """Poison, train and audit every scenario of a spec once per seed; print detection against the peers."""

    def go() -> None:
        from unhans.pipeline.harness.validate import run_validation, summary

        results = run_validation(spec, root, scenario, set_ or [], seed, collect)
        typer.echo(summary(results))

    _guard(go)


@app.command()
def verify(
    config: ConfigOpt = "demo",
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    poison_from: Annotated[
        str | None,
        typer.Option(
            "--poison-from", help="SPEC:SCENARIO: the run (the spec's first seed) and artifact of a validation scenario"
        ),
    ] = None,
    retrain: Annotated[bool, typer.Option("--retrain/--no-retrain", help="retrain on the cleaned list")] = True,
    class_id: Annotated[
        list[int] | None, typer.Option("--class-id", help="P-ClArC for these classes (default: the flagged ones)")
    ] = None,
    pclarc_direction: Annotated[
        str, typer.Option("--pclarc-direction", help="transfer (evidence pasted into other classes) or group")
    ] = "transfer",
) -> None:
    """Retrain on the cleaned list and correct with P-ClArC: re-audit, accuracy, a known artifact's flip rate."""

    def go() -> None:
        from unhans.pipeline.harness.verify import resolve, summary
        from unhans.pipeline.harness.verify import verify as run_verify

        cfg, poison_cfg, split = resolve(config, set_ or [], run_dir, poison_from)
        table = run_verify(cfg, poison_cfg, split, retrain, class_id or None, pclarc_direction)
        typer.echo(summary(table, cfg, poison_cfg))
        typer.echo(f"written: {cfg.run_url}/verify.csv, {cfg.run_url}/verify.md")

    _guard(go)


def _print_status(r: Runner, settings: bool = False) -> None:
    rows = r.status_rows()
    typer.echo(f"run {r.cfg.name} at {r.store.url}")
    typer.echo(f"{'stage':<10} {'state':<9} {'seconds':>8} {'peak MiB':>8}  {'finished':<25} {'inputs':<16} counts")
    for row in rows:
        secs = f"{row['seconds']:.1f}" if row["seconds"] is not None else "-"
        peak = str(row["peak_mib"]) if row["peak_mib"] is not None else "-"
        counts = " ".join(f"{k}={v}" for k, v in row["counts"].items())
        typer.echo(
            f"{row['stage']:<10} {row['state']:<9} {secs:>8} {peak:>8}  {row['finished']:<25} {row['inputs']:<16} "
            f"{counts}"
        )
    if settings:  # the chain as it would run: each stage, what feeds it, with which settings
        typer.echo("")
        for name, spec in r.stages.items():
            parts = []
            for sec in spec.sections_read(r.cfg):
                values = r.cfg.section(sec).model_dump(mode="json", exclude_none=True)
                parts.append(f"{sec}(" + ", ".join(f"{k}={v}" for k, v in values.items()) + ")")
            typer.echo(f"{name:<10} <- {', '.join(r.active_inputs(spec)) or 'dataset'}: {' '.join(parts)}")
    clean = (r.record("clean") or {}).get("counts", {}) if r.state("clean") == "done" else {}
    if clean.get("unreadable"):
        typer.echo(f"{clean['unreadable']} unreadable files: dropped, each with its reason in tables/manifest.csv")
    for w in r.warnings():
        typer.secho(f"warning: {w}", fg=typer.colors.YELLOW)


def _stage_command(name: str, help_text: str):
    def command(
        config: ConfigOpt = "demo",
        set_: SetOpt = None,
        run_dir: RunDirOpt = None,
        force: ForceOpt = False,
        scheduler: SchedulerOpt = None,
        workers: WorkersOpt = None,
    ) -> None:
        def go() -> None:
            r = _runner(config, set_, run_dir, scheduler, workers)
            r.run(name, force=force)
            _print_status(r)

        _guard(go)

    command.__doc__ = f"{help_text} (stage; its inputs must be done)"
    return command


DecisionsOpt = Annotated[
    str | None,
    typer.Option("--decisions", help="a curator's decisions file exported from the report (kept with the run)"),
]
ClearOpt = Annotated[
    bool, typer.Option("--clear-decisions", help="remove the decisions kept with the run: automatic decisions only")
]


def _clean_command(help_text: str):
    def command(
        config: ConfigOpt = "demo",
        set_: SetOpt = None,
        run_dir: RunDirOpt = None,
        force: ForceOpt = False,
        decisions: DecisionsOpt = None,
        clear_decisions: ClearOpt = False,
    ) -> None:
        def go() -> None:
            from unhans.pipeline.core import layout

            extra = []
            if decisions and clear_decisions:
                raise UserError("--decisions and --clear-decisions contradict each other; give one")
            if decisions:  # a local path is made absolute; the value is quoted as a YAML string
                path = decisions if "://" in decisions else str(Path(decisions).resolve())
                extra = [f"clean.decisions={json.dumps(path)}"]
            r = _runner(config, (set_ or []) + extra, run_dir)
            if clear_decisions:
                with r.locked():
                    r.store.delete(layout.DECISIONS())
            r.run("clean", force=force or clear_decisions)
            _print_status(r)

        _guard(go)

    command.__doc__ = f"{help_text} (stage; its inputs must be done)"
    return command


def stage_commands() -> list[tuple[str, str]]:
    """(name, help) of every stage, in run order, read from the stage modules' source without importing them."""
    spec = importlib.util.find_spec("unhans.stages")
    folder = Path(next(iter(spec.submodule_search_locations)))  # type: ignore[union-attr, arg-type]
    found: dict[str, tuple[list[str], str]] = {}
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and getattr(deco.func, "id", "") == "stage":
                    inputs = next((kw.value for kw in deco.keywords if kw.arg == "inputs"), None)
                    names = [e.value for e in inputs.elts] if isinstance(inputs, ast.List) else []  # type: ignore[attr-defined]
                    doc = (ast.get_docstring(node) or "").strip().splitlines()
                    found[deco.args[0].value] = (names, doc[0] if doc else "")  # type: ignore[attr-defined]
    ordered: list[str] = []
    while len(ordered) < len(found):  # each after its inputs, ties by name (as the runner orders them)
        ready = sorted(n for n, (ins, _) in found.items() if n not in ordered and all(i in ordered for i in ins))
        ordered.append(ready[0])
    return [(n, found[n][1]) for n in ordered]


for _name, _help in stage_commands():
    app.command(name=_name)(_clean_command(_help) if _name == "clean" else _stage_command(_name, _help))


if __name__ == "__main__":
    app()
