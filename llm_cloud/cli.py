"""``lsc4rec llm ...``: train, evaluate and serve the cloud LLM, and run vLLM beside it.

Heavy modules (torch, transformers, FastAPI) are imported inside the commands so that ``--help`` stays fast.
Errors are :class:`~lsc4rec.errors.LSC4RecError` subclasses, printed as one line by the top-level wrapper.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from contextlib import suppress
from pathlib import Path
from typing import Annotated

import typer

from lsc4rec.errors import ConfigError, LSC4RecError, check_values_given, named_as_typed, run_main
from lsc4rec.protocol import API_KEY_ENV, DEFAULT_PORT, MAX_HEAD_BYTES, MAX_IN_FLIGHT, MAX_K, check_api_key

app = typer.Typer(help="The cloud LLM: train, evaluate, serve candidates, run vLLM.", no_args_is_help=True)

Checkpoint = Annotated[
    Path, typer.Option("--checkpoint", help="Checkpoint folder written by `lsc4rec llm train`.")
]
Data = Annotated[Path, typer.Option("--data", help="Prepared dataset (.npz) from `lsc4rec data prepare`.")]
Port = Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port to listen on.")]


@app.command()
def train(
    data: Data,
    out: Annotated[Path, typer.Option("--out", help="Checkpoint folder to write.")],
    base: Annotated[
        str | None, typer.Option("--base", help="scratch, or a HF model folder or .gguf file.")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="TOML run config.")] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="key=value, e.g. llm.epochs=5.")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Train the item-token LLM on the cloud view of DATA and save it to OUT (best epoch, or as llm.* settings say)."""
    from lsc4rec.config import load_config, override_pairs
    from lsc4rec.data import SequenceDataset, TemporalSplit
    from lsc4rec.runs import output_path

    check_values_given((("--data", data), ("--out", out), ("--base", base), ("--config", config)))
    with named_as_typed({"llm.base": base}, {"llm.base": "--base"}):
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        run_config = load_config(
            config, override_pairs(overrides, ("data.lag", "llm", "seed"), **{"llm.base": base})
        )
        dataset = SequenceDataset.load(data)
        # the checkpoint records the data it was trained on: the prepared file's own settings, not the defaults
        meta = dataset.meta
        prepared = {
            "dataset": meta.get("source") or meta.get("name"),
            "kcore": meta.get("kcore"),
            "numbering": meta.get("numbering"),
        }
        run_config = run_config.override(
            [f"data.{key}={value}" for key, value in prepared.items() if value is not None]
        )
        TemporalSplit(dataset, run_config.data.lag).check_trainable("LLM")
        _check_out(out)
        # torch and transformers load only now, after the cheap checks, so that their errors come at once
        from llm_cloud.train import kept_weights, train_llm

        created = not os.path.lexists(out)  # os.path: a name too long is left to output_path to name
        output_path(out, "--out", folder=True)  # after the inputs, so a typo there leaves no empty folder
        try:
            result = train_llm(run_config, dataset, out, progress=not quiet, replace=False)
        # a base that does not load, Ctrl-C: a folder made for nothing is not left behind
        except BaseException:
            if created:
                with suppress(OSError):  # rmdir removes only an empty folder
                    out.rmdir()
            raise
        typer.echo(
            f"saved {result.checkpoint}: {kept_weights(result.best_epoch, result.averaged_epochs)}, valid NDCG@10 "
            f"{result.best_valid_ndcg10:.4f}, {result.seconds:.0f} s"
        )


def _check_out(out: Path) -> None:
    """Refuse, before an hour of training rather than after, an OUT where saving would lose work or fail.

    The checkpoint is written beside OUT (``.OUT.<12 hex digits>.partial``) and then moved into its place, so OUT
    must be new or empty (nothing in it is ever replaced, also not what another training saves there meanwhile),
    not a mount point (which cannot be moved), and in a writable folder whose file names can be that much longer.
    """
    resolved = out.resolve()
    parent = resolved.parent
    name_max = os.pathconf(parent, "PC_NAME_MAX") if parent.is_dir() else 255
    if len(os.fsencode(f".{resolved.name}.{'0' * 12}.partial")) > name_max:
        raise ConfigError(
            "--out", f"needs a shorter name, got {out} (training writes .NAME.partial beside it)."
        )
    if not os.path.isdir(out):
        return  # a new folder: output_path makes it, in a folder it can write to
    if any(out.iterdir()):
        raise ConfigError(
            "--out",
            f"must be a new or empty folder, got {out}, which holds files: choose another (to train that "
            "checkpoint again, delete it first).",
        )
    if os.path.ismount(out):
        raise ConfigError("--out", f"must not be a mount point, got {out}: give a folder inside it.")
    if not os.access(parent, os.W_OK):
        raise ConfigError("--out", f"needs a writable folder above it, got {out} ({parent} is read-only).")


@app.command()
def evaluate(
    checkpoint: Checkpoint,
    data: Data,
    lag: Annotated[
        int | None, typer.Option("--lag", min=0, help="Default: the lag the checkpoint was trained with.")
    ] = None,
    k: Annotated[
        int | None,
        typer.Option(
            "--k", min=1, max=MAX_K, help="Candidate list length K. Default: the checkpoint's llm.k."
        ),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics here.")] = None,
) -> None:
    """Stale and fresh LLM-only metrics on the test target (ranking over the K-list)."""
    from rich.table import Table

    from llm_cloud.checkpoint import check_same_items, read_run_config
    from llm_cloud.engines import make_engine
    from llm_cloud.evaluate import evaluate_engine
    from lsc4rec.data import SequenceDataset
    from lsc4rec.data.split import TemporalSplit
    from lsc4rec.runs import output_path, write_json
    from lsc4rec.tables import print_table

    if json_out:
        output_path(json_out, "--json")
    trained_with = read_run_config(checkpoint)  # checks the folder first
    dataset = SequenceDataset.load(data)
    check_same_items(checkpoint, dataset)
    lag = trained_with.data.lag if lag is None else lag
    k = trained_with.llm.k if k is None else k
    try:  # a lag the data cannot take is refused before the model loads, naming this command's option
        TemporalSplit(dataset, lag)
    except ConfigError as exc:
        raise ConfigError("--lag", exc.message) from None
    engine = make_engine("transformers", checkpoint)
    metrics = evaluate_engine(engine, dataset, lag, k)
    report = {
        "checkpoint": str(checkpoint),
        "data": str(data),
        "lag": lag,
        "k": k,
        "ranking": "over the LLM list",
        "metrics": metrics,
    }
    table = Table(title=f"{checkpoint.name} on {data.name} (lag {lag}, K {k}, ranking over the list)")
    names = list(next(iter(metrics.values())))
    table.add_column("query")
    for name in names:
        table.add_column(name, justify="right")
    for query, values in metrics.items():
        table.add_row(query, *(f"{values[n]:.4f}" for n in names))
    print_table(table)
    if json_out:
        write_json(json_out, report)


@app.command()
def serve(
    checkpoint: Checkpoint,
    engine: Annotated[str, typer.Option("--engine", help="transformers | vllm")] = "transformers",
    vllm_url: Annotated[
        str | None, typer.Option("--vllm-url", help="vLLM server serving CHECKPOINT.")
    ] = None,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Port = DEFAULT_PORT,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", envvar=API_KEY_ENV, help="Require 'Authorization: Bearer KEY'."),
    ] = None,
    ssl_certfile: Annotated[
        Path | None,
        typer.Option("--ssl-certfile", help="Serve https with this PEM certificate (with --ssl-keyfile)."),
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option("--ssl-keyfile", help="The certificate's PEM private key.")
    ] = None,
    max_in_flight: Annotated[
        int,
        typer.Option(
            "--max-in-flight",
            min=1,
            help="Candidate requests held at once; more are answered 503 (devices retry, then fall back).",
        ),
    ] = MAX_IN_FLIGHT,
) -> None:
    """Serve POST /v1/candidates, GET /healthz and GET /metrics (over https with a certificate and key)."""
    import uvicorn

    from llm_cloud.checkpoint import check_files
    from llm_cloud.engines import make_engine
    from llm_cloud.processes import check_port_free, server_url
    from llm_cloud.service import create_app, exposure_warning

    check_api_key(api_key, f"--api-key (or {API_KEY_ENV})")  # devices could not send it
    if vllm_url is not None and engine != "vllm":
        raise ConfigError("--vllm-url", f"is for --engine vllm, and this service runs --engine {engine}.")
    if vllm_url is not None:
        _check_url(vllm_url)
    check_port_free(host, port)  # before the model loads, and instead of uvicorn's bare error
    tls = _tls_files(ssl_certfile, ssl_keyfile)
    check_files(checkpoint)  # before make_engine imports torch, so a wrong path is named at once
    if warning := exposure_warning(host, api_key, tls=bool(tls)):
        typer.echo(f"warning: {warning}.", err=True)
    candidate_engine = make_engine(engine, checkpoint, vllm_url)
    if problem := candidate_engine.serving_problem():
        typer.echo(
            f"warning: {problem}. Candidate requests get 503 until it serves this checkpoint "
            "(`lsc4rec llm vllm-serve --checkpoint CKPT` starts one that does).",
            err=True,
        )
    url = server_url(host, port, "https" if tls else "http")
    typer.echo(f"serving {checkpoint.name} ({engine} engine) on {url}; Ctrl-C stops it", err=True)
    try:
        uvicorn.run(
            create_app(candidate_engine, api_key, max_in_flight),
            host=host,
            port=port,
            log_level="warning",
            # h11, whose parser bounds a request's head (httptools took 4 s of the event loop, before the key
            # was checked, to read one 64 MB header): a head over MAX_HEAD_BYTES is a 400
            http="h11",
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
            **tls,
        )
    finally:
        candidate_engine.close()


def _check_url(vllm_url: str) -> None:
    """Refuse a ``--vllm-url`` httpx cannot parse (a port that is no number, an unclosed bracket) at once."""
    import httpx

    try:
        parsed = httpx.URL(vllm_url)
    except httpx.InvalidURL as exc:
        parsed, problem = None, f" ({exc})"
    else:
        problem = ""
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError("--vllm-url", f"must look like http://HOST:PORT, got {vllm_url!r}{problem}.")


def _tls_files(certfile: Path | None, keyfile: Path | None) -> dict[str, str]:
    """The TLS arguments of ``uvicorn.run``, checked before the model loads: both files or neither, each readable.

    An expired certificate is refused too: uvicorn serves it, and every device refuses the handshake.
    """
    import datetime
    import ssl

    from cryptography import x509

    if certfile is None and keyfile is None:
        return {}
    if certfile is None or keyfile is None:
        missing = "--ssl-keyfile" if keyfile is None else "--ssl-certfile"
        raise ConfigError(missing, "is needed too: https takes a certificate and its private key.")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "--ssl-certfile",
            f"{certfile} and --ssl-keyfile {keyfile} must be a PEM certificate and its private key ({exc}).",
        ) from None
    try:
        expires = x509.load_pem_x509_certificate(certfile.read_bytes()).not_valid_after_utc
    except ValueError:
        # a PEM form ssl reads and cryptography does not (TRUSTED CERTIFICATE): ssl accepted it, so serve it
        return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}
    if expires < datetime.datetime.now(datetime.UTC):
        raise ConfigError(
            "--ssl-certfile", f"{certfile} expired on {expires:%Y-%m-%d}: devices would refuse it. Renew it."
        )
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


@app.command("vllm-serve")
def vllm_serve(
    checkpoint: Checkpoint,
    port: Port = 8000,
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    log: Annotated[Path, typer.Option("--log", help="Where vLLM's output goes.")] = Path("runs/vllm.log"),
    eager: Annotated[
        bool,
        typer.Option(
            "--eager",
            help="Skip torch.compile: ready about half a minute sooner on a first run, ~13 % slower.",
        ),
    ] = False,
) -> None:
    """Start vLLM on CHECKPOINT (in the vLLM venv), wait until ready, and keep it up until Ctrl-C."""
    from llm_cloud.checkpoint import check_weights
    from llm_cloud.engines.vllm_engine import VLLM_API_KEY_ENV, VLLM_PLAIN_HTTP
    from llm_cloud.processes import check_port_free
    from llm_cloud.service import exposure_warning
    from llm_cloud.vllm_server import start_vllm
    from lsc4rec.runs import output_path

    output_path(log, "--log")
    check_port_free(host, port)
    check_weights(checkpoint)  # a file cut short is named here, not after vLLM has started on it
    if warning := exposure_warning(
        host, os.environ.get(VLLM_API_KEY_ENV), VLLM_API_KEY_ENV, tls=False, encrypt=VLLM_PLAIN_HTTP
    ):
        typer.echo(f"warning: {warning}.", err=True)
    with start_vllm(checkpoint, port, log, host, eager=eager) as server:
        typer.echo(f"vLLM ready at {server.url} (log: {log}); Ctrl-C stops it")
        try:
            while server.process.poll() is None:
                time.sleep(1.0)
        except KeyboardInterrupt:
            return
    # only Ctrl-C ends a healthy vLLM: a supervisor must not read its crash as success
    raise LSC4RecError(f"vLLM exited with code {server.process.returncode}; see {log}.")


@app.command("make-vllm-venv")
def make_vllm_venv() -> None:
    """Create the vLLM venv (scripts/make_vllm_venv.sh; location: $LSC4REC_VLLM_VENV or .venv-vllm)."""
    from llm_cloud.vllm_server import REPO_ROOT

    code = subprocess.call(["bash", str(REPO_ROOT / "scripts" / "make_vllm_venv.sh")], env=dict(os.environ))
    if code:
        raise typer.Exit(code)


# how the launcher starts the service: errors in one line, as ``lsc4rec llm`` gives them
if __name__ == "__main__":
    run_main(app)
