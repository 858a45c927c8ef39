"""`distill run --config job.toml`, `--x / --no-x` booleans and the grouped `--help`."""

import json
from pathlib import Path

import pytest

from distill import options
from distill.cli import main, parser, run_config
from distill.config import GROUPS, RunConfig
from distill.options import load_config_file

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "job.example.toml"


def _cfg(tmp_path: Path, toml: str | None, *flags: str) -> RunConfig:
    """The effective config of `distill run` with `toml` as its --config file (None: no file) and `flags`."""
    argv = ["run", "--out", str(tmp_path / "b"), *flags]
    if toml is not None:
        path = tmp_path / "job.toml"
        path.write_text(toml)
        argv += ["--config", str(path)]
    return run_config(parser().parse_args(argv))


def _exit_2(tmp_path: Path, toml: str, capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a `distill run --config` that must stop before any work."""
    path = tmp_path / "job.toml"
    path.write_text(toml)
    assert main(["run", "--out", str(tmp_path / "b"), "--config", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("distill: error: --") and "--config" in lines[0], lines
    assert not (tmp_path / "b").exists()
    return lines[0]


def test_file_values_then_typed_flags_win(tmp_path):
    toml = "epochs = 7\npatience = 3\nteacher = 'gat'\nlr = 1\n"
    cfg = _cfg(tmp_path, toml)
    assert (cfg.epochs, cfg.patience, cfg.teacher, cfg.lr) == (7, 3, "gat", 1.0)
    assert cfg.student_hidden == RunConfig().student_hidden  # not in the file: the default
    # A typed flag wins even when it spells the default; flags not typed leave the file's values alone.
    cfg = _cfg(tmp_path, toml, "--epochs", "300", "--seed", "4")
    assert (cfg.epochs, cfg.seed, cfg.patience, cfg.teacher) == (300, 4, 3, "gat")


def test_no_file_keeps_the_defaults(tmp_path):
    assert _cfg(tmp_path, None) == RunConfig()
    assert _cfg(tmp_path, None, "--kd", "none").kd == "none"


def test_run_table_and_kebab_keys(tmp_path):
    cfg = _cfg(tmp_path, "[run]\nteacher-layers = 3\nstudent_hidden = 8\nalpha = 0.2\n")
    assert (cfg.teacher_layers, cfg.student_hidden, cfg.alpha) == (3, 8, "0.2")


@pytest.mark.parametrize(("toml", "needles"), [
    ("teacher_layer = 3\n", ["unknown key 'teacher_layer'", "did you mean 'teacher_layers'"]),
    ("bogus = 1\n", ["unknown key 'bogus'", "known keys: dataset, split"]),
    ("epochs = 'many'\n", ["epochs = 'many' (str) must be an integer"]),
    ("epochs = 2.5\n", ["epochs = 2.5 (float) must be an integer"]),
    ("teacher_residual = 'no'\n", ["teacher_residual = 'no' (str) must be true or false"]),
    ("lr = true\n", ["lr = True (bool) must be a number"]),
    ("dataset = 5\n", ["dataset = 5 (int) must be a string"]),
    ("epochs = 5\n[run]\nseed = 1\n", ["key 'epochs' is outside the [run] table"]),
    ("epochs = 5\nepochs-x = \n", ["not valid TOML"]),
    ("epochs = 5\n'epochs' = 6\n", ["not valid TOML"]),
    ("fanout = 3\nfan-out = 4\n", ["unknown key 'fan-out'"]),
    ("fanout = 3\n'fanout' = 4\n", ["not valid TOML"]),
    ("student_layers = 3\nstudent-layers = 4\n", ["'student_layers' is set twice"]),
    ("epochs = 0\n", ["--epochs 0 must be >= 1", "set as epochs in --config"]),
    ("student = 'transformer'\n", ["--student 'transformer' is not one of"]),
])
def test_bad_file_exits_2_with_one_line(tmp_path, capsys, toml, needles):
    line = _exit_2(tmp_path, toml, capsys)
    for needle in needles:
        assert needle in line, line


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "b"), "--config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read the file" in capsys.readouterr().err


def test_python_without_tomllib_refuses_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(options, "tomllib", None)
    assert "needs Python 3.11" in _exit_2(tmp_path, "epochs = 5\n", capsys)


def test_example_file_loads_and_validates():
    values = load_config_file(EXAMPLE)
    cfg = RunConfig.from_dict(values)
    assert cfg.dataset == "npz:tolokers" and cfg.kd == "auto"
    assert cfg.kd_sets == (("response",), ("response", "structure"))
    assert set(values) <= {f.name for f in options.cli_fields()}


def test_boolean_flags(tmp_path, capsys):
    assert _cfg(tmp_path, None).teacher_residual is True
    assert _cfg(tmp_path, None, "--no-teacher-residual").teacher_residual is False
    assert _cfg(tmp_path, "teacher_residual = false\n", "--teacher-residual").teacher_residual is True
    assert _cfg(tmp_path, "teacher_residual = false\n").teacher_residual is False
    assert "deprecated" not in capsys.readouterr().err
    # The form before --no-x still parses, with a warning naming the new spelling.
    assert _cfg(tmp_path, None, "--teacher-residual", "false").teacher_residual is False
    assert "write --no-teacher-residual" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        _cfg(tmp_path, None, "--teacher-residual", "maybe")
    assert stop.value.code == 2 and "'maybe' is not a boolean" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _cfg(tmp_path, None, "--no-teacher-residual", "true")


@pytest.mark.parametrize("command", ["run", "select"])
def test_help_is_grouped(command, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args([command, "--help"])
    text = capsys.readouterr().out
    headers = [text.index(f"\n{name}:\n") for name in GROUPS]
    assert headers == sorted(headers)  # every group, in GROUPS order
    ends = [*headers[1:], len(text)]
    sections = {name: text[a:b] for name, a, b in zip(GROUPS, headers, ends, strict=True)}
    for name, flag in [("data", "--dataset"), ("teacher", "--gcnii-layers"), ("student", "--fanout"),
                       ("distillation", "--kd"), ("training", "--epochs"), ("job", "--config")]:
        assert f"\n  {flag} " in sections[name], (name, flag)
    assert "--teacher-residual, --no-teacher-residual" in text and "(default: 300)" in text


def test_refresh_takes_no_config(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["refresh", "--bundle", "x", "--out", "y", "--dataset", "synthetic", "--config", "j"])
    assert "unrecognized arguments: --config" in capsys.readouterr().err


def test_manifest_records_the_effective_config(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[run]\ndataset = 'synthetic:nodes=200'\nstudent = 'mlp'\nteacher = 'gcn'\n"
                    "teacher_layers = 2\nteacher_hidden = 16\nstudent_hidden = 16\nepochs = 20\npatience = 5\n"
                    "seed = 9\n")
    out = tmp_path / "b"
    assert main(["run", "--config", str(path), "--out", str(out), "--seed", "1", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    recorded, decided = manifest["config"], manifest["metrics"]["teacher"]["input_dropout"]
    # --input-dropout auto is recorded as what the run decided, so a refresh retrains the same way.
    assert recorded["input_dropout"] == ("on" if decided["on"] else "off") and decided["rule"] == "probe"
    expected = RunConfig.from_dict({**load_config_file(path), "seed": 1}).to_dict()
    assert recorded == {**expected, "input_dropout": recorded["input_dropout"]}
    assert (recorded["student"], recorded["epochs"], recorded["seed"]) == ("mlp", 20, 1)

