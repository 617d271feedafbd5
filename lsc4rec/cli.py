"""The ``lsc4rec`` command: the one edge where arguments are read and errors become one clear line.

It is the composition root: sub-commands import their room (``clients``, ``llm_cloud``) lazily, inside the
command, so ``lsc4rec --help`` stays fast and the core keeps no import-time dependency on the rooms.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table

from lsc4rec.config import FederationConfig, RunConfig, load_config, override_pairs, set_key
from lsc4rec.errors import ConfigError, check_values_given, named_as_typed, run_main
from lsc4rec.tables import print_table

app = typer.Typer(
    help="LSC4Rec: a cloud LLM and federated small recommendation models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Prepare datasets.", no_args_is_help=True)
srm_app = typer.Typer(help="Small recommendation models (centralized baseline).", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(srm_app, name="srm")
console = Console(soft_wrap=True)  # long paths stay on one line each

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML file with run settings.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a setting: key=value (repeatable).")
]
DataDirOpt = Annotated[
    str | None, typer.Option("--data-dir", help="Root of the raw data (else $LSC4REC_DATA_DIR).")
]
_state = {"debug": False}


@app.callback()
def _root(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(message)s")


def build_config(
    config: Path | None, overrides: list[str] | None, reads: tuple[str, ...] | None = None, **flat: object
) -> RunConfig:
    """The effective config: file, then ``--set`` pairs, then the named options that were given.

    ``reads``: the sections and keys the command reads (None: all); ``--set`` may name no other.
    """
    return load_config(config, override_pairs(overrides, reads, **flat))


def _named(options: dict[str, str], given: dict[str, Any]) -> dict[str, Any]:
    """{config key: the value its option was given, or None}; each option is named after its parameter."""
    return {key: given[option[2:].replace("-", "_")] for key, option in options.items()}


# the settings each command's named options set
PREPARE_OPTIONS = {
    "data.dataset": "--dataset",
    "data.data_dir": "--data-dir",
    "data.kcore": "--kcore",
    "data.numbering": "--numbering",
}
SRM_TRAIN_OPTIONS = {
    "data.dataset": "--dataset",
    "srm.model": "--model",
    "srm.loss": "--loss",
    "train.epochs": "--epochs",
    "out_dir": "--out",
    "data.data_dir": "--data-dir",
}


@data_app.command("prepare")
def data_prepare(
    dataset: Annotated[
        str | None, typer.Option(help="ml-latest-small, beauty, toys, or a path (default: the config's).")
    ] = None,
    kcore: Annotated[int | None, typer.Option(help="k-core filter (default: the config's).")] = None,
    numbering: Annotated[str | None, typer.Option(help="random | sequential item numbering.")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the prepared .npz (default: the cache).")
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Read, k-core filter and number a dataset; save it as .npz and print its statistics."""
    from lsc4rec.data.prepared import prepare

    check_values_given((("--dataset", dataset), ("--out", out), ("--config", config)))
    named = _named(PREPARE_OPTIONS, locals())
    with named_as_typed(named, PREPARE_OPTIONS):
        cfg = build_config(config, overrides, (*PREPARE_OPTIONS, "seed"), **named)
        dataset_obj, path = prepare(cfg.data, cfg.seed, out)
    table = Table(title=f"{cfg.data.dataset} ({cfg.data.kcore}-core, {cfg.data.numbering} numbering)")
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in dataset_obj.stats().items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"prepared dataset: {path}")


@srm_app.command("train")
def srm_train(
    dataset: Annotated[str | None, typer.Option(help="ml-latest-small, beauty, toys, or a path.")] = None,
    model: Annotated[str | None, typer.Option(help="sasrec | gru4rec | din.")] = None,
    loss: Annotated[str | None, typer.Option(help="ce | bce.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Upper bound on epochs.")] = None,
    out: Annotated[str | None, typer.Option(help="Folder under which the run folder is made.")] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Train an SRM on every user's device view, early-stop on validation, evaluate on test (full catalogue)."""
    from clients.central import train_central

    check_values_given((("--dataset", dataset), ("--out", out), ("--config", config)))
    named = _named(SRM_TRAIN_OPTIONS, locals())
    with named_as_typed(named, SRM_TRAIN_OPTIONS):
        cfg = build_config(config, overrides, ("data", "srm", "train", "seed", "out_dir"), **named)
        result = train_central(cfg)
    console.print_json(json.dumps(result["test"]))
    console.print(f"run folder: {result['run_dir']}")


# the settings federate's named options set (each option is named after its parameter: --data-dir, data_dir)
FEDERATE_OPTIONS = {
    "data.dataset": "--dataset",
    "srm.model": "--srm",
    "federation.rounds": "--rounds",
    "federation.num_nodes": "--nodes",
    "federation.fraction_train": "--fraction",
    "data.lag": "--lag",
    "llm.k": "--k",
    "federation.budget": "--budget",
    "seed": "--seed",
    "out_dir": "--out",
    "data.data_dir": "--data-dir",
}


# the option helps name the defaults of lsc4rec/config.py, their one source (--config and --resume replace them)
_DEFAULTS = RunConfig().to_flat()


def _setting(key: str, what: str) -> Any:
    """The ``typer.Option`` of a federate option that sets ``key``, its help naming the config's default."""
    return typer.Option(help=f"{what} (default {_DEFAULTS[key]}).")


@app.command("federate")
def federate(
    dataset: Annotated[
        str | None, _setting("data.dataset", "ml-latest-small, beauty, toys, or a path")
    ] = None,
    srm: Annotated[str | None, _setting("srm.model", "sasrec | gru4rec | din")] = None,
    rounds: Annotated[int | None, _setting("federation.rounds", "Federated rounds")] = None,
    nodes: Annotated[
        int | None, _setting("federation.num_nodes", "Nodes (edge boxes); 0 = one user per node")
    ] = None,
    fraction: Annotated[
        float | None, _setting("federation.fraction_train", "Share of nodes trained per round")
    ] = None,
    lag: Annotated[int | None, _setting("data.lag", "Interactions the cloud is behind")] = None,
    k: Annotated[int | None, _setting("llm.k", "Candidate list length K")] = None,
    budget: Annotated[float | None, _setting("federation.budget", "Target request rate")] = None,
    seed: Annotated[int | None, _setting("seed", "Seed of everything")] = None,
    out: Annotated[str | None, _setting("out_dir", "Folder under which the run folder is made")] = None,
    engine: Annotated[
        str | None,
        typer.Option(
            help="transformers | vllm (vLLM runs in its own venv). Default: transformers, or the resumed run's."
        ),
    ] = None,
    vllm_eager: Annotated[
        bool | None,
        typer.Option(
            "--vllm-eager/--no-vllm-eager",
            help="With --engine vllm: start vLLM without torch.compile (ready sooner, serves a little slower). "
            "Default: off, or the resumed run's.",
        ),
    ] = None,
    runtime: Annotated[
        str | None,
        typer.Option(
            help="simulation | deployment (one flower-supernode process per node, as on edge boxes; every "
            "link over TLS, only registered nodes admitted). Default: simulation, or the resumed run's."
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            help="Continue the run in this folder from its newest checkpoint, with its settings and the engine "
            "and runtime it last ran on (the other options but --config and --out, and --set, still apply, "
            "e.g. more --rounds)."
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    overrides: SetOpt = None,
) -> None:
    """Run the whole federation: data, cloud LLM, candidate service, Flower, report.

    The options' defaults are lsc4rec/config.py's; --config or a resumed run's own settings replace them.
    """
    named = _named(FEDERATE_OPTIONS, locals())
    from llm_cloud.engines import ENGINES
    from server.launch import LAUNCH_FILE, RUNTIMES, Launch, run_federation

    for option, value, choices in (("--engine", engine, ENGINES), ("--runtime", runtime, RUNTIMES)):
        if value is not None and value not in choices:
            raise ConfigError(option, f"must be one of {'|'.join(choices)}, got {value!r}.")
    check_values_given((("--dataset", dataset), ("--out", out), ("--resume", resume), ("--config", config)))
    with named_as_typed(named, FEDERATE_OPTIONS):
        cfg = (
            _fresh_config(config, overrides, named)
            if resume is None
            else _resumed_config(resume, config, overrides, named)
        )
        launch = Launch.chosen(engine, runtime, vllm_eager, resume)
        if launch.vllm_eager and launch.engine != "vllm":
            saved = resume is not None and engine is None and (resume / LAUNCH_FILE).is_file()
            was = " (the resumed run used the transformers engine)" if saved else ""
            raise ConfigError("--vllm-eager", f"starts vLLM, so it needs --engine vllm{was}.")
        summary = run_federation(cfg, launch)
    print_table(Markdown(summary.read_text()))  # its tables aligned, as a terminal shows them
    console.print(f"report: {summary.parent} (summary.md, final.json, metrics.jsonl, *.png)")


def _fresh_config(config: Path | None, overrides: list[str] | None, named: dict[str, Any]) -> RunConfig:
    """A new run's settings (defaults, ``--config``, the options, ``--set``), less what a new run cannot take."""
    _refuse_train_settings(set_key(pair) for pair in overrides or [])
    cfg = build_config(config, overrides, **named)
    if cfg.federation.resume:  # from the defaults, it would overwrite the run's config.json with them
        raise ConfigError(
            "federation.resume",
            "continues a run with the settings it was started with: pass --resume RUN_DIR instead.",
        )
    if cfg.federation.run_dir and named["out_dir"] is not None:
        raise ConfigError(
            "federation.run_dir",
            f"names the run folder itself, so --out {named['out_dir']} (where new run folders go) would be "
            "ignored. Pass one of them.",
        )
    _refuse_service_url(cfg.federation.service_url != FederationConfig.service_url)
    return cfg


def _refuse_train_settings(set_keys: Iterable[str]) -> None:
    """Refuse a ``--set train.*`` (``set_keys``: the ``--set`` pairs' keys), which a federation would not read.

    A ``--config`` file's [train] section is left alone: it is for ``srm train``, and one file may serve every
    command of a run.
    """
    for key in set_keys:
        if key.split(".", 1)[0] == "train":
            raise ConfigError(
                key,
                "sets the centralized SRM's training (`lsc4rec srm train`), which a federation does not run: "
                "devices train with federation.local_lr, local_epochs and local_batch_size.",
            )


def _resumed_config(
    resume: Path, config: Path | None, overrides: list[str] | None, named: dict[str, Any]
) -> RunConfig:
    """A resumed run's settings: its own ``config.json``, then the options and ``--set`` it may change."""
    from server.launch import resume_config

    if config is not None:
        raise ConfigError("--resume", "keeps the run's own settings: drop --config (--set still applies).")
    set_keys = {set_key(pair) for pair in overrides or []}
    _refuse_train_settings(sorted(set_keys))
    # the run's own config.json holds the service its first launch started: not the user's choice
    fixed = sorted(set_keys & {"federation.run_dir", "federation.resume", "out_dir"}) + (
        ["--out"] if named["out_dir"] else []
    )
    if fixed:
        raise ConfigError(
            "--resume", f"names the run folder and continues it, so {fixed[0]} cannot be set with it."
        )
    # read first, as ever: a wrong folder is named before a refused setting
    cfg = resume_config(resume, override_pairs(overrides, **named))
    _refuse_service_url("federation.service_url" in set_keys)
    return cfg


def _refuse_service_url(asked: bool) -> None:
    """``federate`` starts its own candidate service: a service URL set by hand would be silently replaced."""
    if asked:
        raise ConfigError(
            "federation.service_url",
            "is the candidate service this command starts itself. To federate against a service of your own, "
            "run the app with `flwr run` and a run config that names it (README, edge boxes).",
        )


def _mount_llm() -> None:
    """Mount ``lsc4rec llm ...`` from the cloud room when it is installed alongside."""
    try:
        from llm_cloud.cli import app as llm_app
    except ImportError:
        return
    app.add_typer(llm_app, name="llm", help="The cloud LLM: train, evaluate, serve.")


def main() -> None:
    """Entry point: run the command; an ``LSC4RecError`` is one line on stderr and exit status 2."""
    _mount_llm()
    run_main(app, lambda: _state["debug"])


if __name__ == "__main__":
    main()
