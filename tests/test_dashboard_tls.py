"""The dashboard over HTTPS with the certificate and key it is given (AGENTWATCH_TLS_CERT / _KEY).

The test makes its own certificate for 127.0.0.1 (the `cryptography` package);
a client that trusts exactly that certificate gets answers, with the host name
checked; plain HTTP gets none; Chromium, told to trust that certificate's key
and nothing more, renders the app.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import ipaddress
import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from playwright.sync_api import expect, sync_playwright

from tests.test_dashboard_signin import CHROMIUM, Dashboard


def make_certificate(directory: Path) -> tuple[Path, Path, str]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert file, key file, base64 SHA-256 of its SPKI)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentwatch dashboard test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "dashboard.crt", directory / "dashboard.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    spki = certificate.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert_file, key_file, base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("dashboard_tls")
    cert_file, key_file, spki = make_certificate(base)
    trusting = ssl.create_default_context(cafile=str(cert_file))
    dashboard = Dashboard(base, "tls", context=trusting, tls_cert=str(cert_file), tls_key=str(key_file))
    yield dashboard, trusting, cert_file, spki
    dashboard.stop()


def test_answers_over_https_with_the_given_certificate(served):
    dashboard, trusting, cert_file, _ = served
    assert dashboard.url.startswith("https://127.0.0.1:")
    with urllib.request.urlopen(f"{dashboard.url}/_stcore/health", context=trusting, timeout=10) as answer:
        assert answer.status == 200 and answer.read() == b"ok"
    presented = ssl.get_server_certificate(("127.0.0.1", dashboard.port))
    assert ssl.PEM_cert_to_DER_cert(presented) == ssl.PEM_cert_to_DER_cert(cert_file.read_text())
    # A client trusting only the usual authorities refuses it: the certificate is the test's own, not a default one.
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"{dashboard.url}/_stcore/health", context=ssl.create_default_context(), timeout=10)
    assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)


def test_plain_http_gets_no_answer(served):
    dashboard = served[0]
    connection = http.client.HTTPConnection("127.0.0.1", dashboard.port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            connection.request("GET", "/_stcore/health")
            connection.getresponse()
    finally:
        connection.close()


def test_chromium_renders_the_app_over_https(served):
    dashboard, _, _, spki = served
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", f"--ignore-certificate-errors-spki-list={spki}"])
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(dashboard.url)
            # On loopback with no sign-in configured the local user is admin of every tenant.
            expect(page.get_by_text("viewer: local | admin | *", exact=True)).to_be_visible()
            assert page.evaluate("window.isSecureContext && location.protocol") == "https:"
        finally:
            browser.close()
