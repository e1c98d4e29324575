import pytest

from common.config import SiteSpec
from common.keys import generate_identity, load_public, save_identity
from server.enrollment import enrolled_sites


def test_sites_are_enrolled_from_their_exported_public_files(tmp_path):
    for name in ("de", "fr"):
        save_identity(generate_identity(name), tmp_path)
    registry = enrolled_sites(tmp_path, [SiteSpec(id="de"), SiteSpec(id="fr")])
    assert sorted(registry) == ["de", "fr"]


def test_an_explicit_public_key_path_is_used(tmp_path):
    elsewhere = tmp_path / "received"
    _, public = save_identity(generate_identity("de"), elsewhere)
    registry = enrolled_sites(tmp_path, [SiteSpec(id="de", public_key=public)])
    assert registry["de"] == load_public(public)


def test_a_site_without_a_public_key_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no public key for sites.*'de'"):
        enrolled_sites(tmp_path, [SiteSpec(id="de")])


def test_a_key_exported_for_another_site_is_refused(tmp_path):
    _, public = save_identity(generate_identity("fr"), tmp_path / "x")
    with pytest.raises(ValueError, match="'fr' is enrolled under another site id"):
        enrolled_sites(tmp_path, [SiteSpec(id="de", public_key=public)])
