import pytest

from picorl.cli import config_from_args, make_parser
from picorl.config import build_config, dump_toml, load_toml, resolve_auto, to_dict


def parse(*argv):
    return config_from_args(make_parser().parse_args(["train", *argv]))


def test_seed_flag_names_map_to_config():
    c = parse(
        "--model", "tiny-qwen3", "--algo", "rloo", "--k", "4", "--train-difficulty", "6", "--num-tasks", "3",
        "--num-updates", "7", "--lr", "1e-5", "--max-tokens", "64", "--temperature", "0.9", "--lora-rank", "8",
        "--lora-alpha", "16", "--sft-steps", "5", "--eval-every", "2", "--eval-num-tasks", "10", "--name", "x",
    )  # fmt: skip
    assert c.model.model == "tiny-qwen3" and c.algo.algo == "rloo" and c.rollout.k == 4
    assert c.env.train_difficulty == [6] and c.rollout.num_tasks == 3 and c.train.num_updates == 7
    assert c.train.lr == 1e-5 and c.rollout.max_tokens == 64 and c.rollout.temperature == 0.9
    assert c.model.lora_rank == 8 and c.model.lora_alpha == 16 and c.sft.sft_steps == 5
    assert c.eval.eval_every == 2 and c.eval.eval_num_tasks == 10 and c.run.name == "x"


def test_toml_file_then_flags_override(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[rollout]\nk = 3\nmax_tokens = 50\n[model]\nmodel = "tiny-llama"\nlora_rank = 4\n')
    c = parse("--config", str(f), "--k", "5")
    assert c.rollout.k == 5 and c.rollout.max_tokens == 50 and c.model.model == "tiny-llama"


def test_saved_config_round_trips(tmp_path):
    c = resolve_auto(parse("--k", "4", "--eval-tiers", "1", "2"), on_gpu=False)
    f = tmp_path / "config.toml"
    f.write_text(dump_toml(c))
    assert to_dict(build_config(load_toml(f))) == to_dict(c)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rollout": {"k": 0}}, "k must be >= 1"),
        ({"env": {"train_difficulty": [11]}}, "tiers in 1..10"),
        ({"rollout": {"kk": 3}}, "did you mean 'k'"),
        ({"train": {"k": 3}}, "belongs in [rollout]"),
        ({"nope": {}}, "unknown config section"),
        ({"model": {"dtype": "int3"}}, "dtype must be"),
        ({"algo": {"kl_reference": "sft"}}, "kl_reference must be"),
        ({"sft": {"sft_stitch_fraction": 1.5}}, "sft_stitch_fraction must be in [0, 1]"),
        (
            {"model": {"full_finetune": True}, "algo": {"beta": 0.1, "kl_reference": "base"}},
            "a full fine-tune has no adapter: use --kl-reference start",
        ),
    ],
)
def test_bad_config_gives_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        build_config(overrides)


def test_auto_fields_resolve_per_device():
    cpu = resolve_auto(build_config(), on_gpu=False)
    gpu = resolve_auto(build_config(), on_gpu=True)
    assert cpu.eval.eval_num_tasks < gpu.eval.eval_num_tasks == 200
    assert cpu.eval.eval_max_tokens == cpu.rollout.max_tokens
    assert cpu.eval.eval_tiers == [1, 2]
    explicit = resolve_auto(build_config({"eval": {"eval_num_tasks": 7}}), on_gpu=True)
    assert explicit.eval.eval_num_tasks == 7


def test_cli_reports_config_errors_without_traceback(capsys):
    from picorl.cli import main

    assert main(["train", "--k", "0"]) == 2
    assert "k must be >= 1" in capsys.readouterr().err


def test_readme_config_reference_is_current():
    from pathlib import Path

    from picorl.cli import config_reference

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert config_reference() in readme, (
        "regenerate the README's reference with picorl.cli.config_reference()"
    )


def test_shipped_configs_load():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.toml"))
    assert configs
    for path in configs:
        config = build_config(load_toml(path))
        assert config.model.model
    seed = build_config(load_toml(Path(__file__).parents[1] / "configs/seed-qwen3-4b.toml"))
    assert (seed.model.lora_rank, seed.model.lora_alpha, seed.rollout.k, seed.rollout.num_tasks) == (
        32,
        64,
        8,
        8,
    )
    assert (seed.train.lr, seed.sft.sft_steps, seed.rollout.max_tokens, seed.env.train_difficulty) == (
        5e-6,
        50,
        2048,
        [6],
    )
    assert seed.algo.algo == "grpo" and seed.algo.scale_rewards == "none"


@pytest.mark.parametrize(
    "toml, message",
    [
        ("[rollout]\nk = 2.5\n", "[rollout] k must be an integer, got 2.5"),
        ('[rollout]\nk = "two"\n', "[rollout] k must be an integer, got 'two'"),
        ('[run]\nresume = "yes"\n', "[run] resume must be true or false, got 'yes'"),
        ("[train]\nlr = true\n", "[train] lr must be a number"),
        ('[env]\ntrain_difficulty = ["1"]\n', "[env] train_difficulty must be a list"),
        ("[model]\nmodel = 3\n", "[model] model must be a string"),
        ("[rollout]\nnum_tasks = 1.5\n", "leave it out for the default"),
    ],
)
def test_toml_types_are_checked_with_the_key_named_and_no_run_folder(
    tmp_path, monkeypatch, capsys, toml, message
):
    from picorl.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(toml)
    assert main(["train", "--config", "c.toml", "--name", "x"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"], (
        "nothing written before the config is valid"
    )


def test_types_widen_where_safe():
    c = build_config({"train": {"lr": 1}, "env": {"train_difficulty": 3}})
    assert c.train.lr == 1.0 and isinstance(c.train.lr, float) and c.env.train_difficulty == [3]


@pytest.mark.parametrize("algo", ["grpo", "dr_grpo", "rloo"])
def test_k1_with_a_group_baseline_is_refused_with_a_suggestion(algo):
    with pytest.raises(ValueError, match="--algo reinforce"):
        build_config({"rollout": {"k": 1}, "algo": {"algo": algo}})
    assert build_config({"rollout": {"k": 1}, "algo": {"algo": "reinforce"}}).rollout.k == 1
    with pytest.raises(ValueError, match="zero_variance"):
        build_config({"rollout": {"k": 1}, "algo": {"algo": "reinforce", "zero_variance": "drop"}})


def test_flag_mistakes_cost_two_lines_not_the_usage(capsys):
    from picorl.cli import main

    assert main(["train", "--lr", "-1e-4"]) == 2
    err = capsys.readouterr().err
    assert "lr must be > 0, got -0.0001" in err and len(err.splitlines()) == 1
    for argv, message in ((["train", "--kk", "3"], "did you mean --k?"), (["train", "--k", "2.5"], "--k")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 2, err


def test_every_subcommand_prints_its_help(capsys):
    """argparse %-formats help strings: an option documented with a bare "%" once crashed --help."""
    from picorl.cli import main, make_parser

    commands = make_parser()._subparsers._group_actions[0].choices
    for command in commands:
        with pytest.raises(SystemExit) as e:
            main([command, "--help"])
        assert e.value.code == 0, command
        assert "usage: picorl " + command in capsys.readouterr().out
