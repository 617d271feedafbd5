"""The launcher checks what it can before training anything, and never writes over an earlier run."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
import torch
from flwr.app import ArrayRecord

from clients.srm import build_srm
from llm_cloud.processes import REPO_ROOT, ManagedServer, free_port
from llm_cloud.train import TRAIN_RESULT_FILE, train_llm
from lsc4rec.config import RunConfig
from lsc4rec.credentials import make_loopback_tls, make_node_key
from lsc4rec.data.prepared import load_or_prepare
from lsc4rec.errors import ConfigError, DataFormatError, LSC4RecError
from server.checkpoint import PRIVACY_LEDGER, read_ledger, save_checkpoint, save_ledger
from server.launch import (
    LAUNCH_FILE,
    Launch,
    _srm_bytes,
    candidate_service,
    check_node_state_fits,
    check_srm_trains,
    llm_cache_folder,
    llm_checkpoint,
    resume_config,
    resume_hint,
    run_federation,
    run_folder,
    sampling_note,
    superlink,
    supernodes,
)
from server.launch import _held as held_for_this_launch
from server.launch import _rounds_ahead as rounds_ahead
from server.launch import _run_shown as run_shown
from server.launch import _toml as run_config_toml
from tests.conftest import run_module


def _with_checkpoint(folder: Path, server_round: int = 1) -> Path:
    """A run folder holding one complete round checkpoint (weights file plus its sidecar)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder, server_round, ArrayRecord({"w": torch.zeros(2)}), 0.5)
    return folder


def test_run_folder_new_given_and_resumed(federation_config: RunConfig, tmp_path: Path) -> None:
    fresh = run_folder(federation_config.override([f"out_dir={tmp_path}"]))
    assert fresh.parent == tmp_path and fresh.name.startswith("federation-") and fresh.is_dir()
    given = tmp_path / "given"
    assert run_folder(federation_config.override([f"federation.run_dir={given}"])) == given and given.is_dir()
    done = _with_checkpoint(tmp_path / "done")
    resumed = federation_config.override([f"federation.run_dir={done}", "federation.resume=true"])
    assert run_folder(resumed) == done


def test_a_run_folder_is_held_by_one_launch_and_kept_out_of_the_app(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    """A second launch of one folder would share its checkpoints and stop the first's processes at its end; a
    folder in the checkout that .gitignore misses would go into every later run's app."""
    in_use = pytest.raises(ConfigError, match="is in use by another launch that is still running")
    with held_for_this_launch(tmp_path), in_use, held_for_this_launch(tmp_path):
        pass
    with held_for_this_launch(tmp_path):  # free again once the first launch let go
        pass
    for key, setting in (
        ("out_dir", "out_dir={root}/results"),
        ("federation.run_dir", "federation.run_dir={root}/r"),
    ):
        cfg = federation_config.override([setting.format(root=REPO_ROOT)])
        with pytest.raises(
            ConfigError, match=f"{key}: must be outside this checkout or below a folder named runs/"
        ):
            run_folder(cfg)
    assert not (REPO_ROOT / "results").exists() and not (REPO_ROOT / "r").exists()


def test_the_run_config_flwr_reads_holds_any_folder_name(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    """JSON escapes an emoji into a surrogate pair, which TOML refuses: `flwr run` would fail after the service started."""
    folder = tmp_path / 'runs 😀 "quoted"'
    cfg = federation_config.override([f"out_dir={folder}"])
    assert RunConfig.from_flat(tomllib.loads(run_config_toml(cfg.to_flat()))) == cfg


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["federation.resume=true"], r"federation\.resume: needs federation\.run_dir"),
        (
            ["federation.resume=true", "federation.run_dir={tmp}/empty"],
            r"federation\.resume: finds no finished round .* Start a new run \(leave out --resume\)",
        ),
        (["federation.run_dir={tmp}/done"], "holds a run already"),
        (
            ["federation.run_dir={tmp}/a-file"],
            "federation.run_dir: must be a path whose folder can be created",
        ),
        (["federation.run_dir={tmp}/a-file/sub"], "federation.run_dir: must be a path whose folder"),
    ],
)
def test_run_folder_refuses_to_lose_a_run(
    federation_config: RunConfig, tmp_path: Path, settings: list[str], message: str
) -> None:
    _with_checkpoint(tmp_path / "done")
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("")
    cfg = federation_config.override([s.format(tmp=tmp_path) for s in settings])
    with pytest.raises(ConfigError, match=message):
        run_folder(cfg)


def test_a_lag_the_data_cannot_hold_fails_before_any_folder(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    cfg = federation_config.override([f"out_dir={tmp_path / 'runs'}", "data.lag=100"])
    with pytest.raises(ConfigError, match=r"data\.lag"):
        run_federation(cfg)
    assert not (tmp_path / "runs").exists()


def test_run_federation_sh_takes_relative_paths_from_the_callers_folder(
    synthetic_folder: Path, tmp_path: Path
) -> None:
    """A user in a folder of their own names data and outputs relative to it, as with any command."""
    (tmp_path / "mydata").symlink_to(synthetic_folder)
    run = subprocess.run(
        [str(REPO_ROOT / "run_federation.sh"), "--dataset", "mydata", "--out", "myruns", "--lag", "100"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert run.stderr.startswith("error: --lag: must be in [0, ")  # the data were found and read
    assert not (tmp_path / "myruns").exists()


def test_a_deployment_too_large_for_one_machine_fails_before_any_folder(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    """One user per node is 24 supernode processes here, above the bound: refused before training or folders."""
    cfg = federation_config.override([f"out_dir={tmp_path / 'runs'}", "federation.num_nodes=0"])
    with pytest.raises(ConfigError, match=r"federation\.num_nodes: .* at most 16, got 24"):
        run_federation(cfg, Launch(runtime="deployment"))
    assert not (tmp_path / "runs").exists()


def test_a_simulation_whose_kept_models_cannot_fit_fails_before_training_or_folders(
    federation_config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """24 one-user nodes keeping a personal SRM copy each, on a machine with 1 MiB: refused with the remedy."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("server.launch.available_memory", lambda: 2**20)
    cfg = federation_config.override([f"out_dir={tmp_path / 'runs'}", "federation.num_nodes=0"])
    with pytest.raises(ConfigError, match=r"a personal SRM copy for each of 24 nodes .*keep_personal=false"):
        run_federation(cfg)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache" / "llm").exists()


@pytest.mark.parametrize(
    ("settings", "fits"),
    [
        ([], False),  # 24 personal copies
        (["federation.keep_personal=false"], True),  # nothing kept
        (["federation.keep_personal=false", "federation.keep_optimizer=true"], False),  # 24 x Adam's 2 copies
        (["federation.num_nodes=2"], True),  # 2 boxes, 2 copies
    ],
)
def test_the_kept_models_are_sized_against_the_memory_available(
    federation_config: RunConfig, settings: list[str], fits: bool
) -> None:
    """Room for five SRMs: 24 nodes' copies, or their Adam states, do not fit; 2 boxes' copies, or none, do."""
    cfg = federation_config.override(["federation.num_nodes=0", *settings])
    nodes, srm_bytes = cfg.federation.num_nodes or 24, 2**20
    check_node_state_fits(cfg, nodes, srm_bytes, None)  # memory unknown: no check
    if fits:
        check_node_state_fits(cfg, nodes, srm_bytes, 5 * srm_bytes)
    else:
        with pytest.raises(ConfigError, match=f"for each of {nodes} nodes .* x 1.0 MiB each"):
            check_node_state_fits(cfg, nodes, srm_bytes, 5 * srm_bytes)


def test_an_srm_too_large_to_train_is_refused_before_it_is_built(federation_config: RunConfig) -> None:
    """Sized on the meta device (nothing allocated), refused by the memory check, not by the allocator."""
    cfg = federation_config.override(["srm.hidden=100000", "federation.keep_personal=false"])
    started = time.perf_counter()
    srm_bytes = _srm_bytes(cfg, 50_000)
    assert (
        srm_bytes > 100 * 2**30 and time.perf_counter() - started < 5
    )  # hundreds of GiB counted, not allocated
    with pytest.raises(
        ConfigError, match=r"srm.hidden: one SRM on this catalogue holds \d+\.\d GiB.*got 100000"
    ):
        check_srm_trains(cfg, srm_bytes, 64 * 2**30)


@pytest.mark.parametrize("runtime", ["simulation", "deployment"])
def test_a_launch_refuses_an_srm_too_large_to_train_in_either_runtime(
    federation_config: RunConfig, tmp_path: Path, runtime: str
) -> None:
    """A deployment's supernodes train it too (here, all on this machine): refused before any folder."""
    cfg = federation_config.override(["srm.hidden=100000", f"out_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match=r"srm.hidden: one SRM on this catalogue holds"):
        run_federation(cfg, Launch(runtime=runtime))
    assert not (tmp_path / "runs").exists()


def test_vllm_without_its_venv_fails_before_training_or_folders(
    federation_config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LSC4REC_VLLM_VENV", str(tmp_path / "no-venv"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = federation_config.override([f"out_dir={tmp_path / 'runs'}"])
    with pytest.raises(LSC4RecError, match="--engine vllm: "):
        run_federation(cfg, Launch(engine="vllm"))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache" / "llm").exists()


def test_a_failed_llm_training_leaves_no_run_folder(
    federation_config: RunConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def diverges(*_: object, **__: object) -> NoReturn:
        raise LSC4RecError("llm: the training loss is not finite")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("llm_cloud.train.train_llm", diverges)
    cfg = federation_config.override([f"out_dir={tmp_path / 'runs'}"])
    with pytest.raises(LSC4RecError, match="not finite"):
        run_federation(cfg)
    assert list((tmp_path / "runs").iterdir()) == []


def test_runs_needing_the_same_llm_take_turns_and_the_later_one_uses_the_first_ones(
    federation_config: RunConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two runs on a fresh machine (one per SRM, say): the second waits on the lock and trains nothing."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = llm_cache_folder(federation_config)
    folder.parent.mkdir(parents=True)
    answer: list[Path] = []
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:  # the first run, training
        fcntl.flock(lock, fcntl.LOCK_EX)
        second = threading.Thread(target=lambda: answer.append(llm_checkpoint(federation_config)))
        second.start()
        printed, deadline = "", time.monotonic() + 30
        while "==> waiting" not in printed:  # it found the lock held
            assert time.monotonic() < deadline, "the second run never reached the lock"
            printed += capsys.readouterr().out
            time.sleep(0.01)
        data = load_or_prepare(federation_config.data, federation_config.seed)
        result = train_llm(federation_config, data, folder, progress=False)
        assert second.is_alive() and not answer  # it waited all that time
    second.join(60)
    assert answer == [folder]
    assert (folder / TRAIN_RESULT_FILE).read_text() == json.dumps(asdict(result), indent=2) + "\n"  # kept
    assert (printed + capsys.readouterr().out).splitlines() == [
        f"==> waiting for another run that trains this LLM: {folder}",
        f"==> LLM checkpoint (cached): {folder}",
    ]


def test_the_cached_llm_is_keyed_by_what_its_training_reads(
    federation_config: RunConfig, synthetic_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data file edited in place must not find the LLM of the old one; another K must not train it again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    shop = shutil.copytree(synthetic_folder, tmp_path / "shop")
    cfg = federation_config.override([f"data.dataset={shop}"])
    folder = llm_cache_folder(cfg)
    assert llm_cache_folder(cfg.override(["llm.k=20"])) == folder  # K: only the requests carry it
    assert llm_cache_folder(cfg.override(["data.lag=1"])) != folder
    with monkeypatch.context() as patch:  # training code that trains other weights from the same settings
        patch.setattr("llm_cloud.train.TRAINING_RECIPE", 3)
        assert llm_cache_folder(cfg) != folder
    lines = (shop / "sequential_data.txt").read_text().splitlines()
    (shop / "sequential_data.txt").write_text("\n".join([*lines[:-1], lines[-1] + " 1"]) + "\n")
    assert llm_cache_folder(cfg) != folder  # one interaction more: the old LLM trained on another split


def test_a_damaged_cached_llm_names_its_folder_and_the_remedy(
    federation_config: RunConfig, federation_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = llm_cache_folder(federation_config)
    shutil.copytree(federation_checkpoint, folder)
    (folder / TRAIN_RESULT_FILE).write_text("{}")
    weights = folder / "model.safetensors"  # cut short, as by a full disk: refused before a service loads it
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(LSC4RecError, match=r"cached LLM .* is damaged .*model\.safetensors is damaged"):
        llm_checkpoint(federation_config)
    (folder / "item_map.json").unlink()
    with pytest.raises(LSC4RecError, match=r"cached LLM checkpoint .* is damaged .* Delete that folder"):
        llm_checkpoint(federation_config)


def test_a_checkpoint_from_other_data_is_refused_before_the_service_starts(
    federation_config: RunConfig, federation_checkpoint: Path, tmp_path: Path
) -> None:
    other = federation_config.override(["data.numbering=random"])  # same users, items renumbered
    refused = pytest.raises(ConfigError, match="--checkpoint: must be trained on the same prepared data")
    with refused, candidate_service(other, federation_checkpoint, "transformers", tmp_path):
        pass
    assert not (tmp_path / "service.log").exists()


def test_resume_refuses_other_model_or_data_settings(federation_config: RunConfig, tmp_path: Path) -> None:
    done = _with_checkpoint(tmp_path / "done")
    federation_config.save(done / "config.json")  # what the ServerApp wrote when the run started
    resumed = federation_config.override([f"federation.run_dir={done}", "federation.resume=true"])
    assert run_folder(resumed.override(["federation.rounds=20"])) == done  # more rounds: fine
    changes = ("srm.hidden=16", "data.lag=1", "seed=3", "llm.k=20", "federation.num_nodes=3")
    # the request budget's window in the checkpoint holds sums of these shapes
    shapes = ("federation.measure=kendall", "federation.bins=20", "federation.alpha_steps=5")
    for change in (*changes, *shapes):
        key = change.split("=")[0]
        with pytest.raises(ConfigError, match=rf"^config {key}: must stay .* to resume {done}, which was"):
            run_folder(resumed.override([change]))
    # the report says who sent the cloud fresh lists for the whole run: rounds that sent every user's view stay
    named = resumed.override(["federation.measure=confidence"])
    named.save(done / "config.json")
    with pytest.raises(ConfigError, match=r"^config federation\.fresh_lists: must stay 'all' to resume"):
        run_folder(named.override(["federation.fresh_lists=gated"]))


def test_a_resume_names_a_changed_setting_before_its_symptoms(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    """Another dataset or SRM is named as the change it is, not as missing data or a checkpoint of other shapes."""
    done = _with_checkpoint(tmp_path / "done")
    federation_config.save(done / "config.json")
    resumed = federation_config.override([f"federation.run_dir={done}", "federation.resume=true"])
    elsewhere = tmp_path / "no-such-data"  # preparing it first would fail on the data, not on the change
    with pytest.raises(ConfigError, match=r"config data\.dataset: must stay .* this run sets .*no-such-data"):
        run_federation(resumed.override([f"data.dataset={elsewhere}"]))
    with pytest.raises(
        ConfigError, match=r"config srm\.model: must stay 'sasrec' .* this run sets 'gru4rec'"
    ):
        run_folder(resumed.override(["srm.model=gru4rec"]), num_items=40)  # not its shapes


def test_a_resumed_launch_says_which_of_the_runs_rounds_it_runs(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    done = _with_checkpoint(tmp_path / "done", server_round=3)
    resumed = federation_config.override(["federation.resume=true", "federation.rounds=5"])
    assert rounds_ahead(resumed, done).startswith("rounds 4 to 5 of 5, resumed after round 3")
    assert rounds_ahead(resumed.override(["federation.rounds=4"]), done).startswith("round 4 of 4, resumed")
    assert rounds_ahead(resumed.override(["federation.rounds=3"]), done).endswith(
        "the final evaluation alone"
    )
    assert rounds_ahead(federation_config.override(["federation.rounds=1"]), tmp_path) == "1 round"


def test_flwr_runs_output_is_shown_less_the_advice_that_misleads_here(capsys: pytest.CaptureFixture) -> None:
    """Flower's "change federation size" advice and Ray's GPU tip go; every other line, and the exit code, stay."""
    script = (
        "import sys; print('\\x1b[92mINFO \\x1b[0m: [ROUND 1/2]');"
        "print('WARNING : Since flwr 1.32, default simulated SuperNodes changed from 10 to 2.');"
        "print('INFO : To change federation size, use the following command:');"
        "print('INFO : \\tflwr federation simulation-config @none/default <superlink> --num-supernodes <N>');"
        "print('worker.py:2051: FutureWarning: Tip: In future versions of Ray, Ray will no longer', file=sys.stderr);"
        "print('  warnings.warn(', file=sys.stderr); sys.stderr.flush();"
        "print('INFO : report written'); sys.exit(3)"
    )
    assert run_shown([sys.executable, "-c", script], dict(os.environ)) == 3
    assert capsys.readouterr().out == "INFO : [ROUND 1/2]\nINFO : report written\n"  # piped: no colour codes


def test_resume_reads_what_the_server_will_read_before_anything_starts(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    """A damaged checkpoint or metrics file, or fewer rounds than were run, end in one line up front."""
    done = _with_checkpoint(tmp_path / "done", server_round=3)
    federation_config.save(done / "config.json")
    resumed = federation_config.override(
        [f"federation.run_dir={done}", "federation.resume=true", "federation.rounds=5"]
    )
    with pytest.raises(ConfigError, match=r"federation\.rounds: is 2, below round 3 .* Pass --rounds 3"):
        run_folder(resumed.override(["federation.rounds=2"]))
    metrics = done / "metrics.jsonl"
    metrics.write_text('{"round": 1}\n{"round": 2}\n{"round": 3, "va')  # a crash in the middle of a line
    assert run_folder(resumed) == done  # a torn last line is a round to redo, not an error
    metrics.write_text('{"round": 1}\nnot json\n{"round": 3}\n')
    with pytest.raises(DataFormatError, match=r"metrics\.jsonl:2: is not a round's figures"):
        run_folder(resumed)
    metrics.unlink()
    save_ledger(done, {"releases": 3})
    assert run_folder(resumed) == done and read_ledger(done) == {"releases": 3}
    (done / "checkpoints" / PRIVACY_LEDGER).write_text('{"releases": ')  # the ε spent, unreadable
    assert run_folder(resumed) == done  # a run without noise never reads it, as the ServerApp
    with pytest.raises(DataFormatError, match=r"privacy-ledger\.json: is not a privacy ledger .* restore it"):
        run_folder(resumed.override(["federation.dp_noise=1.0"]))
    (done / "checkpoints" / PRIVACY_LEDGER).unlink()
    weights = done / "checkpoints" / "round-0003.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])  # cut short
    with pytest.raises(DataFormatError, match=r"round-0003\.safetensors: is not a readable round checkpoint"):
        run_folder(resumed)


def test_resume_refuses_a_checkpoint_its_settings_do_not_build(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    """A config.json edited after the checkpoints (or copied from another run) is caught before anything starts."""
    done = tmp_path / "done"
    done.mkdir()
    wide, narrow = (federation_config.override([f"srm.hidden={h}"]) for h in (32, 16))
    save_checkpoint(done, 1, ArrayRecord(build_srm(wide.srm, 40).state_dict()), 0.5)
    narrow.save(done / "config.json")
    resumed = narrow.override([f"federation.run_dir={done}", "federation.resume=true"])
    with pytest.raises(
        ConfigError,
        match=r"does not hold the SRM its settings build \(.*: \(32,\) in the checkpoint, \(16,\) configured",
    ):
        run_folder(resumed, num_items=40)
    wide.save(done / "config.json")
    assert run_folder(wide.override([f"federation.run_dir={done}", "federation.resume=true"]), 40) == done


def test_a_fraction_under_one_node_is_said_before_the_run(federation_config: RunConfig) -> None:
    cfg = federation_config.override(["federation.fraction_train=0.2", "federation.fraction_evaluate=0.5"])
    assert sampling_note(cfg, 10) is None
    assert sampling_note(cfg, 4) == (
        "federation.fraction_train 0.2 of 4 nodes is 0.8 of a node: Flower samples 1 node (its minimum) for it "
        "each round."
    )


def test_resume_config_starts_from_the_runs_own_settings(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    """`--resume DIR` needs no repeat of the run's options: its config.json is the base, overrides on top."""
    done = _with_checkpoint(tmp_path / "done")
    federation_config.override(["srm.model=gru4rec", "federation.rounds=3"]).save(done / "config.json")
    resumed = resume_config(done, ["federation.rounds=5"])
    assert resumed.srm.model == "gru4rec" and resumed.data == federation_config.data
    assert resumed.federation.rounds == 5 and resumed.federation.resume
    assert run_folder(resumed) == done
    with pytest.raises(ConfigError, match=r"--resume: must be a run folder written by run_federation\.sh"):
        resume_config(tmp_path / "not-a-run", [])


def test_a_resumed_run_keeps_its_engine_and_runtime_unless_told_otherwise(tmp_path: Path) -> None:
    """The launcher's options come from the run's launch.json when not given again; the ones given win."""
    assert Launch.chosen(None, None, None) == Launch()  # a new run
    run = _with_checkpoint(tmp_path / "run")
    assert (
        Launch.chosen(None, None, None, run) == Launch()
    )  # no launch.json (a benchmark's run): the defaults
    Launch("vllm", "deployment", True).save(run)
    assert Launch.chosen(None, None, None, run) == Launch("vllm", "deployment", True)
    assert Launch.chosen(None, "simulation", False, run) == Launch("vllm", "simulation", False)
    # eager mode is vLLM's own: a resume on the transformers engine drops it
    assert Launch.chosen("transformers", None, None, run) == Launch("transformers", "deployment", False)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "must hold the launcher's options as written by a run"),
        ('{"engine": "vllm", "colour": "red"}', "must hold the launcher's options as written by a run"),
        ('{"engine": "tgi"}', "engine must be one of transformers|vllm, got 'tgi'"),
        ('{"runtime": "cluster"}', "runtime must be one of simulation|deployment, got 'cluster'"),
        ('{"vllm_eager": "yes"}', "vllm_eager must be true or false, got 'yes'"),
    ],
)
def test_a_damaged_launch_file_is_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / LAUNCH_FILE).write_text(text)
    with pytest.raises(DataFormatError, match=f"^{tmp_path / LAUNCH_FILE}: {message}"):
        Launch.chosen(None, None, None, tmp_path)
    # the remedy the message names: every option given, the file is not needed
    assert Launch.chosen("transformers", "simulation", False, tmp_path) == Launch()


def test_resume_runs_on_the_runtime_the_run_started_with(
    federation_config: RunConfig, tmp_path: Path
) -> None:
    """`--resume DIR` alone continues a deployment run as one: its 24 nodes are refused as 24 supernodes."""
    run = tmp_path / "run"
    run.mkdir()
    federation_config.override(["federation.num_nodes=0"]).save(run / "config.json")
    Launch(runtime="deployment").save(run)
    done = run_module("lsc4rec.cli", "federate", "--resume", str(run))
    assert done.returncode == 2
    assert "with --runtime deployment each node is a flower-supernode process" in done.stderr
    Launch().save(run)  # the transformers engine, which starts no vLLM
    done = run_module("lsc4rec.cli", "federate", "--resume", str(run), "--vllm-eager")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "needs --engine vllm (the resumed run used the transformers engine)" in done.stderr


def test_a_run_that_ends_early_names_the_command_that_continues_it(tmp_path: Path) -> None:
    assert resume_hint(tmp_path) == ""  # nothing checkpointed: nothing to continue
    done = _with_checkpoint(tmp_path / "run")
    assert resume_hint(done) == (
        f" Round 1 is checkpointed: ./run_federation.sh --resume {done} continues from there."
    )


def test_a_run_stopped_by_sigterm_stops_its_service_and_names_the_command_that_continues_it(
    federation_config: RunConfig,
    federation_checkpoint: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``timeout`` or a stopped job mid-run, which ``run_main`` turns into SystemExit (Ctrl-C is a
    KeyboardInterrupt): one line that says how to continue, once the service has stopped.
    """
    seen: dict[str, str] = {}

    def stopped_after_round_one(
        cfg: RunConfig, service_url: str, runtime: str, nodes: int, run_dir: Path, tls: object
    ) -> NoReturn:  # _federate's signature
        assert httpx.get(f"{service_url}/healthz", timeout=5.0).status_code == 200
        seen["url"] = service_url
        _with_checkpoint(run_dir)
        raise SystemExit(143)  # what run_main's SIGTERM handler raises

    monkeypatch.setattr("server.launch.llm_checkpoint", lambda cfg: federation_checkpoint)
    monkeypatch.setattr("server.launch._federate", stopped_after_round_one)
    cfg = federation_config.override([f"out_dir={tmp_path}"])
    with pytest.raises(LSC4RecError, match="interrupted; every process it started is stopped") as stop:
        run_federation(cfg)
    (run_dir,) = tmp_path.glob("federation-*")
    assert str(stop.value).endswith(
        f"Round 1 is checkpointed: ./run_federation.sh --resume {run_dir} continues from there."
    )
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{seen['url']}/healthz", timeout=2.0)


@pytest.mark.slow
def test_a_deployment_superlink_admits_only_registered_supernodes(tmp_path: Path) -> None:
    """Over TLS the SuperLink refuses a box whose key was never registered: it cannot join and exits, while a
    registered one joins (its SuperLink log shows it activated), as on real edge boxes (README)."""
    tls = make_loopback_tls(tmp_path / "tls")
    with superlink(tmp_path, "deployment", tls) as (address, env):
        with supernodes(address, 1, tmp_path, tls, env):  # registered, then started
            log = tmp_path / "superlink.log"
            deadline = time.monotonic() + 60
            while "Activated node_id" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert "Activated node_id" in log.read_text()
        private, _ = make_node_key(tmp_path / "tls" / "stranger")  # a key nobody registered
        command = [
            str(Path(sys.executable).parent / "flower-supernode"),
            *("--root-certificates", str(tls.ca), "--auth-supernode-private-key", str(private)),
            *("--superlink", address, "--port", str(free_port()), "--max-retries", "1"),
        ]
        # its log goes to a file, not a pipe: its superexec child would hold a pipe open after it exits
        with open(tmp_path / "stranger.log", "w") as out:
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env, "FLWR_HOME": str(tmp_path / "stranger-home")},  # env: PATH etc.
                start_new_session=True,
            )
        with ManagedServer(address, process):  # stops its process group, superexec included
            assert process.wait(timeout=120) != 0
    assert "No SuperNode found with the given public key" in log.read_text()
