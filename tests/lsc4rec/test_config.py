import json
from pathlib import Path

import numpy as np
import pytest

from lsc4rec.config import FederationConfig, RunConfig, load_config
from lsc4rec.errors import ConfigError, DataFormatError


def test_layers_defaults_file_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('seed = 7\n[srm]\nhidden = 32\nmodel = "gru4rec"\n')
    cfg = load_config(path, ["srm.hidden=16", "data.lag=1"])
    assert (cfg.seed, cfg.srm.model, cfg.srm.hidden, cfg.data.lag) == (7, "gru4rec", 16, 1)
    assert cfg.train == RunConfig().train


def test_rules_across_keys_see_the_file_and_the_overrides_together(tmp_path: Path) -> None:
    """A file asking for titles is fine once --set gives a pretrained base (scratch has no titles)."""
    path = tmp_path / "run.toml"
    path.write_text('[llm]\ntemplate = "titles"\n')
    assert load_config(path, ["llm.base=/models/smollm2"]).llm.template == "titles"
    with pytest.raises(ConfigError, match=r"llm\.template: must be items for the scratch model"):
        load_config(path)


def test_flat_roundtrip_matches_flower_run_config() -> None:
    cfg = RunConfig().override(["train.lr=0.01", "srm.dropout=0.5"])
    assert RunConfig.from_flat(cfg.to_flat()) == cfg
    assert cfg.to_flat()["srm.dropout"] == 0.5


@pytest.mark.parametrize(
    ("pair", "match"),
    [
        ("srm.unknown=1", "srm.unknown: is not a known key"),
        ("nothing=1", "nothing: is not a known key"),
        ("srm.hidden=wide", "srm.hidden: must be of type int"),
        ("srm.model=bert", "srm.model: must be sasrec|gru4rec|din"),
        ("data.numbering=alphabetic", "data.numbering"),
        ("federation.collab_weight=-0.5", "federation.collab_weight: must be >= 0"),
        ("federation.alpha_margin_se=-1", "federation.alpha_margin_se: must be >= 0"),
        ("llm.refit_epochs=-1", "llm.refit_epochs: must be >= 0"),
        ("llm.target_window=-1", "llm.target_window: must be >= 0"),
        ("srm.hidden", "must look like key=value"),
        # zeros that used to fail deep inside training (division by zero, an empty range step)
        ("srm.heads=0", "srm.heads: must be >= 1"),
        ("llm.heads=0", "llm.heads: must be >= 1"),
        ("train.eval_every=0", "train.eval_every: must be >= 1"),
        ("llm.epochs=0", "llm.epochs: must be >= 1"),
        ("llm.batch_size=0", "llm.batch_size: must be >= 1"),
        ("federation.local_batch_size=0", "federation.local_batch_size: must be >= 1"),
        ("federation.bins=0", "federation.bins: must be >= 1"),
        ("federation.budget_window=0", "federation.budget_window: must be >= 1"),
        ("federation.timeout_s=0", "federation.timeout_s: must be > 0"),
        # sizes that every node's reply multiplies: in range, they used to run out of memory mid-run
        ("federation.bins=1000", "federation.bins: must be at most 181 with federation.alpha_steps=10"),
        ("federation.alpha_steps=100", "federation.bins: must be at most 19 with federation.alpha_steps=100"),
        # keys that used to be ignored without a word
        ("seed.x=1", "seed.x: is not a known key: seed takes a value"),
        ("data=3", "data: is a section"),
        # a boolean is only a boolean: no truthy strings, no numbers but 0 and 1
        ("federation.resume=maybe", "federation.resume: must be of type bool"),
        # values that used to pass the checks and fail later, or silently
        ("train.lr=inf", "train.lr: must be a finite float, got 'inf'"),
        ("federation.timeout_s=nan", "federation.timeout_s: must be a finite float"),
        ("llm.k=201", r"llm.k: must be in \[1, 200\]"),
        ("seed=-1", r"seed: must be in \[0, 2\*\*32 - 1\]"),
        ("seed=4294967296", "seed: must be in"),
        ("train.weight_decay=-1", "train.weight_decay: must be >= 0"),
        ("llm.weight_decay=-0.5", "llm.weight_decay: must be >= 0"),
        ("llm.lora_alpha=-5", "llm.lora_alpha: must be >= 1"),
        ("llm.template=titles", "llm.template: must be items for the scratch model"),
        ("data.dataset=", "data.dataset: must name a dataset or a path"),
        ("out_dir=", "out_dir: must name a folder"),
        ("federation.rounds=99999999999999999999", "federation.rounds: must fit in a 64-bit integer"),
        # a strategy's own setting given to another one would be ignored
        (
            "federation.proximal_mu=0.5",
            r"federation.proximal_mu: is used only by federation.strategy=fedprox",
        ),
        ("federation.server_momentum=0.9", "federation.server_momentum: is used only by .*=fedavgm"),
        ("federation.server_lr=0.5", r"federation.server_lr: is used only by .*=fedadam\|fedavgm"),
    ],
)
def test_bad_keys_and_values_name_the_key(pair: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig().override([pair])


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        (["federation.dp_noise=-1"], "federation.dp_noise: must be >= 0"),
        (["federation.dp_clip=0"], "federation.dp_clip: must be > 0"),
        (["federation.dp_delta=1"], r"federation.dp_delta: must be in \(0, 1\)"),
        # the accountant's ε holds only for a plain mean of clipped updates, and nothing else leaving the node
        (["federation.dp_noise=1", "federation.strategy=fedadam"], "federation.strategy: must be fedavg"),
        (
            ["federation.dp_noise=1", "federation.item_weighted=true"],
            "federation.item_weighted: must be false",
        ),
        (["federation.dp_noise=1", "federation.max_update_norm=5"], "federation.max_update_norm: must be 0"),
        # a clip or δ without noise would promise a privacy the run does not have
        (["federation.dp_clip=0.5"], r"federation.dp_clip: is used only with federation.dp_noise > 0"),
        (["federation.dp_delta=1e-6"], r"federation.dp_delta: is used only with federation.dp_noise > 0"),
    ],
)
def test_private_runs_take_only_settings_their_guarantee_holds_for(pairs: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig().override(pairs)


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        (["federation.fresh_lists=some"], r"federation\.fresh_lists: must be all\|gated, got 'some'"),
        # auto compares the signals on every user's fresh list, which a gated fleet does not fetch
        (
            ["federation.fresh_lists=gated"],
            "federation.measure: must name one request signal with fresh_lists",
        ),
    ],
)
def test_a_gated_fleet_needs_one_named_request_signal(pairs: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        RunConfig().override(pairs)


def test_a_gated_fleet_with_a_named_signal_is_accepted() -> None:
    fed = RunConfig().override(["federation.fresh_lists=gated", "federation.measure=drift"]).federation
    assert (fed.fresh_lists, fed.measures) == ("gated", ("drift",))


def test_a_private_fedprox_run_is_accepted() -> None:
    assert RunConfig().override(["federation.dp_noise=1", "federation.strategy=fedprox"]).federation.private


def test_bad_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text("seed = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="--config: must be a readable TOML file"):
        load_config(tmp_path)  # a folder
    (tmp_path / "latin1.toml").write_bytes("# caf\xe9\nseed = 1\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not valid TOML in UTF-8"):
        load_config(tmp_path / "latin1.toml")


@pytest.mark.parametrize(
    ("toml", "match"),
    [
        ("[srm]\nhidden = true\n", "srm.hidden: must be of type int, got True"),
        ("[federation]\nresume = 2\n", "federation.resume: must be of type bool, got 2"),
        ("[train]\nlr = false\n", "train.lr: must be a finite float"),
        ("out_dir = true\n", "out_dir: must be of type str, got True"),  # not a folder named "True"
        ("[data]\ndataset = 5\n", "data.dataset: must be of type str, got 5"),
        ("[data]\ndataset = {}\n", r"data.dataset: must be of type str, got \{\}"),  # not the default
        (f"[federation]\nbudget = {10**400}\n", "federation.budget: must be a finite float"),
        ('"data.kcore" = 3\n[data]\nkcore = 4\n', "data.kcore: is set twice in the file"),
    ],
)
def test_toml_types_do_not_mix(tmp_path: Path, toml: str, match: str) -> None:
    (tmp_path / "run.toml").write_text(toml)
    with pytest.raises(ConfigError, match=match):
        load_config(tmp_path / "run.toml")


def test_toml_booleans_empty_sections_and_a_bom_are_read(tmp_path: Path) -> None:
    assert load_config(None, ["federation.resume=1"]).federation.resume is True
    (tmp_path / "sections.toml").write_text("[data]\n[federation]\nrounds = 3\n")  # an empty section: fine
    assert load_config(tmp_path / "sections.toml").federation.rounds == 3
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbfseed = 3\n")  # as a Windows editor saves it
    assert load_config(tmp_path / "bom.toml").seed == 3


def test_a_saved_config_that_is_refused_names_its_file(tmp_path: Path) -> None:
    """Its errors are the file's, not the command line's: they name it, so the user knows what to mend."""
    saved = tmp_path / "config.json"
    saved.write_text('{"data": {"typo": 1}}')
    with pytest.raises(
        DataFormatError, match=r"config\.json: holds a setting that is refused \(config data\.typo"
    ):
        RunConfig.load(saved)


def test_a_saved_config_that_predates_a_setting_reads_the_value_its_run_went_by(tmp_path: Path) -> None:
    """A run begun before the α margin chose validation's best α: resumed, it must not switch rules midway."""
    saved = tmp_path / "config.json"
    RunConfig().override(["federation.alpha_margin_se=2"]).save(saved)
    assert RunConfig.load(saved).federation.alpha_margin_se == 2.0  # written with it: kept
    tree = json.loads(saved.read_text())
    del tree["federation"]["alpha_margin_se"]
    saved.write_text(json.dumps(tree))
    assert RunConfig.load(saved).federation.alpha_margin_se == 0.0  # today's default is 1
    assert RunConfig.load(saved).override(["federation.alpha_margin_se=1"]).federation.alpha_margin_se == 1.0


def test_flower_run_config_in_pyproject_matches_code_defaults() -> None:
    import tomllib
    from pathlib import Path

    from flwr.common.config import flatten_dict

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    flower = flatten_dict(pyproject["tool"]["flwr"]["app"]["config"])
    assert flower == RunConfig().to_flat()
    assert RunConfig.from_flat(flower) == RunConfig()


@pytest.mark.parametrize("steps", [1, 3, 10, 20])
def test_alpha_grid_is_bit_for_bit_the_linspace_earlier_runs_chose_alpha_from(steps: int) -> None:
    """Fused scores and the α chosen on validation must not move by a rounding difference in the grid."""
    alphas = np.array(FederationConfig(alpha_steps=steps).alphas)
    assert alphas.tobytes() == np.linspace(0.0, 1.0, steps + 1).tobytes()
