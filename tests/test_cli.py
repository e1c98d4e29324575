from typer.testing import CliRunner

from common.cli import app

runner = CliRunner()


def test_unknown_config_key_exits_2_with_the_key_named():
    result = runner.invoke(app, ["simulate", "--set", "train.epochs=3"])
    assert result.exit_code == 2
    assert "train.epochs: unknown key" in result.output


def test_config_show_prints_the_reference():
    result = runner.invoke(app, ["config", "show", "--set", "federation.rounds=2"])
    assert result.exit_code == 0
    assert "rounds: 2" in result.output
    assert "lora.target_modules" in result.output


def test_data_check_reports_counts_without_text(silo_root):
    result = runner.invoke(app, ["data", "check", str(silo_root / "de"),
                                 "--set", f"data.silo_root={silo_root}"])
    assert result.exit_code == 0, result.output
    assert "train:" in result.output and "ok" in result.output
    assert "Guten" not in result.output


def test_data_check_fails_on_a_broken_file(silo_root, tmp_path):
    for split in ("train", "validation", "test"):
        (tmp_path / f"{split}.jsonl").write_bytes((silo_root / "de" / f"{split}.jsonl").read_bytes())
    (tmp_path / "test.jsonl").write_text('{"text": "hallo"}\n')
    result = runner.invoke(app, ["data", "check", str(tmp_path),
                                 "--set", f"data.silo_root={silo_root}"])
    assert result.exit_code == 1
    assert "test.jsonl" in result.output and "label" in result.output
