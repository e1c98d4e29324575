"""A site's SuperNode authentication key: ECDSA P-384 in OpenSSH format, as Flower expects.

The public half is enrolled at the coordinator (``fedsilo coordinator enroll``); the SuperLink
then accepts only SuperNodes that prove they hold an enrolled private key. This key is
separate from the site's identity (HPKE + Ed25519), which protects the updates themselves.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.keys import check_name, write_key_file

log = logging.getLogger(__name__)


class NodeKeyError(ValueError):
    """A SuperNode key file is missing or not an ECDSA OpenSSH key."""


def node_key_paths(site: str, directory: Path) -> tuple[Path, Path]:
    """(private, public) paths of a site's SuperNode key in ``directory``."""
    check_name(site)
    return directory / f"{site}.node-key", directory / f"{site}.node-key.pub"


def generate_node_key(site: str, directory: Path, overwrite: bool = False) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP384R1())
    private_path, public_path = node_key_paths(site, directory)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    write_key_file(private_path, private, private=True, overwrite=overwrite)
    write_key_file(public_path, public + f" fedsilo-{site}\n".encode(), private=False,
                   overwrite=overwrite)
    log.info("SuperNode key of site %s written to %s (give %s to the coordinator)", site,
             private_path, public_path.name)
    return private_path, public_path


def check_node_public_key(path: Path) -> None:
    """Refuse anything but an ECDSA OpenSSH public key before it is enrolled."""
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise NodeKeyError(f"{path}: SuperNode public key not found") from None
    try:
        key = serialization.load_ssh_public_key(text.strip().split(b"\n")[0])
    except (ValueError, IndexError) as exc:
        raise NodeKeyError(f"{path}: not an OpenSSH public key ({exc}); the site creates it "
                           "with `fedsilo site init`") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise NodeKeyError(f"{path}: a {type(key).__name__}, not an ECDSA key; Flower's node "
                           "authentication needs ECDSA")
