"""The federation's TLS: a private CA held by the coordinator and the SuperLink's certificate.

Sites verify the SuperLink against the CA certificate (``ca.pem``) they receive from the
coordinator out of band. Keys are ECDSA P-384. An operator with their own PKI passes their
certificate, key and CA instead; :func:`check_server_certificate` vets them before use.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.keys import write_key_file

log = logging.getLogger(__name__)

CA_DAYS = 3650
SERVER_DAYS = 825
DEFAULT_HOSTS = ("127.0.0.1", "localhost")


class CertificateError(ValueError):
    """A certificate or key file is missing, malformed, expired or does not fit."""


@dataclass(frozen=True)
class TlsFiles:
    """Where the SuperLink's TLS material lives."""

    ca_cert: Path
    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedsilo federation"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _subject_names(hosts: list[str] | tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def create_ca(directory: Path, common_name: str = "fedsilo federation CA",
              overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``ca.pem`` (give it to every site) and ``ca.key`` (keep it at the coordinator)."""
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA384())
    )
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    write_key_file(key_path, _pem_key(key), private=True, overwrite=overwrite)
    write_key_file(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False,
                   overwrite=overwrite)
    log.info("federation CA written to %s (fingerprint %s)", cert_path, fingerprint(cert))
    return cert_path, key_path


def issue_server_certificate(directory: Path, ca_cert: Path, ca_key: Path,
                             hosts: list[str] | tuple[str, ...] = DEFAULT_HOSTS,
                             overwrite: bool = False) -> TlsFiles:
    """Write ``superlink.pem`` / ``superlink.key``, signed by the CA, valid for ``hosts``."""
    if not hosts:
        raise CertificateError("the SuperLink certificate needs at least one host name or IP")
    issuer = load_certificate(ca_cert)
    issuer_key = _load_key(ca_key)
    key = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(f"fedsilo SuperLink {hosts[0]}"))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(_subject_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA384())
    )
    files = TlsFiles(ca_cert=ca_cert, cert=directory / "superlink.pem",
                     key=directory / "superlink.key")
    write_key_file(files.key, _pem_key(key), private=True, overwrite=overwrite)
    write_key_file(files.cert, cert.public_bytes(serialization.Encoding.PEM), private=False,
                   overwrite=overwrite)
    log.info("SuperLink certificate for %s written to %s", ", ".join(hosts), files.cert)
    return files


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, as sites compare it when they receive ``ca.pem``."""
    return cert.fingerprint(hashes.SHA256()).hex(":")


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except FileNotFoundError:
        raise CertificateError(f"{path}: certificate file not found") from None
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM certificate ({exc})") from None


def _load_key(path: Path):
    try:
        return serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise CertificateError(f"{path}: key file not found") from None
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{path}: not an unencrypted PEM private key ({exc})") from None


def check_server_certificate(files: TlsFiles, host: str) -> None:
    """Refuse a certificate that would make sites fail later: wrong key, issuer, host, dates."""
    cert, ca = load_certificate(files.cert), load_certificate(files.ca_cert)
    key = _load_key(files.key)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, public) != \
            cert.public_key().public_bytes(serialization.Encoding.DER, public):
        raise CertificateError(f"{files.key} is not the key of {files.cert}")
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(f"{files.cert} is not signed by the CA in {files.ca_cert}; "
                               "sites would refuse it") from None
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateError(f"{files.cert} is not valid now (valid "
                               f"{cert.not_valid_before_utc:%Y-%m-%d} to "
                               f"{cert.not_valid_after_utc:%Y-%m-%d})")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError(f"{files.cert} has no subject alternative names; "
                               f"sites connecting to {host} would refuse it") from None
    allowed = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    allowed |= set(names.get_values_for_type(x509.DNSName))
    if host not in allowed:
        raise CertificateError(f"{files.cert} is valid for {', '.join(sorted(allowed))}, not "
                               f"for {host}; issue one with that host")
