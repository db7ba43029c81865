"""The ``taoism`` command line: each command's main path, its bad-input errors, help and exit codes.

Commands run in-process through Click's CliRunner on small models (small_cnn, tiny batches, one
repeat); one test runs the installed ``taoism`` script as a real subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import taoism
from taoism.cli import EXIT_CODES, build_app, main
from taoism.cli._app import COMMANDS, command_modules
from taoism.errors import ConfigError

SMALL = ["--model", "small_cnn", "--dataset-shape", "mnist"]
FAST = ["--repeats", "1", "--warmup", "0"]


def invoke(*args: str, env: dict[str, str] | None = None, app: click.Group | None = None):
    """Run ``taoism ARGS`` in-process; the result has exit_code, stdout and stderr."""
    return CliRunner().invoke(app or build_app(), list(args), env=env, catch_exceptions=False)


def taoism_script() -> str:
    """The ``taoism`` console script installed beside this interpreter (else on PATH)."""
    here = Path(sys.executable).with_name("taoism")
    found = str(here) if here.exists() else shutil.which("taoism")
    assert found, "the taoism console script is not installed: pip install -e ."
    return found


# -- the application ---------------------------------------------------------------------------


def test_every_command_module_is_registered():
    app = build_app()
    assert command_modules()[: len(COMMANDS)] == list(COMMANDS)
    assert list(app.commands) == command_modules()
    assert {"models", "plan", "run", "bench", "attack", "demo"} <= set(app.commands)


def _leaf_commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    """Every command below ``group`` by its full name (``teeslice train``), groups descended."""
    out: dict[str, click.Command] = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.update(_leaf_commands(cmd, f"{prefix}{name} "))
        else:
            out[prefix + name] = cmd
    return out


def test_every_option_has_help_and_shared_output_flags():
    app = build_app()
    assert "teeslice train" in _leaf_commands(app)
    for name, cmd in _leaf_commands(app).items():
        options = {o for p in cmd.params if isinstance(p, click.Option) for o in p.opts}
        if name not in ("completion", "serve"):  # serve runs until SIGTERM: no result to emit
            assert {"--json", "--out", "--quiet", "--verbose"} <= options, name
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                assert p.help and p.help.strip(), f"taoism {name} {p.opts[0]} has no help text"


def test_help_shows_defaults_and_exit_codes():
    top = invoke("--help")
    assert top.exit_code == 0
    text = " ".join(top.stdout.split())
    for code, what in EXIT_CODES.items():
        assert f"{code} {what}" in text
    run = invoke("run", "--help").stdout
    assert "[default: resnet18]" in run and "[default: split]" in run
    assert "[default: 20; x>=1]" in run  # --repeats: default and range
    bench = invoke("bench", "--help").stdout
    assert "[default: 10; x>=1]" in bench and "[default: results/bench]" in bench
    attack = invoke("attack", "--help").stdout
    assert "[default: 50,500]" in attack and "~/.cache/taoism" in attack
    assert "TAOISM_CACHE_DIR" in attack


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"taoism {taoism.__version__} (torch ")


def test_installed_script_exit_codes():
    """The real console script (a typed error: 1, no traceback) and ``python -m taoism.cli``."""
    exe = taoism_script()
    env = {**os.environ, "COLUMNS": "100"}
    bad = subprocess.run(
        [exe, "plan", "--model", "no_such_model"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert bad.returncode == 1
    assert "taoism: error: ConfigError: unknown model 'no_such_model'" in bad.stderr
    assert "Traceback" not in bad.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "taoism.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert ok.returncode == 0 and ok.stdout.startswith(f"taoism {taoism.__version__}")


def test_bench_keeps_both_heaps_by_default(tmp_path):
    """``taoism bench`` times plain and shielded runs under the same allocator: its own process
    and the enclave keep their heap (a real subprocess: the policy is process-wide)."""
    out = subprocess.run(
        [taoism_script(), "bench", *SMALL, "--strategies", "deep:1", *FAST, "--quiet"]
        + ["--out", str(tmp_path / "b"), "--json", str(tmp_path / "b.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp_path / "b.json").read_text())["meta"]
    assert (meta["host_heap"], meta["enclave_heap"]) == ("retained", "retained")


def test_main_returns_the_exit_code(capsys):
    assert main(["--version"]) == 0
    assert main(["no-such-command"]) == 2
    assert "No such command" in capsys.readouterr().err


# -- exit codes of failures --------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, hint",
    [
        (["plan", "--batch", "0"], "--batch"),
        (["run", "--mode", "gpu-ish"], "--mode"),
        (["attack", "--queries", "50,many"], "--queries"),
        (["attack", "--seeds", ","], "--seeds"),
        (["plan", "--no-such-option"], "--no-such-option"),
        (["bench", "--strategies", ""], "--strategies"),
        (["teeslice", "train", "--set", "no_such_field=1"], "unknown TeeSliceConfig field"),
        (["teeslice", "train", "--set", "student_epochs=many"], "student_epochs takes an integer"),
        (["teeslice", "train", "--set", "prune"], "expected FIELD=VALUE"),
        (["teeslice", "train", "--public-task", "imagenet"], "--public-task"),
    ],
)
def test_usage_errors_exit_2(args, hint):
    result = invoke(*args)
    assert result.exit_code == 2
    assert hint in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "--model", "no_such_model"], "ConfigError: unknown model 'no_such_model'"),
        (["plan", *SMALL, "--placement", "{bad"], "ConfigError: --placement is not valid JSON"),
        (
            ["plan", *SMALL, "--placement", '{"no_such_layer": "ENCLAVE"}'],
            "PlacementError: placement names 'no_such_layer'",
        ),
        (
            ["plan", *SMALL, "--placement", "{}", "--strategy", "deep:1"],
            "give one of --placement, --plan, --strategy",
        ),
        (["models", "--quiet", "--verbose"], "--quiet and --verbose contradict"),
        (["models", "--json", "/no/such/dir/models.json"], "directory /no/such/dir does not exist"),
        (["attack", "--dataset", "no_such_data", "--smoke"], "ConfigError"),
        (
            ["teeslice", "train", "--set", "max_proxies=4"],
            "ConfigError: TeeSliceConfig: max_proxies",
        ),
        (
            ["teeslice", "train", "--model", "teeslice_small_cnn"],
            "UnsupportedBackbone: TEESlice cannot",
        ),
        (["teeslice", "train", "--model", "no_such_model"], "ConfigError: unknown model"),
    ],
)
def test_typed_errors_exit_1_with_message_and_no_traceback(args, message):
    result = invoke(*args)
    assert result.exit_code == 1, result.output
    assert "taoism: error: " in result.stderr and message in result.stderr
    assert ("Traceback" in result.stderr) == ("--verbose" in args)


def test_verbose_adds_the_traceback_of_a_typed_error():
    result = invoke("plan", "--model", "no_such_model", "--verbose")
    assert result.exit_code == 1
    assert "Traceback" in result.stderr and "unknown model" in result.stderr


def test_internal_errors_exit_3_and_a_new_command_is_one_registration():
    app = build_app()

    @app.command()
    def broken() -> None:
        """Fails like a bug would."""
        raise RuntimeError("boom")

    @app.command()
    def typed() -> None:
        """Fails like bad input would."""
        raise ConfigError("bad value; pass a good one")

    boom = invoke("broken", app=app)
    assert boom.exit_code == 3 and "RuntimeError: boom" in boom.stderr
    assert "internal error" in boom.stderr
    assert invoke("typed", app=app).exit_code == 1


# -- each command's main path --------------------------------------------------------------------


def test_models_lists_the_zoo(tmp_path):
    from taoism.zoo import list_models

    result = invoke("models", "--json", str(tmp_path / "m.json"), "--out", str(tmp_path / "d"))
    assert result.exit_code == 0
    assert result.stdout.split()[0] == list_models()[0]
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["models"]["small_cnn"] == ["mnist", "digits", "cifar"]
    assert json.loads((tmp_path / "d" / "models.json").read_text()) == data


def test_plan_then_run_the_saved_plan(tmp_path):
    plan_file = tmp_path / "plan.json"
    placement = json.dumps({"features.0": "ENCLAVE", "_default": "GPU"})
    result = invoke(
        "plan",
        *SMALL,
        "--placement",
        placement,
        "--json",
        str(plan_file),
        "--out",
        str(tmp_path / "p"),
    )
    assert result.exit_code == 0, result.output
    assert "features_0" in result.stdout and "expected peak" in result.stdout
    saved = json.loads(plan_file.read_text())
    assert saved["format"] == "taoism-plan/1" and saved["placement"]["features_0"] == "ENCLAVE"
    assert json.loads((tmp_path / "p" / "memory.json").read_text())["fits"] is True

    old = invoke("plan", *SMALL, "--placement", placement, "--save", str(tmp_path / "old.json"))
    assert old.exit_code == 0 and json.loads((tmp_path / "old.json").read_text()) == saved

    out = tmp_path / "run"
    result = invoke(
        "run", *SMALL, "--plan", str(plan_file), *FAST, "--batch", "2", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    assert "shielded / plain" in result.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["mode"] == "split" and run["batch"] == 2
    assert run["plan"]["placement"] == saved["placement"]
    assert run["max_abs_error"] <= 1e-5  # shielded output vs plain PyTorch
    assert json.loads((out / "plan.json").read_text())["placement"] == saved["placement"]


def test_run_quiet_prints_only_the_result(tmp_path):
    result = invoke(
        "run", *SMALL, "--mode", "enclave", *FAST, "--json", str(tmp_path / "r.json"), "--quiet"
    )
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    run = json.loads((tmp_path / "r.json").read_text())
    assert run["mode"] == "enclave" and run["plan"]["totals"]["params_enclave_pct"] == 100.0
    assert run["max_abs_error"] <= 1e-5


def test_bench_writes_its_files(tmp_path):
    out = tmp_path / "bench"
    result = invoke(
        "bench",
        *SMALL,
        "--strategies",
        "deep:1",
        *FAST,
        "--out",
        str(out),
        "--json",
        str(tmp_path / "b.json"),
        "--quiet",
        "--system-heap",  # in-process: leave the test process's malloc alone
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "b.json").read_text())
    assert (data["meta"]["host_heap"], data["meta"]["enclave_heap"]) == ("system", "system")
    assert [r["name"] for r in data["rows"]] == [
        "plain-device",
        "plain-cpu",
        "none",
        "all",
        "deep:1",
    ]
    assert all(r["max_abs_err"] <= 1e-5 for r in data["rows"])  # each vs plain PyTorch
    assert {p.name for p in out.iterdir()} >= {"strategies.json", "strategies.csv"}


def test_demo_checks_every_mode(tmp_path):
    result = invoke("demo", *SMALL, *FAST, "--json", str(tmp_path / "d.json"))
    assert result.exit_code == 0, result.output
    rows = json.loads((tmp_path / "d.json").read_text())["rows"]
    assert len(rows) == 5 and rows[3]["params_enclave_pct"] == 100.0
    assert "[4/4]" in result.stderr


def test_attack_smoke_uses_the_cache_dir(tmp_path):
    """``--cache-dir`` reaches the library; a rerun (cache dir from the env var) is all hits."""
    args = [
        "attack",
        "--model",
        "small_cnn",
        "--dataset",
        "digits",
        "--smoke",
        "--strategies",
        "none",
        "--queries",
        "50",
        "--seeds",
        "0",
        "--quiet",
    ]
    cache = tmp_path / "cache"
    first = invoke(
        *args,
        "--cache-dir",
        str(cache),
        "--out",
        str(tmp_path / "a"),
        "--json",
        str(tmp_path / "a.json"),
    )
    assert first.exit_code == 0, first.output
    table = json.loads((tmp_path / "a.json").read_text())
    assert [r["strategy"] for r in table["rows"]] == ["none", "all"]
    assert table["cache"] == {"dir": str(cache), "job_hits": 0, "job_misses": 2}
    assert (tmp_path / "a" / "attack_small_cnn_digits.csv").is_file()
    again = invoke(
        *args,
        "--out",
        str(tmp_path / "b"),
        "--json",
        str(tmp_path / "b.json"),
        env={"TAOISM_CACHE_DIR": str(cache)},
    )
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "b.json").read_text())["cache"]["job_hits"] == 2


def test_teeslice_train_digits_prints_and_writes_the_figures(tmp_path):
    """``taoism teeslice train``: options reach TeeSliceConfig, figures in JSON, rerun cached."""
    args = [
        "teeslice",
        "train",
        "--model",
        "small_cnn",
        "--dataset",
        "digits",
        "--train-size",
        "600",
        "--public-epochs",
        "2",
        "--victim-epochs",
        "4",
        "--public-task",
        "supervised",
        "--set",
        "teacher_epochs=1",
        "--set",
        "student-epochs=2",
        "--set",
        "prune_every=1",
        "--set",
        "max_prune_steps=1",
        "--set",
        "batch_size=64",
        "--threads",
        "1",
        "--quiet",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    first = invoke(*args, "--json", str(tmp_path / "a.json"), "--out", str(tmp_path / "out"))
    assert first.exit_code == 0, first.output
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["config"]["student_epochs"] == 2 and result["config"]["max_prune_steps"] == 1
    assert result["config"]["seed"] == 0 and result["config"]["kd_weight"] == 1.0  # defaults kept
    assert result["model"] == "small_cnn" and result["dataset"] == "digits"
    assert result["train_size"] + result["val_size"] == 300  # the private half
    after = result["after_prune"]
    assert (
        0 < after["flops_tee_pct"] < 100 and after["proxies"] <= result["before_prune"]["proxies"]
    )
    assert f"{after['test_accuracy']:.4f}" in first.stdout and "%FLOPs TEE" in first.stdout
    assert result["victim_test_accuracy"] > 0.5 and not result["cached"]
    assert json.loads((tmp_path / "out" / "teeslice_small_cnn_digits.json").read_text()) == result
    again = invoke(*args, "--json", str(tmp_path / "b.json"))
    assert again.exit_code == 0, again.output
    cached = json.loads((tmp_path / "b.json").read_text())
    assert cached["cached"] and cached["after_prune"] == after
    assert "(from the cache)" in again.stdout


def test_teeslice_help_lists_the_config_fields():
    text = " ".join(invoke("teeslice", "train", "--help").stdout.split())
    assert "FIELD=VALUE" in text and "feature_weight=10.0" in text and "flops_weight=0.3" in text
    assert "[default: small_cnn]" in text and "TAOISM_CACHE_DIR" in text


def test_completion_script():
    result = invoke("completion", "bash")
    assert result.exit_code == 0 and "_TAOISM_COMPLETE" in result.stdout


def test_serve_subprocess_answers_one_correct_prediction():
    """``taoism serve`` as a real process on a free loopback port: one checked prediction, SIGTERM."""
    import httpx
    import torch

    from taoism.serve.launch import ServerProcess
    from taoism.zoo import get_model

    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with ServerProcess(
        ["--model", "small_cnn", "--strategy", "deep:1", "--max-wait-ms", "1"],
        prefix=[sys.executable, "-m", "taoism.cli", "serve"],
    ) as srv:
        r = httpx.post(f"{srv.url}/v1/predict", json={"inputs": x.tolist()}, timeout=60)
        assert r.status_code == 200, r.text
        with torch.no_grad():
            ref = get_model("small_cnn", dataset_shape="cifar")(x)
        torch.testing.assert_close(torch.tensor(r.json()["outputs"]), ref, rtol=1e-4, atol=1e-5)
        assert ref.std() > 1e-3
        assert srv.stop() == 0, srv.stderr()
