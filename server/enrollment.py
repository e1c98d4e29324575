"""Identities of the coordinator and the enrolled sites."""

from __future__ import annotations

import logging
from pathlib import Path

from common.config import SiteSpec
from common.keys import (
    Identity,
    PublicIdentity,
    generate_identity,
    load_identity,
    load_registry,
    save_identity,
)

log = logging.getLogger(__name__)

COORDINATOR = "coordinator"


def provision_simulation_keys(keys_dir: Path, site_ids: list[str], kem: str) -> None:
    """Generate the coordinator's and every virtual site's identity in ``keys_dir``."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    keys_dir.chmod(0o700)
    for name in [COORDINATOR, *site_ids]:
        save_identity(generate_identity(name, kem=kem), keys_dir)
    log.info("generated %d identities (%s) in %s", len(site_ids) + 1, kem, keys_dir)


def coordinator_identity(keys_dir: Path) -> Identity:
    return load_identity(keys_dir / f"{COORDINATOR}.key")


def enrolled_sites(keys_dir: Path, sites: list[SiteSpec]) -> dict[str, PublicIdentity]:
    """The registry: each configured site's public identity, as enrolled in the config."""
    paths = {s.id: Path(s.public_key or keys_dir / f"{s.id}.pub.json") for s in sites}
    missing = {site: str(path) for site, path in paths.items() if not path.exists()}
    if missing:
        raise FileNotFoundError(
            f"no public key for sites {missing}; enroll each site with the <site>.pub.json "
            "it exported (federation.sites[].public_key)"
        )
    registry = load_registry(paths.values())
    for site in registry:
        if site not in paths:
            raise ValueError(f"public key file for a site named {site!r} is enrolled under "
                             "another site id")
    return registry
