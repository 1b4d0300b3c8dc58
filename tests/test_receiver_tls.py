"""The OTLP receiver over TLS (AGENTWATCH_TLS_CERT / AGENTWATCH_TLS_KEY): the stock OTel exporters, HTTP and
gRPC, trusting a certificate made here, deliver spans; plain-text clients are refused on the same ports."""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import ssl
import uuid

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agentwatch import config
from agentwatch.collector.receiver import Receiver, ReceiverConfig
from agentwatch.schemas import store
from tests.helpers import start_receiver, wait_for

TENANT = "tls-tenant"


def self_signed(directory) -> tuple[str, str]:
    """A certificate for localhost and 127.0.0.1 and its key, as PEM files: (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "receiver.crt", directory / "receiver.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[str, str]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_receiver(dsn, database, certificate):
    cert, key = certificate
    running = start_receiver(dsn, database, tls_cert=cert, tls_key=key)
    yield running
    running.stop()


def send_one_span(exporter, name: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": "tls-agent",
                                                        "agentwatch.tenant.id": TENANT}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("tls-test").start_as_current_span(name, attributes={"gen_ai.operation.name": "chat"}):
        pass
    provider.shutdown()


def stored(client, name: str) -> int:
    return client.query("SELECT count() FROM agent_spans WHERE SpanName = {n:String} AND Tenant = {t:String}",
                        parameters={"n": name, "t": TENANT}).result_rows[0][0]


def test_stock_http_exporter_sends_over_https_trusting_the_certificate(tls_receiver, client, certificate,
                                                                       monkeypatch):
    # requests lets these variables override the exporter's own trust (its session's `verify`).
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    name = f"https-{uuid.uuid4().hex[:8]}"
    exporter = HttpSpanExporter(endpoint=f"https://localhost:{tls_receiver.http_port}/v1/traces",
                                certificate_file=certificate[0])
    send_one_span(exporter, name)
    assert wait_for(lambda: stored(client, name)) == 1


def test_stock_grpc_exporter_sends_over_tls_trusting_the_certificate(tls_receiver, client, certificate):
    name = f"grpcs-{uuid.uuid4().hex[:8]}"
    with open(certificate[0], "rb") as pem:
        credentials = grpc.ssl_channel_credentials(root_certificates=pem.read())
    exporter = GrpcSpanExporter(endpoint=f"localhost:{tls_receiver.grpc_port}", insecure=False,
                                credentials=credentials)
    send_one_span(exporter, name)
    assert wait_for(lambda: stored(client, name)) == 1


def test_plain_http_is_refused(tls_receiver, client):
    connection = http.client.HTTPConnection("127.0.0.1", tls_receiver.http_port, timeout=10)
    body = ExportTraceServiceRequest().SerializeToString()
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        connection.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
        connection.getresponse().read()
    connection.close()


def test_plain_grpc_is_refused(tls_receiver):
    with grpc.insecure_channel(f"127.0.0.1:{tls_receiver.grpc_port}") as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                                     request_serializer=lambda m: m.SerializeToString(),
                                     response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as refused:
            export(ExportTraceServiceRequest(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_client_that_does_not_trust_the_certificate_is_not_served(tls_receiver):
    # The default trust store does not know a self-signed certificate: the handshake fails, nothing is sent.
    connection = http.client.HTTPSConnection("localhost", tls_receiver.http_port, timeout=10,
                                             context=ssl.create_default_context())
    with pytest.raises(ssl.SSLCertVerificationError):
        connection.request("GET", "/healthz")
    connection.close()


def test_half_a_tls_configuration_stops_the_receiver_at_start(dsn, database, certificate):
    receiver = Receiver(lambda: store.connect(dsn, database),
                        ReceiverConfig(http_port=0, grpc_port=0, decode_processes=0, tls_cert=certificate[0]))
    with pytest.raises(ValueError, match="AGENTWATCH_TLS_KEY"):
        receiver.start()


def test_tls_files_are_read_from_the_environment(monkeypatch, certificate):
    monkeypatch.setenv("AGENTWATCH_TLS_CERT", certificate[0])
    monkeypatch.setenv("AGENTWATCH_TLS_KEY", certificate[1])
    settings = config.load("/nonexistent/agentwatch.toml")
    assert (settings.tls_cert, settings.tls_key) == certificate
