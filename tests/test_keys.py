"""Site and coordinator identities: generation, files on disk, registry."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from common.keys import (
    KEM_SUITES,
    KeyFileError,
    PublicIdentity,
    generate_identity,
    load_identity,
    load_public,
    load_registry,
    save_identity,
)

KEMS = sorted(KEM_SUITES)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _same_public(a: PublicIdentity, b: PublicIdentity) -> bool:
    return a.to_dict() == b.to_dict()


def test_known_suites_are_x25519_and_mlkem_hybrid():
    assert set(KEM_SUITES) == {"x25519", "mlkem768-x25519"}
    assert generate_identity("de").kem == "x25519"


@pytest.mark.parametrize("kem", KEMS)
def test_public_identity_round_trips_through_json(kem):
    public = generate_identity("de", kem).public()
    restored = PublicIdentity.from_dict(json.loads(json.dumps(public.to_dict())))
    assert _same_public(restored, public)
    assert restored.fingerprint() == public.fingerprint()
    assert restored == public
    assert len({restored, public}) == 1


def test_fingerprint_is_short_hex_and_differs_between_identities():
    first, second = generate_identity("de").public(), generate_identity("de").public()
    assert len(first.fingerprint()) == 16
    int(first.fingerprint(), 16)
    assert first.fingerprint() != second.fingerprint()


def test_private_key_file_is_created_0600(tmp_path):
    previous = os.umask(0)
    try:
        private_path, public_path = save_identity(generate_identity("de"), tmp_path)
    finally:
        os.umask(previous)
    assert private_path == tmp_path / "de.key"
    assert public_path == tmp_path / "de.pub.json"
    assert _mode(private_path) == 0o600
    assert _mode(public_path) == 0o644


@pytest.mark.parametrize("kem", KEMS)
def test_saved_identity_loads_back_with_the_same_keys(tmp_path, kem):
    identity = generate_identity("de", kem)
    private_path, public_path = save_identity(identity, tmp_path)
    loaded = load_identity(private_path)
    assert (loaded.name, loaded.kem) == ("de", kem)
    assert _same_public(loaded.public(), identity.public())
    assert _same_public(load_public(public_path), identity.public())


def test_save_refuses_to_overwrite_an_existing_identity(tmp_path):
    save_identity(generate_identity("de"), tmp_path)
    before = (tmp_path / "de.key").read_bytes()
    with pytest.raises(FileExistsError, match="de.key"):
        save_identity(generate_identity("de"), tmp_path)
    assert (tmp_path / "de.key").read_bytes() == before


def test_overwrite_replaces_a_loose_private_file_with_a_0600_one(tmp_path):
    (tmp_path / "de.key").write_text("old")
    os.chmod(tmp_path / "de.key", 0o644)
    identity = generate_identity("de")
    private_path, _ = save_identity(identity, tmp_path, overwrite=True)
    assert _mode(private_path) == 0o600
    assert _same_public(load_identity(private_path).public(), identity.public())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["de.key", "de.pub.json"]


def test_loading_a_group_readable_private_key_warns(tmp_path, caplog):
    private_path, _ = save_identity(generate_identity("de"), tmp_path)
    os.chmod(private_path, 0o640)
    with caplog.at_level(logging.WARNING, logger="common.keys"):
        load_identity(private_path)
    assert "readable by group or others" in caplog.text


def test_identity_repr_hides_private_keys():
    assert "hidden" in repr(generate_identity("de"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "not valid JSON"),
        ("[]", "expected a JSON object"),
        ('{"format": "other"}', "format is"),
        ('{"format": "fedsilo-identity/1", "name": "de"}', "missing or non-string"),
    ],
)
def test_corrupt_private_key_file_error_names_the_file(tmp_path, content, problem):
    path = tmp_path / "de.key"
    path.write_text(content)
    with pytest.raises(KeyFileError, match=problem) as caught:
        load_identity(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("hpke_private", "%%%", "not valid base64"),
        ("hpke_private", "AAAA", "not a valid key"),
        ("sign_private", "AAAA", "not a valid key"),
        ("kem", "rsa", "unknown kem"),
        ("name", "../etc", "invalid participant name"),
    ],
)
def test_tampered_private_key_field_is_refused(tmp_path, field, value, problem):
    private_path, _ = save_identity(generate_identity("de"), tmp_path)
    data = json.loads(private_path.read_text())
    data[field] = value
    private_path.write_text(json.dumps(data))
    with pytest.raises(KeyFileError, match=problem):
        load_identity(private_path)


def test_missing_public_file_error_names_the_file(tmp_path):
    with pytest.raises(KeyFileError, match="nowhere.pub.json"):
        load_public(tmp_path / "nowhere.pub.json")


def test_mlkem_hybrid_public_key_of_wrong_length_is_refused():
    data = generate_identity("de", "mlkem768-x25519").public().to_dict()
    data["hpke_public"] = generate_identity("de").public().to_dict()["hpke_public"]
    with pytest.raises(KeyFileError, match="1216 bytes"):
        PublicIdentity.from_dict(data, "de.pub.json")


def test_unknown_kem_and_unsafe_names_are_refused_at_generation():
    with pytest.raises(ValueError, match="unknown kem"):
        generate_identity("de", "rsa")
    with pytest.raises(ValueError, match="invalid participant name"):
        generate_identity("../de")


def test_registry_reads_paths_dicts_and_identities(tmp_path):
    _, de_path = save_identity(generate_identity("de"), tmp_path)
    fr = generate_identity("fr").public()
    id_ = generate_identity("id", "mlkem768-x25519").public()
    registry = load_registry([de_path, fr.to_dict(), id_])
    assert sorted(registry) == ["de", "fr", "id"]
    assert _same_public(registry["fr"], fr)


def test_registry_refuses_a_site_enrolled_twice(tmp_path):
    _, de_path = save_identity(generate_identity("de"), tmp_path)
    with pytest.raises(KeyFileError, match="'de' is already enrolled"):
        load_registry([de_path, generate_identity("de").public()])


def test_registry_warns_when_two_sites_share_keys(caplog):
    public = generate_identity("de").public()
    twin = PublicIdentity("fr", public.kem, public.hpke_public, public.sign_public)
    with caplog.at_level(logging.WARNING, logger="common.keys"):
        load_registry([public, twin])
    assert "same keys" in caplog.text
