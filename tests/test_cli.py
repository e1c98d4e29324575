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


def test_keys_init_writes_an_owner_only_private_key_and_a_public_file(tmp_path):
    result = runner.invoke(app, ["keys", "init", "de", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "de.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "de.pub.json").exists()
    again = runner.invoke(app, ["keys", "init", "de", "--out", str(tmp_path)])
    assert again.exit_code == 2


def test_audit_verify_passes_untouched_and_names_the_edited_line(tmp_path):
    from common.audit import AuditLog

    path = tmp_path / "site.jsonl"
    with AuditLog(path) as log:
        for round_number in (1, 2, 3):
            log.append("message", round=round_number, peer="coordinator", decision="sealed")
    assert runner.invoke(app, ["audit", "verify", str(path)]).exit_code == 0

    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace('"round":2', '"round":5')
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["audit", "verify", str(path)])
    assert result.exit_code == 1
    assert "line 2" in result.output


def test_data_check_fails_when_a_file_no_longer_matches_its_manifest(silo_root, tmp_path):
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"):
        (tmp_path / name).write_bytes((silo_root / "de" / name).read_bytes())
    with (tmp_path / "train.jsonl").open("a") as handle:
        handle.write('{"text": "extra line", "label": "other"}\n')
    result = runner.invoke(app, ["data", "check", str(tmp_path),
                                 "--set", f"data.silo_root={silo_root}"])
    assert result.exit_code == 1
    assert "differs from the sha256 in manifest.json" in result.output


def test_every_strategy_is_selectable_with_set_on_the_command_line():
    from strategies import REGISTRY

    for name in REGISTRY:  # `simulate` reads --set through the same loader as `config show`
        result = runner.invoke(app, ["config", "show", "--no-reference",
                                     "--set", f"strategy.name={name}"])
        assert result.exit_code == 0, result.output
        assert f"name: {name}" in result.output
