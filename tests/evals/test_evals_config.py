import pytest

from dd_prompting.evals.cli import main, make_parser
from dd_prompting.evals.config import EvalConfig, load_config

TOML = """
output_dir = "out"
limit = 20
threads = 4

[[models]]
name = "mini"
model = "openai/gpt-4o-mini"
api_key_env = "OPENAI_API_KEY"

[[models]]
name = "vllm"
model = "openai/meta-llama/Llama-3.1-8B-Instruct"
api_base = "http://localhost:8000/v1"

[[strategies]]
kind = "cot"
demos = 8

[[strategies]]
kind = "decomposed"
mode = "iterative"

[[datasets]]
kind = "gsm8k"

[[datasets]]
kind = "file"
name = "svamp"
path = "svamp.json"
question = ["Body", "Question"]
answer = "Answer"
"""

YAML = """
output_dir: out
limit: 20
threads: 4
models:
  - {name: mini, model: openai/gpt-4o-mini, api_key_env: OPENAI_API_KEY}
  - {name: vllm, model: openai/meta-llama/Llama-3.1-8B-Instruct, api_base: "http://localhost:8000/v1"}
strategies:
  - {kind: cot, demos: 8}
  - {kind: decomposed, mode: iterative}
datasets:
  - {kind: gsm8k}
  - {kind: file, name: svamp, path: svamp.json, question: [Body, Question], answer: Answer}
"""


def test_toml_and_yaml_configs_read_the_same(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    (tmp_path / "c.yaml").write_text(YAML)
    from_toml, from_yaml = load_config(tmp_path / "c.toml"), load_config(tmp_path / "c.yaml")
    assert from_toml == from_yaml
    assert [s.name for s in from_toml.strategies] == ["cot", "decomposed-iterative"]
    assert [d.name for d in from_toml.datasets] == ["gsm8k-test", "svamp"]
    assert from_toml.datasets[1].question == ["Body", "Question"]
    assert from_toml.models[1].default_adapter == "chat"


def test_flags_override_the_file(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    args = vars(make_parser().parse_args(["run", "c.toml", "--limit", "5", "--split", "train", "--max-cost", "0.5",
                                          "--models", "mini", "--no-plots"]))
    args = {key: value for key, value in args.items() if key not in ("command", "config", "verbose")}
    config = load_config(tmp_path / "c.toml", overrides=args)
    assert (config.limit, config.max_cost, config.plots, config.threads) == (5, 0.5, False, 4)
    assert config.datasets[0].split == "train" and config.datasets[0].name == "gsm8k-train"
    assert [m.name for m in config.models] == ["mini"]


@pytest.mark.parametrize("text, message", [
    ("[[models]]\nmodel = 'x'\napi_key = 'sk-123'\n", "api_key_env"),
    ("[[models]]\nmodel = 'x'\ntemprature = 0.5\n",
     r"unknown setting models\[0\].temprature; did you mean models\[0\].temperature\?"),
    ("[[models]]\nname = 'mini'\nmodel = 'x'\nkind = 'remote'\n",
     r"models\[mini\].kind must be one of \['api', 'local', 'student'\], got 'remote'"),
    ("[[models]]\nmodel = 'x'\nthreads = 'four'\n", r"models\[0\].threads must be an int or none, got 'four'"),
    ("[[strategies]]\nkind = 'cot'\ndemos = 1.5\n", r"strategies\[0\].demos must be an int or a str, got 1.5"),
    ("[[datasets]]\nkind = 'file'\npath = 'a.csv'\nquestion = ['Body', 2]\n",
     r"datasets\[0\].question\[1\] must be a str, got 2"),
    ("dry_run = 'yes'\n", "dry_run must be true or false, got 'yes'"),
    ("limt = 3\n", r"unknown setting limt; did you mean limit\?"),
    ("[[strategies]]\nkind = 'tree-of-thought'\n", "kind must be one of"),
    ("[[strategies]]\nkind = 'decomposed'\nmode = 'parallel'\n", r"strategies\[0\].mode must be one of \['joint', 'iterative'\], got 'parallel'"),
    ("[[datasets]]\nkind = 'file'\n", "needs path"),
    ("[[models]]\nmodel = 'a'\n[[models]]\nmodel = 'a'\n", "names must be unique"),
    ("[[models]]\nmodel = 'a'\napi_key_env = 'sk-live-123'\n", "NAME of an environment variable"),
    ("threads = 0\n", "threads must be at least 1"),
])
def test_bad_configs_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as raised:
        load_config(path)
    assert str(path) in str(raised.value)


def test_a_filter_naming_an_unknown_model_fails(tmp_path):
    (tmp_path / "c.toml").write_text(TOML)
    with pytest.raises(ValueError, match=r"only_models: unknown names \['gpt-5'\]"):
        load_config(tmp_path / "c.toml", overrides={"only_models": "gpt-5"})


def test_empty_sections_fail_before_running():
    from dd_prompting.evals.harness import Harness

    with pytest.raises(ValueError, match="no models"):
        Harness(EvalConfig(strategies=[{"kind": "cot"}], datasets=[{"kind": "gsm8k"}]))


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["report", "--help"]])
def test_cli_help_exits_zero(argv, capsys):
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_cli_reports_a_bad_config_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("limt = 3\n")
    assert main(["run", str(path)]) == 1
    assert "unknown setting limt; did you mean limit?" in capsys.readouterr().err


def test_builtin_demos_of_a_decomposed_strategy_are_the_math_worked_examples():
    # The strategy's answer field is text, which alone no longer picks the arithmetic examples.
    from dd_prompting.demos import WORKED_EXAMPLES
    from dd_prompting.evals.config import StrategyConfig
    from dd_prompting.evals.strategies import build_program

    for mode in ("joint", "iterative"):
        program = build_program(StrategyConfig(kind="decomposed", mode=mode, demos="builtin"), [])
        assert len(program.decompose.demos) == len(WORKED_EXAMPLES)
