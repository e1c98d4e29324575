"""Identities of sites and coordinator: HPKE keys for confidentiality, Ed25519 keys for signatures.

Every participant holds an :class:`Identity` (private) and publishes a :class:`PublicIdentity`.
Sites encrypt their updates to the coordinator's HPKE public key and sign them with their own
Ed25519 key; the coordinator keeps a registry of enrolled sites' public identities.

On disk an identity is a pair of files in one directory:

- ``<name>.key``: JSON with the kem name and the raw private bytes (base64), mode 0600;
- ``<name>.pub.json``: JSON with the kem name and the raw public bytes (base64), mode 0644.

The ``mlkem768-x25519`` hybrid key is stored as the 64-byte ML-KEM-768 seed followed by the
32-byte X25519 private key; its public key is the ML-KEM-768 public key (1184 bytes) followed
by the X25519 public key (32 bytes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mlkem, x25519

logger = logging.getLogger(__name__)

DEFAULT_KEM = "x25519"
PRIVATE_FORMAT = "fedsilo-identity/1"
PUBLIC_FORMAT = "fedsilo-public-identity/1"
FINGERPRINT_HEX_CHARS = 16
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MLKEM768_SEED_BYTES = 64
_MLKEM768_PUBLIC_BYTES = 1184
_X25519_BYTES = 32


class KeyFileError(ValueError):
    """A key file or registry entry is missing, unreadable or malformed.

    Parameters
    ----------
    source : str or Path
        The file (or registry entry) at fault.
    problem : str
        What is wrong with it.
    """

    def __init__(self, source: str | os.PathLike, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


class HybridPrivateKey(NamedTuple):
    """The two halves of an ML-KEM-768 + X25519 hybrid private key."""

    mlkem: mlkem.MLKEM768PrivateKey
    x25519: x25519.X25519PrivateKey


class HybridPublicKey(NamedTuple):
    """The two halves of an ML-KEM-768 + X25519 hybrid public key."""

    mlkem: mlkem.MLKEM768PublicKey
    x25519: x25519.X25519PublicKey


KemPrivateKey = x25519.X25519PrivateKey | HybridPrivateKey
KemPublicKey = x25519.X25519PublicKey | HybridPublicKey


@dataclass(frozen=True)
class KemSuite:
    """One HPKE suite and the codecs for its keys.

    Attributes
    ----------
    name : str
        The suite's name in files and envelopes.
    kem, kdf, aead
        The HPKE algorithms.
    generate : callable
        Makes a fresh private key.
    public_of : callable
        The public key of a private key.
    private_bytes, private_from_bytes, public_bytes, public_from_bytes : callable
        Raw encodings of the keys.
    hpke_private, hpke_public : callable
        The objects that ``hpke.Suite.decrypt`` / ``encrypt`` accept.
    """

    name: str
    kem: hpke.KEM
    kdf: hpke.KDF
    aead: hpke.AEAD
    generate: Callable[[], Any]
    public_of: Callable[[Any], Any]
    private_bytes: Callable[[Any], bytes]
    private_from_bytes: Callable[[bytes], Any]
    public_bytes: Callable[[Any], bytes]
    public_from_bytes: Callable[[bytes], Any]
    hpke_private: Callable[[Any], Any]
    hpke_public: Callable[[Any], Any]

    def hpke_suite(self) -> hpke.Suite:
        """The ``cryptography`` HPKE suite object."""
        return hpke.Suite(self.kem, self.kdf, self.aead)


def _split(data: bytes, first: int, total: int, what: str) -> tuple[bytes, bytes]:
    if len(data) != total:
        raise ValueError(f"{what} must be {total} bytes, got {len(data)}")
    return data[:first], data[first:]


def _hybrid_generate() -> HybridPrivateKey:
    return HybridPrivateKey(mlkem.MLKEM768PrivateKey.generate(), x25519.X25519PrivateKey.generate())


def _hybrid_public_of(key: HybridPrivateKey) -> HybridPublicKey:
    return HybridPublicKey(key.mlkem.public_key(), key.x25519.public_key())


def _hybrid_private_bytes(key: HybridPrivateKey) -> bytes:
    return key.mlkem.private_bytes_raw() + key.x25519.private_bytes_raw()


def _hybrid_private_from_bytes(data: bytes) -> HybridPrivateKey:
    total = _MLKEM768_SEED_BYTES + _X25519_BYTES
    seed, scalar = _split(data, _MLKEM768_SEED_BYTES, total, "hybrid private key")
    return HybridPrivateKey(
        mlkem.MLKEM768PrivateKey.from_seed_bytes(seed),
        x25519.X25519PrivateKey.from_private_bytes(scalar),
    )


def _hybrid_public_bytes(key: HybridPublicKey) -> bytes:
    return key.mlkem.public_bytes_raw() + key.x25519.public_bytes_raw()


def _hybrid_public_from_bytes(data: bytes) -> HybridPublicKey:
    total = _MLKEM768_PUBLIC_BYTES + _X25519_BYTES
    encaps, point = _split(data, _MLKEM768_PUBLIC_BYTES, total, "hybrid public key")
    return HybridPublicKey(
        mlkem.MLKEM768PublicKey.from_public_bytes(encaps),
        x25519.X25519PublicKey.from_public_bytes(point),
    )


KEM_SUITES: dict[str, KemSuite] = {
    "x25519": KemSuite(
        name="x25519",
        kem=hpke.KEM.X25519,
        kdf=hpke.KDF.HKDF_SHA256,
        aead=hpke.AEAD.AES_256_GCM,
        generate=x25519.X25519PrivateKey.generate,
        public_of=lambda key: key.public_key(),
        private_bytes=lambda key: key.private_bytes_raw(),
        private_from_bytes=x25519.X25519PrivateKey.from_private_bytes,
        public_bytes=lambda key: key.public_bytes_raw(),
        public_from_bytes=x25519.X25519PublicKey.from_public_bytes,
        hpke_private=lambda key: key,
        hpke_public=lambda key: key,
    ),
    # cryptography 50 accepts every KDF with this KEM; HKDF-SHA256 + AES-256-GCM matches the
    # default suite and the "X25519MLKEM768-SHA256-AES256GCM" suites proposed elsewhere.
    "mlkem768-x25519": KemSuite(
        name="mlkem768-x25519",
        kem=hpke.KEM.MLKEM768_X25519,
        kdf=hpke.KDF.HKDF_SHA256,
        aead=hpke.AEAD.AES_256_GCM,
        generate=_hybrid_generate,
        public_of=_hybrid_public_of,
        private_bytes=_hybrid_private_bytes,
        private_from_bytes=_hybrid_private_from_bytes,
        public_bytes=_hybrid_public_bytes,
        public_from_bytes=_hybrid_public_from_bytes,
        hpke_private=lambda key: hpke.MLKEM768X25519PrivateKey(key.mlkem, key.x25519),
        hpke_public=lambda key: hpke.MLKEM768X25519PublicKey(key.mlkem, key.x25519),
    ),
}


def kem_suite(name: str) -> KemSuite:
    """The suite called ``name``; ``ValueError`` listing the known ones otherwise."""
    suite = KEM_SUITES.get(name)
    if suite is None:
        raise ValueError(f"unknown kem {name!r}; known: {', '.join(sorted(KEM_SUITES))}")
    return suite


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid participant name (it becomes a file name)."""
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid participant name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True)
class PublicIdentity:
    """What a participant publishes: name, kem name, HPKE and Ed25519 public keys."""

    name: str
    kem: str
    hpke_public: KemPublicKey
    sign_public: ed25519.Ed25519PublicKey

    def __hash__(self) -> int:
        return hash((self.name, self.fingerprint()))

    def hpke_public_bytes(self) -> bytes:
        """Raw bytes of the HPKE public key."""
        return kem_suite(self.kem).public_bytes(self.hpke_public)

    def sign_public_bytes(self) -> bytes:
        """Raw bytes of the Ed25519 public key."""
        return self.sign_public.public_bytes_raw()

    def fingerprint(self) -> str:
        """Short sha256 hex of the kem name and both public keys (the name is not included)."""
        digest = hashlib.sha256(b"fedsilo/fingerprint/v1\x00")
        for part in (self.kem.encode(), self.hpke_public_bytes(), self.sign_public_bytes()):
            digest.update(len(part).to_bytes(4, "big") + part)
        return digest.hexdigest()[:FINGERPRINT_HEX_CHARS]

    def to_dict(self) -> dict[str, str]:
        """JSON-friendly form (raw key bytes in base64)."""
        return {
            "format": PUBLIC_FORMAT,
            "name": self.name,
            "kem": self.kem,
            "hpke_public": _b64(self.hpke_public_bytes()),
            "sign_public": _b64(self.sign_public_bytes()),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> PublicIdentity:
        """Inverse of :meth:`to_dict`; ``KeyFileError`` naming ``source`` on bad input."""
        fields = _require_fields(data, PUBLIC_FORMAT, ("name", "kem", "hpke_public",
                                                       "sign_public"), source)
        suite = _suite_for_file(fields["kem"], source)
        return cls(
            name=_name_for_file(fields["name"], source),
            kem=suite.name,
            hpke_public=_decode_key(suite.public_from_bytes, fields["hpke_public"],
                                    "hpke_public", source),
            sign_public=_decode_key(ed25519.Ed25519PublicKey.from_public_bytes,
                                    fields["sign_public"], "sign_public", source),
        )


@dataclass(frozen=True)
class Identity:
    """A participant's private identity: name, kem name, HPKE and Ed25519 private keys."""

    name: str
    kem: str
    hpke_private: KemPrivateKey
    sign_private: ed25519.Ed25519PrivateKey

    def __repr__(self) -> str:
        return f"Identity(name={self.name!r}, kem={self.kem!r}, <private keys hidden>)"

    def public(self) -> PublicIdentity:
        """The matching public identity."""
        return PublicIdentity(
            name=self.name,
            kem=self.kem,
            hpke_public=kem_suite(self.kem).public_of(self.hpke_private),
            sign_public=self.sign_private.public_key(),
        )

    def _to_dict(self) -> dict[str, str]:
        return {
            "format": PRIVATE_FORMAT,
            "name": self.name,
            "kem": self.kem,
            "hpke_private": _b64(kem_suite(self.kem).private_bytes(self.hpke_private)),
            "sign_private": _b64(self.sign_private.private_bytes_raw()),
        }

    @classmethod
    def _from_dict(cls, data: Mapping[str, Any], source: str) -> Identity:
        fields = _require_fields(data, PRIVATE_FORMAT, ("name", "kem", "hpke_private",
                                                        "sign_private"), source)
        suite = _suite_for_file(fields["kem"], source)
        return cls(
            name=_name_for_file(fields["name"], source),
            kem=suite.name,
            hpke_private=_decode_key(suite.private_from_bytes, fields["hpke_private"],
                                     "hpke_private", source),
            sign_private=_decode_key(ed25519.Ed25519PrivateKey.from_private_bytes,
                                     fields["sign_private"], "sign_private", source),
        )


def generate_identity(name: str, kem: str = DEFAULT_KEM) -> Identity:
    """Make a fresh identity for participant ``name`` with HPKE suite ``kem``."""
    suite = kem_suite(kem)
    return Identity(
        name=check_name(name),
        kem=suite.name,
        hpke_private=suite.generate(),
        sign_private=ed25519.Ed25519PrivateKey.generate(),
    )


def identity_paths(name: str, directory: str | os.PathLike) -> tuple[Path, Path]:
    """Where :func:`save_identity` puts the private and public files of ``name``."""
    directory = Path(directory)
    return directory / f"{check_name(name)}.key", directory / f"{name}.pub.json"


def save_identity(
    identity: Identity, directory: str | os.PathLike, *, overwrite: bool = False
) -> tuple[Path, Path]:
    """Write ``<name>.key`` (mode 0600) and ``<name>.pub.json`` (mode 0644) into ``directory``.

    Raises
    ------
    FileExistsError
        If either file exists and ``overwrite`` is false (nothing is written then).
    """
    private_path, public_path = identity_paths(identity.name, directory)
    Path(directory).mkdir(parents=True, exist_ok=True)
    _refuse_existing((private_path, public_path), overwrite)
    _write_file(private_path, _json_bytes(identity._to_dict()), 0o600, overwrite)
    _write_file(public_path, _json_bytes(identity.public().to_dict()), 0o644, overwrite)
    logger.info("saved identity %s (%s) to %s", identity.name, identity.kem, private_path)
    return private_path, public_path


def load_identity(path: str | os.PathLike) -> Identity:
    """Read a private identity file; warns if group or others may read it."""
    path = Path(path)
    data = _read_json(path)
    _warn_if_exposed(path)
    return Identity._from_dict(data, str(path))


def load_public(path: str | os.PathLike) -> PublicIdentity:
    """Read a public identity file."""
    path = Path(path)
    return PublicIdentity.from_dict(_read_json(path), str(path))


def load_registry(
    entries: Iterable[str | os.PathLike | Mapping[str, Any] | PublicIdentity],
) -> dict[str, PublicIdentity]:
    """Build the coordinator's registry of enrolled sites from files, dicts or identities.

    Raises
    ------
    KeyFileError
        On an unreadable entry or a site name enrolled twice.
    """
    registry: dict[str, PublicIdentity] = {}
    sources: dict[str, str] = {}
    for index, entry in enumerate(entries, start=1):
        source, public = _registry_entry(index, entry)
        if public.name in registry:
            raise KeyFileError(source, f"site {public.name!r} is already enrolled from "
                                       f"{sources[public.name]}")
        _warn_if_key_reused(public, registry, source)
        registry[public.name] = public
        sources[public.name] = source
    return registry


def _registry_entry(index: int, entry: Any) -> tuple[str, PublicIdentity]:
    if isinstance(entry, PublicIdentity):
        return f"registry entry {index}", entry
    if isinstance(entry, Mapping):
        source = f"registry entry {index}"
        return source, PublicIdentity.from_dict(entry, source)
    if isinstance(entry, (str, os.PathLike)):
        return str(entry), load_public(entry)
    raise KeyFileError(f"registry entry {index}",
                       f"expected a path, dict or PublicIdentity, got {type(entry).__name__}")


def _warn_if_key_reused(public: PublicIdentity, registry: dict[str, PublicIdentity],
                        source: str) -> None:
    fingerprint = public.fingerprint()
    for other in registry.values():
        if other.fingerprint() == fingerprint:
            logger.warning("%s: site %s uses the same keys as enrolled site %s", source,
                           public.name, other.name)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8")


def _refuse_existing(paths: Iterable[Path], overwrite: bool) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"refusing to overwrite {', '.join(existing)} "
                              "(pass overwrite=True to replace)")


def write_key_file(path: Path, content: bytes, *, private: bool, overwrite: bool = False) -> None:
    """Write a key or certificate file: private ones 0600 from creation on, public ones 0644."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_file(path, content, 0o600 if private else 0o644, overwrite)


def _write_file(path: Path, content: bytes, mode: int, overwrite: bool) -> None:
    """Write ``content`` to ``path``; the file has at most ``mode`` from its creation on."""
    if not overwrite:
        _write_descriptor(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), content,
                          mode)
        return
    descriptor, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        _write_descriptor(descriptor, content, mode)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _write_descriptor(descriptor: int, content: bytes, mode: int) -> None:
    try:
        os.fchmod(descriptor, mode)
        view = memoryview(content)
        for _ in range(len(content) + 1):
            if not view:
                break
            view = view[os.write(descriptor, view):]
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise KeyFileError(path, f"cannot read key file: {error}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise KeyFileError(path, f"not valid JSON ({error})") from error
    if not isinstance(data, dict):
        raise KeyFileError(path, "expected a JSON object")
    return data


def _warn_if_exposed(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        logger.warning("private key file %s is readable by group or others (mode %s); "
                       "run chmod 600 on it", path, oct(mode))


def _require_fields(data: Mapping[str, Any], expected_format: str, names: tuple[str, ...],
                    source: str) -> dict[str, str]:
    if not isinstance(data, Mapping):
        raise KeyFileError(source, "expected a JSON object")
    if data.get("format") != expected_format:
        raise KeyFileError(source, f"format is {data.get('format')!r}, "
                                   f"expected {expected_format!r}")
    missing = [name for name in names if not isinstance(data.get(name), str)]
    if missing:
        raise KeyFileError(source, f"missing or non-string fields: {', '.join(missing)}")
    return {name: data[name] for name in names}


def _suite_for_file(kem: str, source: str) -> KemSuite:
    try:
        return kem_suite(kem)
    except ValueError as error:
        raise KeyFileError(source, str(error)) from error


def _name_for_file(name: str, source: str) -> str:
    try:
        return check_name(name)
    except ValueError as error:
        raise KeyFileError(source, str(error)) from error


def _decode_key(parse: Callable[[bytes], Any], text: str, field: str, source: str) -> Any:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise KeyFileError(source, f"{field} is not valid base64") from error
    try:
        return parse(raw)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise KeyFileError(source, f"{field} is not a valid key: {error}") from error
