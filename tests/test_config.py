from pathlib import Path

import pytest

from common.config import ConfigError, load_config, reference_rows


def test_shipped_default_has_fifteen_countries_and_fedavg():
    cfg = load_config()
    assert len(cfg.site_ids()) == 15
    assert cfg.site_ids()[:3] == ["en", "fa", "ja"]
    assert cfg.strategy.name == "fedavg"
    assert cfg.model.name == "intfloat/multilingual-e5-small"


def test_set_overrides_nested_keys_with_yaml_values():
    cfg = load_config(overrides=["federation.rounds=7", "federation.sites=[de, fr]",
                                 "train.learning_rate=2e-4"])
    assert cfg.federation.rounds == 7
    assert cfg.site_ids() == ["de", "fr"]
    assert cfg.train.learning_rate == pytest.approx(2e-4)


def test_config_file_overrides_default_and_set_overrides_file(tmp_path: Path):
    path = tmp_path / "fed.yaml"
    path.write_text("federation:\n  rounds: 9\nlora:\n  r: 4\n")
    cfg = load_config(path, ["lora.r=16"])
    assert cfg.federation.rounds == 9
    assert cfg.lora.r == 16
    assert len(cfg.site_ids()) == 15


def test_unknown_key_names_the_key():
    with pytest.raises(ConfigError, match=r"train\.epochs: unknown key"):
        load_config(overrides=["train.epochs=3"])


def test_bad_value_names_the_key_and_the_value():
    with pytest.raises(ConfigError, match=r"lora\.r: .*greater than or equal to 1.*got 0"):
        load_config(overrides=["lora.r=0"])


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"strategy\.name: .*fedavg"):
        load_config(overrides=["strategy.name=fedmagic"])


def test_duplicate_sites_are_refused():
    with pytest.raises(ConfigError, match="repeated: de"):
        load_config(overrides=["federation.sites=[de, fr, de]"])


def test_malformed_override_says_how_to_write_it():
    with pytest.raises(ConfigError, match="expected key=value"):
        load_config(overrides=["federation.rounds"])


def test_missing_config_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_every_setting_is_documented():
    rows = reference_rows()
    assert len(rows) > 20
    assert all(description for _, _, description in rows), [k for k, _, d in rows if not d]
