"""Secrets in captured payloads: found by format, flagged as secret_exposure, stored as a marker (or kept).

The samples are credentials in the forms people paste them (AWS's documented example keys,
GitHub's and Slack's documented token examples, private keys made by `cryptography`, the
jwt.io token, connection strings from driver docs), not strings derived from the scanner's
own expressions; the negatives are what an agent's payload is full of and is not a secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from opentelemetry import trace as otel_trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from agentwatch.collector.receiver import secret_rules
from agentwatch.collector.receiver.secrets import SecretPolicy, marker, scan
from agentwatch.detectors.config import DetectorConfig
from agentwatch.detectors.worker import DetectorWorker
from agentwatch.schemas import store
from tests.helpers import fresh_database, start_receiver, wait_for

AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"  # AWS documentation's example access key
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB_TOKEN = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"  # GitHub documentation's example
SLACK_TOKEN = "xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy"  # Slack documentation's example
JWT = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5"
       "MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c")  # jwt.io's example
POLICY = SecretPolicy(key=bytes(range(32)))


def private_keys() -> dict[str, str]:
    """Private keys as tools write them: PKCS#1, PKCS#8, SEC1 (EC) and OpenSSH."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = serialization.Encoding.PEM
    none = serialization.NoEncryption()
    return {
        "pkcs1": rsa_key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, none).decode(),
        "pkcs8": rsa_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, none).decode(),
        "ec": ec.generate_private_key(ec.SECP256R1()).private_bytes(
            pem, serialization.PrivateFormat.TraditionalOpenSSL, none).decode(),
        "openssh": ed25519.Ed25519PrivateKey.generate().private_bytes(
            pem, serialization.PrivateFormat.OpenSSH, none).decode(),
    }


# (text around it, the secret as it appears in the text, its type)
POSITIVES = [
    ("[default]\naws_access_key_id = {}\nregion = us-east-1\n", AWS_KEY_ID, "aws_access_key"),
    ("[default]\nregion = us-east-1\naws_secret_access_key = {}\n", AWS_SECRET,
     "aws_secret_access_key"),
    ('{{"Credentials": {{"Expiration": "2024-06-11T00:00:00Z", "SecretAccessKey": "{}"}}}}', AWS_SECRET,
     "aws_secret_access_key"),
    ("export AWS_SECRET_ACCESS_KEY={}", AWS_SECRET, "aws_secret_access_key"),
    ("git clone https://x-access-token:{}@github.com/acme/api.git", GITHUB_TOKEN, "github_token"),
    ("Use this token: {} for the API.", GITHUB_TOKEN, "github_token"),
    ("Authorization: Bearer {}", SLACK_TOKEN, "slack_token"),
    ("webhook {} posted", "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
     "slack_token"),
    ("curl -H 'Authorization: Bearer {}' https://api.example.com/me", JWT, "json_web_token"),
    ("DATABASE_URL=postgres://orders_svc:{}@db.internal:5432/orders", "N0t-s0-S3cret%21", "basic_auth_credentials"),
    ("redis://:{}@cache.internal:6379/0", "p4ssw0rd-cache", "basic_auth_credentials"),
    ("Server=myServerAddress;Database=myDataBase;User Id=myUsername;Password={};", "myPassword",
     "connection_string_password"),
    ("jdbc:postgresql://localhost/test?user=fred&password={}&ssl=true", "secret", "connection_string_password"),
    ("GITLAB_TOKEN={} ", "glpat-9KLkGqiPJZ7rp8MhF2hKxY", "gitlab_token"),
    ("OPENAI_API_KEY={}", "sk-proj-Zx81Qa0LmB3nYt7Wc5RsT3BlbkFJk2Hd9Fq4Vx6Jm1Np0Rs7", "openai_token"),
    ("stripe.api_key = '{}'", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "stripe_access_key"),
    ("maps key={}&q=paris", "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "google_api_key"),
    ("ANTHROPIC_API_KEY={}\n", "sk-ant-api03-" + "Rk2v9XbQ4mZpL7cW1sYd3TfGh8JnKq0Ue5Vi6Oa2Bx" * 2 + "Tq9Lw3AA",
     "anthropic_api_key"),
    ("npm config: //registry.npmjs.org/:_authToken={}", "npm_AbCdEf0123456789AbCdEf0123456789AbCd", "npm_tokens"),
    ('"cos_hmac_keys": {{"access_key_id": "347aa3a4b34344f8bc7c7cccdf856e4c", "secret_access_key": "{}"}}',
     "f4b1a8e2c6d94b3f8a7e5c1d2b9a0e6f3c8d7b4a1e2f5c9d", "ibm_cos_hmac_credentials"),
]


def expected_redaction(text: str, secret: str, secret_type: str) -> str:
    return text.replace(secret, marker(secret_type, POLICY.fingerprint(secret)))


@pytest.mark.parametrize("template,secret,secret_type", POSITIVES, ids=[p[2] + str(i) for i, p in enumerate(POSITIVES)])
def test_each_format_is_found_where_it_is_and_replaced_by_its_marker_alone(template, secret, secret_type):
    text = template.format(secret)
    stored, found = scan(text, POLICY)
    assert [(f.secret_type, f.offset, f.length) for f in found] == [(secret_type, text.index(secret), len(secret))]
    assert stored == expected_redaction(text, secret, secret_type)


@pytest.mark.parametrize("name,key", sorted(private_keys().items()))
def test_a_private_key_block_is_replaced_whole_in_text_and_in_json(name, key):
    text = f"Here is the deploy key:\n{key}\nkeep it safe"
    stored, found = scan(text, POLICY)
    block = key.strip()
    assert [(f.secret_type, f.offset, f.length) for f in found] == [("private_key", text.index(block), len(block))]
    assert stored == expected_redaction(text, block, "private_key")
    # The same key inside a JSON document (newlines escaped): the document stays valid, the key is gone.
    document = json.dumps({"role": "tool", "content": text, "id": 7})
    stored_document, found = scan(document, POLICY)
    assert len(found) == 1 and found[0].secret_type == "private_key"
    assert json.loads(stored_document) == {"role": "tool", "content": stored, "id": 7}


def test_secrets_inside_json_messages_leave_a_valid_document_with_only_the_values_replaced():
    said = f"my key is {AWS_KEY_ID}, token {GITHUB_TOKEN}"
    messages = [{"role": "user", "parts": [{"type": "text", "content": said}]},
                {"role": "assistant", "parts": [{"type": "tool_call", "name": "db", "arguments": {
                    "dsn": "postgresql://admin:hunter22@10.0.0.5/prod", "jwt": JWT}}]}]
    document = json.dumps(messages)
    stored, found = scan(document, POLICY)
    assert sorted(f.secret_type for f in found) == ["aws_access_key", "basic_auth_credentials", "github_token",
                                                     "json_web_token"]
    for f in found:
        assert document[f.offset:f.offset + f.length] in (AWS_KEY_ID, GITHUB_TOKEN, "hunter22", JWT)
    parsed = json.loads(stored)
    assert parsed[0]["parts"][0]["content"] == expected_redaction(
        expected_redaction(said, AWS_KEY_ID, "aws_access_key"), GITHUB_TOKEN, "github_token")
    assert parsed[1]["parts"][0]["arguments"]["dsn"] == (
        f"postgresql://admin:{marker('basic_auth_credentials', POLICY.fingerprint('hunter22'))}@10.0.0.5/prod")


def negatives() -> list[str]:
    seeded = random.Random(20240611)
    return [
        *(hashlib.new(name, b"quarterly-report.pdf").hexdigest() for name in ("md5", "sha1", "sha256", "sha512")),
        f"sha256:{hashlib.sha256(b'layer').hexdigest()}",
        *(str(uuid.UUID(int=seeded.getrandbits(128), version=4)) for _ in range(20)),
        *(base64.b64encode(seeded.randbytes(size)).decode() for size in (16, 24, 32, 40, 48, 64, 300, 3000)),
        *(base64.urlsafe_b64encode(seeded.randbytes(size)).decode().rstrip("=") for size in (32, 33, 66)),
        *(seeded.randbytes(16).hex() for _ in range(20)),  # trace ids
        *(seeded.randbytes(8).hex() for _ in range(20)),  # span ids
        "Please reset your password and rotate the API key; the token expired yesterday.",
        "The password field must be at least 12 characters. Set key = value pairs in the config.",
        "See https://docs.example.com/guide?user=fred&page=2 and ssh://git@github.com/acme/api.git",
        "arn:aws:iam::123456789012:role/S3Access in us-east-1, bucket s3://acme-logs/2024/06/",
        "input_tokens: 12000, output_tokens: 3000, cost_usd: 0.0345, model: gpt-4o-2024-08-06",
        "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
        "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUB\n-----END CERTIFICATE-----",
        json.dumps({"id": str(uuid.UUID(int=7)), "etag": hashlib.sha1(b"x").hexdigest(), "count": 12345678}),
    ]


@pytest.mark.parametrize("text", negatives())
def test_hashes_ids_random_data_and_ordinary_words_are_not_secrets(text):
    assert scan(text, POLICY) == (text, [])


def test_fingerprints_correlate_within_a_store_and_reveal_nothing_without_its_key():
    other_store = SecretPolicy(key=bytes(32))
    assert POLICY.fingerprint(AWS_SECRET) == POLICY.fingerprint(AWS_SECRET) != POLICY.fingerprint(GITHUB_TOKEN)
    assert POLICY.fingerprint(AWS_SECRET) != other_store.fingerprint(AWS_SECRET)
    assert POLICY.fingerprint("hunter2") not in (hashlib.sha256(b"hunter2").hexdigest()[:16],
                                                 hashlib.md5(b"hunter2").hexdigest()[:16])


def test_every_format_plugin_of_detect_secrets_is_used_or_left_out_for_a_stated_reason():
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class

    installed = {cls.__name__ for cls in get_mapping_from_secret_type_to_class().values()}
    used = {name for name in dir(secret_rules) if name.endswith("Detector") and name in installed}
    assert installed - used - set(secret_rules.LEFT_OUT) == set()


def test_a_large_payload_is_scanned_whole():
    filler = "The agent weighs the options, reads https://example.com/docs and notes 42 facts. " * 100_000
    text = filler + f" then pastes {GITHUB_TOKEN} " + filler[: 1 << 20] + f" and {AWS_KEY_ID}"
    stored, found = scan(text, POLICY)
    assert [(f.secret_type, f.offset) for f in found] == [("github_token", text.index(GITHUB_TOKEN)),
                                                         ("aws_access_key", text.index(AWS_KEY_ID))]
    assert len(stored) == len(text) - len(GITHUB_TOKEN) - len(AWS_KEY_ID) + len(
        marker("github_token", found[0].fingerprint)) + len(marker("aws_access_key", found[1].fingerprint))


# --- through the receiver ----------------------------------------------------------------------------


def send_trace(receiver, tenant: str) -> tuple[str, dict[str, str]]:
    """A planner agent whose model call and tool spans carry secrets; returns the trace id and what was sent."""
    provider = TracerProvider(resource=Resource.create({"service.name": "ops-agent", "agentwatch.tenant.id": tenant}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
        endpoint=f"http://127.0.0.1:{receiver.http_port}/v1/traces")))
    tracer = provider.get_tracer("test")
    messages = json.dumps([{"role": "user", "parts": [
        {"type": "text", "content": f"Deploy: aws_access_key_id={AWS_KEY_ID} aws_secret_access_key={AWS_SECRET}"}]}])
    sent = {"messages": messages}
    with tracer.start_as_current_span("invoke_agent planner", attributes={
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.id": "planner-7"}) as root:
        with tracer.start_as_current_span("chat gpt-4o", attributes={
                "gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o",
                "gen_ai.input.messages": messages}) as chat:
            chat.add_event("gen_ai.tool.message", {"content": f"cloned with {GITHUB_TOKEN}"})
        for index in range(3):  # the same key again in three tool calls
            with tracer.start_as_current_span("execute_tool aws", attributes={
                    "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "aws",
                    "gen_ai.tool.call.arguments": json.dumps({"key_id": AWS_KEY_ID, "n": index})}) as tool:
                tool.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR,
                                                  "connect failed: postgres://ops:Sup3rS3cret@db.internal/ops"))
        trace_id = format(root.get_span_context().trace_id, "032x")
    provider.shutdown()
    return trace_id, sent


def stored_key(client) -> bytes:
    return bytes.fromhex(client.query("SELECT Key FROM secret_keys ORDER BY CreatedAt, Key LIMIT 1").result_rows[0][0])


def fingerprint(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:16]


def findings(client, trace_id: str) -> list[tuple]:
    return client.query(
        "SELECT SpanId, Tenant, AgentId, Location, EventName, Attribute, CharOffset, CharLength, SecretType, "
        "Fingerprint, Redacted FROM secret_findings WHERE TraceId = {t:String} ORDER BY Timestamp, SpanId, "
        "Location, CharOffset", parameters={"t": trace_id}).result_rows


def exposures(dsn: str, database: str, trace_id: str) -> list[tuple]:
    worker = DetectorWorker(lambda: store.connect(dsn, database), DetectorConfig(audit_interval_s=0))
    worker.catch_up()
    worker.close()
    client = store.connect(dsn, database)
    rows = client.query("SELECT Tenant, AgentId, TraceId, Severity, Score, Summary, Evidence FROM anomalies FINAL "
                        "WHERE Kind = 'secret_exposure' AND TraceId = {t:String} ORDER BY Score DESC",
                        parameters={"t": trace_id}).result_rows
    client.close()
    return rows


def test_receiver_stores_markers_records_findings_and_raises_one_anomaly_per_secret_per_trace(receiver, client,
                                                                                                dsn, database):
    trace_id, sent = send_trace(receiver, "acme")
    wait_for(lambda: len(findings(client, trace_id)) == 9)
    key = stored_key(client)

    def mark(secret_type: str, value: str) -> str:
        return marker(secret_type, fingerprint(key, value))

    stored = dict(client.query(
        "SELECT SpanName, SpanAttributes['gen_ai.input.messages'] FROM otel_traces WHERE TraceId = {t:String} "
        "AND SpanName = 'chat gpt-4o'", parameters={"t": trace_id}).result_rows)
    assert stored["chat gpt-4o"] == sent["messages"].replace(AWS_KEY_ID, mark("aws_access_key", AWS_KEY_ID)).replace(
        AWS_SECRET, mark("aws_secret_access_key", AWS_SECRET))
    event, = client.query("SELECT Events.Attributes[1]['content'] FROM otel_traces WHERE TraceId = {t:String} "
                          "AND SpanName = 'chat gpt-4o'", parameters={"t": trace_id}).result_rows[0]
    assert event == f"cloned with {mark('github_token', GITHUB_TOKEN)}"
    tools = client.query("SELECT SpanAttributes['gen_ai.tool.call.arguments'], StatusMessage FROM otel_traces "
                         "WHERE TraceId = {t:String} AND SpanName = 'execute_tool aws' ORDER BY Timestamp",
                         parameters={"t": trace_id}).result_rows
    assert tools == [(json.dumps({"key_id": mark("aws_access_key", AWS_KEY_ID), "n": n}),
                      f"connect failed: postgres://ops:{mark('basic_auth_credentials', 'Sup3rS3cret')}@db.internal/ops")
                     for n in range(3)]
    assert client.query("SELECT count() FROM otel_traces WHERE TraceId = {t:String} AND (positionUTF8(SpanAttributes"
                        "['gen_ai.input.messages'], {s:String}) > 0 OR positionUTF8(StatusMessage, 'Sup3rS3cret') > 0)",
                        parameters={"t": trace_id, "s": AWS_SECRET}).result_rows[0][0] == 0

    rows = findings(client, trace_id)
    messages_offset = sent["messages"].index(AWS_KEY_ID)
    assert ("acme", "", "attributes", "", "gen_ai.input.messages", messages_offset, 20, "aws_access_key",
            fingerprint(key, AWS_KEY_ID), True) in [r[1:] for r in rows]
    assert ("acme", "", "events[0]", "gen_ai.tool.message", "content", len("cloned with "), 40, "github_token",
            fingerprint(key, GITHUB_TOKEN), True) in [r[1:] for r in rows]
    assert sorted(r[3] for r in rows) == ["attributes"] * 5 + ["events[0]"] + ["status"] * 3
    assert {r[8] for r in rows} == {"aws_access_key", "aws_secret_access_key", "github_token",
                                    "basic_auth_credentials"}

    anomalies = exposures(dsn, database, trace_id)
    by_type = {json.loads(r[6])["secret_type"]: r for r in anomalies}
    assert sorted(by_type) == ["aws_access_key", "aws_secret_access_key", "basic_auth_credentials", "github_token"]
    tenant, agent, trace, severity, score, summary, evidence = by_type["aws_access_key"]
    evidence = json.loads(evidence)
    assert (tenant, agent, trace, severity, score) == ("acme", "planner-7", trace_id, "warning", 4.0)
    assert evidence["occurrences"] == 4 and evidence["spans"] == 4 and evidence["redacted"] is True
    assert evidence["fingerprint"] == fingerprint(key, AWS_KEY_ID)
    assert {(loc["location"], loc["attribute"]) for loc in evidence["locations"]} == {
        ("attributes", "gen_ai.input.messages"), ("attributes", "gen_ai.tool.call.arguments")}
    assert AWS_KEY_ID not in json.dumps(anomalies) and fingerprint(key, AWS_KEY_ID) in summary
    assert by_type["basic_auth_credentials"][4] == 3.0


def test_keep_mode_stores_payloads_as_sent_and_still_flags_them(dsn):
    database = fresh_database(dsn, "t_test_secrets_keep")
    keeping = start_receiver(dsn, database, secrets="keep")
    client = store.connect(dsn, database)
    try:
        trace_id, sent = send_trace(keeping, "globex")
        wait_for(lambda: len(findings(client, trace_id)) == 9)
        stored = client.query("SELECT SpanAttributes['gen_ai.input.messages'] FROM otel_traces WHERE "
                              "TraceId = {t:String} AND SpanName = 'chat gpt-4o'",
                              parameters={"t": trace_id}).result_rows[0][0]
        assert stored == sent["messages"]
        assert {r[-1] for r in findings(client, trace_id)} == {False}
        anomalies = exposures(dsn, database, trace_id)
        assert {r[3] for r in anomalies} == {"critical"} and len(anomalies) == 4
        assert all("stored as sent" in r[5] for r in anomalies)
    finally:
        keeping.stop()
        client.close()


@pytest.mark.parametrize("name", ["agentwatch.collector.receiver.secrets", "agentwatch.detectors.secret_exposure"])
def test_docstring_examples(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(name))
    assert result.failed == 0 and result.attempted > 0


def test_text_that_is_not_valid_unicode_is_scanned_too():
    text = f"half a pair \ud800 then {GITHUB_TOKEN}"  # JSON bodies may carry lone surrogates ("\ud800")
    stored, found = scan(text, POLICY)
    assert [f.secret_type for f in found] == ["github_token"] and stored.startswith("half a pair \ud800 then [")


def test_log_records_are_scanned_like_spans(receiver, client):
    import logging

    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

    provider = LoggerProvider(resource=Resource.create({"service.name": "chat-ops", "agentwatch.tenant.id": "initech"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(
        endpoint=f"http://127.0.0.1:{receiver.http_port}/v1/logs")))
    logger = logging.getLogger("agent.slack")
    logger.propagate = False
    logger.addHandler(LoggingHandler(logger_provider=provider))
    logger.warning("posting to #ops with %s", SLACK_TOKEN)
    provider.shutdown()
    key = stored_key(client)
    rows = wait_for(lambda: client.query(
        "SELECT Tenant, Signal, Location, CharOffset, SecretType, Fingerprint, Redacted FROM secret_findings "
        "WHERE ServiceName = 'chat-ops'").result_rows)
    assert rows == [("initech", "logs", "body", len("posting to #ops with "), "slack_token",
                     fingerprint(key, SLACK_TOKEN), True)]
    body = client.query("SELECT Body FROM otel_logs WHERE ServiceName = 'chat-ops'").result_rows[0][0]
    assert body == f"posting to #ops with {marker('slack_token', fingerprint(key, SLACK_TOKEN))}"


def test_an_8_mb_payload_is_stored_whole_with_its_secret_replaced(receiver, client):
    import os
    import time

    import httpx
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    thought = "I compare the ledger with https://docs.example.com/orders?page=2 and note the totals. " * 100_000
    middle = len(thought) // 2
    payload = thought[:middle] + f" found {AWS_KEY_ID} in the dump " + thought[middle:]
    trace_id = os.urandom(16)
    request = ExportTraceServiceRequest()
    span = Span(trace_id=trace_id, span_id=os.urandom(8), name="chat", start_time_unix_nano=time.time_ns(),
                end_time_unix_nano=time.time_ns() + 1)
    span.attributes.append(KeyValue(key="gen_ai.output.messages", value=AnyValue(string_value=payload)))
    request.resource_spans.add().scope_spans.add().spans.append(span)
    answer = httpx.post(f"http://127.0.0.1:{receiver.http_port}/v1/traces", content=request.SerializeToString(),
                        headers={"Content-Type": "application/x-protobuf"}, timeout=120)
    assert answer.status_code == 200
    key = stored_key(client)
    stored = wait_for(lambda: client.query(
        "SELECT SpanAttributes['gen_ai.output.messages'] FROM otel_traces WHERE TraceId = {t:String}",
        parameters={"t": trace_id.hex()}).result_rows)[0][0]
    assert stored == payload.replace(AWS_KEY_ID, marker("aws_access_key", fingerprint(key, AWS_KEY_ID)))
    rows = wait_for(lambda: findings(client, trace_id.hex()))  # written right after the span, same batch
    assert [(r[5], r[6], r[8]) for r in rows] == [("gen_ai.output.messages", payload.index(AWS_KEY_ID),
                                                   "aws_access_key")]


def test_otlp_json_requests_are_scanned_record_by_record(receiver, client):
    import os
    import time

    import httpx

    trace_id, now = os.urandom(16).hex(), time.time_ns()
    value = f"pushed with {GITHUB_TOKEN} to main"
    body = {"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "json-agent"}}]}, "scopeSpans": [{"spans": [
            {"traceId": trace_id, "spanId": os.urandom(8).hex(), "name": "execute_tool git",
             "startTimeUnixNano": str(now), "endTimeUnixNano": str(now + 1000), "attributes": [
                 {"key": "gen_ai.tool.call.result", "value": {"stringValue": value}}]}]}]}]}
    # JSON may escape any character: "/" as "\/" here, which a check of the raw body would not see through.
    raw = json.dumps(body).replace("/", "\\/").encode()
    answer = httpx.post(f"http://127.0.0.1:{receiver.http_port}/v1/traces", content=raw,
                        headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    key = stored_key(client)
    rows = wait_for(lambda: findings(client, trace_id))
    assert [(r[5], r[6], r[8]) for r in rows] == [("gen_ai.tool.call.result", len("pushed with "), "github_token")]
    stored = client.query("SELECT SpanAttributes['gen_ai.tool.call.result'] FROM otel_traces WHERE TraceId = "
                          "{t:String}", parameters={"t": trace_id}).result_rows[0][0]
    assert stored == value.replace(GITHUB_TOKEN, marker("github_token", fingerprint(key, GITHUB_TOKEN)))


# --- cost and completeness ---------------------------------------------------------------------------------


def best_time(work, repeats: int = 3) -> float:
    import time

    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        work()
        times.append(time.perf_counter() - began)
    return min(times)


def prose(size: int) -> str:
    return ("The agent reads the ledger, compares totals and writes a short note. " * (size // 60 + 1))[:size]


# Text crafted against the rules: a prefix that once made a rule backtrack over all that followed, an anchor
# repeated with nothing to close it, and every anchor every few hundred bytes (so the windows of a large text
# join into one).
ADVERSARIAL = {
    "openai_prefix": lambda n: "sk-" * (n // 3) + " T3BlbkFJ",
    "putty_headers": lambda n: "PuTTY-User-Key-File-2:" * (n // 22),
    "key_headers": lambda n: "-----BEGIN RSA PRIVATE KEY-----" * (n // 31),
    "connection_strings": lambda n: ("Server=x;" + "?pwd=v&user=") * (n // 21),
    "jwt_heads": lambda n: ("eyJ" + "a" * 300 + " ") * (n // 304),
    "every_anchor": lambda n: "".join(
        prose(300) + anchor for anchor in (
            "sk-" * 30 + "T3BlbkFJ", "PuTTY-User-Key-File-2:", "-----BEGIN RSA PRIVATE KEY-----", "eyJhbGci.eyJ",
            "Server=db;uid=x;", "?password=", "://user:pass@", "AKIA", "ghp_", "xoxb-", "AccountKey=", "AIza",
            "password = ", "Private-MAC: ", ":_authToken=", "-----END RSA PRIVATE KEY-----")
    ) * (n // 5200),
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_crafted_text_scans_in_time_linear_in_its_length(name):
    # Times relative to each other and to a plain scan of text as long, not absolute: a rule that rescans
    # what it read (quadratic) takes 16 times as long for 4 times the text (linear: 4), and more than a plain
    # scan by far more than the cost of the secrets it finds (tens of thousands here: a fingerprint each).
    make = ADVERSARIAL[name]
    small, large = make(1 << 18), make(1 << 20)
    plain = best_time(lambda: scan(prose(len(large)), POLICY))
    t_small = best_time(lambda: scan(small, POLICY))
    t_large = best_time(lambda: scan(large, POLICY))
    assert t_large < 10 * t_small + 0.02, (t_small, t_large)
    findings = len(scan(large, POLICY)[1])
    assert t_large < 50 * plain + 50e-6 * findings + 0.02, (plain, t_large, findings)


def test_the_inputs_that_took_seconds_take_no_longer_than_plain_text_of_their_size_many_times_over():
    for text in ("sk-" * 8_000 + " T3BlbkFJ", "sk-" * 21_000 + " T3BlbkFJ", "PuTTY-User-Key-File-2:" * 2_000):
        plain = best_time(lambda: scan(prose(len(text)), POLICY))
        assert best_time(lambda: scan(text, POLICY)) < 50 * plain + 0.01


@pytest.mark.parametrize("text,secret,left", [
    ("postgres://app:Tr0ub4dor\\x9Zq@db", "Tr0ub4dor\\x9Zq", "x9Zq"),
    ('Server=db;User Id=sa;Password=Sup3r"Secret;', 'Sup3r"Secret', "Secret"),
    ("https://12345678:" + "A1b2C3d4E5" * 3 + "F6g7H" + "SECRETTAILxyz@host",
     "12345678:" + "A1b2C3d4E5" * 3 + "F6g7H" + "SECRETTAILxyz", "SECRETTAIL"),
])
def test_a_secret_is_redacted_whole_where_its_value_holds_a_quote_or_backslash_or_two_rules_overlap(text, secret,
                                                                                                   left):
    stored, found = scan(text, POLICY)
    assert left not in stored and len(found) == 1
    assert (found[0].offset, found[0].length) == (text.index(secret), len(secret))
    assert stored == text.replace(secret, marker(found[0].secret_type, found[0].fingerprint))


def test_a_connection_string_inside_json_keeps_the_document_valid():
    document = json.dumps({"dsn": "Server=db;User Id=sa;Password=hunter22", "n": 1})
    stored, found = scan(document, POLICY)
    assert [f.secret_type for f in found] == ["connection_string_password"]
    assert json.loads(stored)["dsn"] == "Server=db;User Id=sa;Password=" + marker(
        "connection_string_password", POLICY.fingerprint("hunter22"))


def test_a_jwt_whose_payload_runs_far_past_its_chunk_is_redacted_whole():
    def part(value) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    token = f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part({'sub': '42', 'blob': 'x' * 120_000})}.c2lnbmF0dXJl"
    text = prose(70_000) + " Bearer " + token + " then more " + prose(200_000)
    stored, found = scan(text, POLICY)
    assert [(f.secret_type, f.offset, f.length) for f in found] == [("json_web_token", text.index(token), len(token))]
    assert token[-200:] not in stored and stored.endswith(prose(200_000))


def test_offsets_are_characters_where_the_text_is_not_ascii():
    text = "naïve → 東京 " * 10_000 + f"key {AWS_KEY_ID} ✓"
    stored, found = scan(text, POLICY)
    assert [(f.offset, f.length) for f in found] == [(text.index(AWS_KEY_ID), 20)]
    assert stored == text.replace(AWS_KEY_ID, marker("aws_access_key", found[0].fingerprint))


def test_names_resources_links_and_scopes_are_scanned_and_a_shared_resource_once():
    import os

    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from agentwatch.collector.receiver.records import log_rows, trace_rows

    def kv(key: str, value: str) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(string_value=value))

    command = "deploy --db postgres://ops:Sup3rS3cret@db.internal/ops"
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.append(kv("process.command_line", command))
    scope = resource_spans.scope_spans.add()
    for index in range(3):
        span = Span(trace_id=os.urandom(16), span_id=os.urandom(8), name=f"call {GITHUB_TOKEN}" if index == 0 else "x",
                    start_time_unix_nano=1, end_time_unix_nano=2)
        if index == 1:
            span.links.add(trace_id=os.urandom(16), span_id=os.urandom(8)).attributes.append(kv("auth", AWS_KEY_ID))
        scope.spans.append(span)
    rows = trace_rows(request, None, None, secrets=POLICY)
    found = sorted((r["Location"], r["Attribute"], r["SecretType"]) for r in rows.tables["secret_findings"])
    assert found == [("links[0]", "auth", "aws_access_key"), ("name", "SpanName", "github_token"),
                     ("resource", "process.command_line", "basic_auth_credentials")]
    spans = rows.tables["otel_traces"]
    assert all("Sup3rS3cret" not in s["ResourceAttributes"]["process.command_line"] for s in spans)
    assert GITHUB_TOKEN not in spans[0]["SpanName"] and AWS_KEY_ID not in json.dumps(spans[1]["Links.Attributes"])

    logs = ExportLogsServiceRequest()
    scope_logs = logs.resource_logs.add().scope_logs.add()
    scope_logs.scope.attributes.append(kv("token", SLACK_TOKEN))
    for _ in range(2):
        scope_logs.log_records.append(LogRecord(time_unix_nano=1, body=AnyValue(string_value="ok")))
    rows = log_rows(logs, None, secrets=POLICY)
    assert [(r["Location"], r["SecretType"]) for r in rows.tables["secret_findings"]] == [("scope", "slack_token")]
    assert all(SLACK_TOKEN not in r["ScopeAttributes"]["token"] for r in rows.tables["otel_logs"])


def test_an_api_key_tenant_owns_the_findings_of_its_logs_and_the_attributes_of_its_logs_and_metrics(dsn):
    import os
    import time

    import httpx
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    from agentwatch.collector.receiver import api_keys

    def kv(key: str, value: str) -> KeyValue:
        return KeyValue(key=key, value=AnyValue(string_value=value))

    database = fresh_database(dsn, "t_test_secrets_tenant")
    client = store.connect(dsn, database)
    key = api_keys.create_key(client, "globex", "ci")
    keyed = start_receiver(dsn, database)
    try:
        trace_id = os.urandom(16)
        logs = ExportLogsServiceRequest()
        resource_logs = logs.resource_logs.add()
        resource_logs.resource.attributes.append(kv("service.name", "tenant-claims"))
        record = LogRecord(time_unix_nano=time.time_ns(), trace_id=trace_id, span_id=os.urandom(8),
                           body=AnyValue(string_value=f"pushed with {GITHUB_TOKEN}"))
        record.attributes.append(kv("agentwatch.tenant.id", "acme"))
        resource_logs.scope_logs.add().log_records.append(record)
        metrics = ExportMetricsServiceRequest()
        metric = metrics.resource_metrics.add().scope_metrics.add().metrics.add(name="tenant.claims")
        point = metric.gauge.data_points.add(time_unix_nano=time.time_ns(), as_int=1)
        point.attributes.append(kv("agentwatch.tenant.id", "acme"))
        auth = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {key}"}
        for signal, request in (("logs", logs), ("metrics", metrics)):
            answer = httpx.post(f"http://127.0.0.1:{keyed.http_port}/v1/{signal}",
                                content=request.SerializeToString(), headers=auth)
            assert answer.status_code == 200
        keyed.flush()
        assert wait_for(lambda: client.query(
            "SELECT Tenant, SecretType FROM secret_findings WHERE TraceId = {t:String}",
            parameters={"t": trace_id.hex()}).result_rows) == [("globex", "github_token")]
        assert client.query("SELECT LogAttributes['agentwatch.tenant.id'], LogAttributes['agentwatch.tenant.claimed_id']"
                            " FROM otel_logs WHERE TraceId = {t:String}",
                            parameters={"t": trace_id.hex()}).result_rows == [("globex", "acme")]
        assert wait_for(lambda: client.query(
            "SELECT Attributes['agentwatch.tenant.id'], Attributes['agentwatch.tenant.claimed_id'] FROM "
            "otel_metrics_gauge WHERE MetricName = 'tenant.claims'").result_rows) == [("globex", "acme")]
    finally:
        keyed.stop()
        client.close()
