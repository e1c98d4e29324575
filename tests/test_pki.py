"""The federation's CA, the SuperLink certificate and the sites' SuperNode keys."""

import socket
import ssl
import stat
import threading

import pytest

from client.node_auth import NodeKeyError, check_node_public_key, generate_node_key
from server.pki import (
    CertificateError,
    TlsFiles,
    check_server_certificate,
    create_ca,
    issue_server_certificate,
)


@pytest.fixture
def tls(tmp_path):
    ca_cert, ca_key = create_ca(tmp_path)
    return issue_server_certificate(tmp_path, ca_cert, ca_key)


def test_private_files_are_owner_only_and_certificates_readable(tls, tmp_path):
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(tls.cert.stat().st_mode) == 0o644
    with pytest.raises(FileExistsError):
        create_ca(tmp_path)


def test_a_tls_client_trusting_the_ca_completes_a_handshake_on_loopback(tls):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tls.cert, tls.key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        listener.settimeout(10)
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
            tls_conn.sendall(b"ok")

    thread = threading.Thread(target=serve)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            assert conn.recv(2) == b"ok"
            assert conn.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        thread.join(timeout=10)
        listener.close()


def test_a_client_with_another_ca_refuses_the_superlink(tls, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    other_ca, _ = create_ca(other)
    with pytest.raises(CertificateError, match="not signed by the CA"):
        check_server_certificate(TlsFiles(ca_cert=other_ca, cert=tls.cert, key=tls.key),
                                 "127.0.0.1")


def test_operator_certificates_are_checked_for_host_and_key(tls, tmp_path):
    check_server_certificate(tls, "127.0.0.1")
    check_server_certificate(tls, "localhost")
    with pytest.raises(CertificateError, match="not for coordinator.example"):
        check_server_certificate(tls, "coordinator.example")
    with pytest.raises(CertificateError, match="is not the key of"):
        check_server_certificate(TlsFiles(ca_cert=tls.ca_cert, cert=tls.cert,
                                          key=tmp_path / "ca.key"), "127.0.0.1")
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnope\n")
    with pytest.raises(CertificateError, match="broken.pem"):
        check_server_certificate(TlsFiles(ca_cert=tls.ca_cert, cert=broken, key=tls.key),
                                 "127.0.0.1")


def test_node_keys_are_ecdsa_openssh_and_other_keys_are_refused(tmp_path):
    private, public = generate_node_key("de", tmp_path)
    assert private.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    check_node_public_key(public)
    rsa_like = tmp_path / "x.pub"
    rsa_like.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9o"
                        "kWi0dh2l9GKJl x\n")
    with pytest.raises(NodeKeyError, match="not an ECDSA key"):
        check_node_public_key(rsa_like)
    with pytest.raises(NodeKeyError, match="not found"):
        check_node_public_key(tmp_path / "missing.pub")
