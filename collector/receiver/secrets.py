"""Credential material in captured text: found by format, fingerprinted, replaced by a marker.

The receiver scans every string of a span (attributes, event attributes, status
message) and of a log record (body, attributes) as it converts them. Each secret
found becomes one `secret_findings` row (where, what type, a fingerprint), and,
unless the policy keeps payloads as sent (AGENTWATCH_SECRETS=keep), its value is
replaced in the stored text by a marker naming its type and fingerprint:

    >>> policy = SecretPolicy(key=b"k" * 32)
    >>> text, found = scan("id AKIAIOSFODNN7EXAMPLE, ok", policy)
    >>> text
    'id [redacted-secret:aws_access_key:dc74b66977bbf4c1], ok'
    >>> [(f.secret_type, f.offset, f.length) for f in found]
    [('aws_access_key', 3, 20)]

Every other character is kept as it was. The fingerprint is an HMAC-SHA256 of the
value under the store's own key (table `secret_keys`, made by migration 0011),
cut to 64 bits: the same secret gives the same fingerprint everywhere in one
store, so repeats can be correlated, and without the key not even a short
password can be recovered from it by guessing.

Cost: all rules' anchors are matched in one linear RE2 pass (`secret_rules`);
text with no anchor is done after that pass, and a protobuf request is first
passed whole (`SecretPolicy.within`), so most requests cost that one pass. A
rule then runs (Python `re`, for detect-secrets' expressions as they are) only
where its anchor occurs: in the whole text if it is short, else around the 64 KB
chunks that hold the anchor, so a large payload costs one pass, plus a pass of
the few rules it gives cause to.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass

import re2

from agentwatch.collector.receiver.secret_rules import RULES, Rule
from agentwatch.schemas.attributes import AGENT_ID_KEYS, DEFAULT_TENANT, TENANT_ID, first

MODES = ("redact", "keep")
FINDINGS_TABLE = "secret_findings"
KEYS_TABLE = "secret_keys"
CHUNK = 1 << 16  # a text longer than this is matched chunk by chunk
MAX_ANCHOR = 128  # chunks overlap by this much, so an anchor across a boundary is seen whole
WINDOW_BEFORE = 4096  # a match may begin this far before its anchor (a connection string's other keys)
WINDOW_AFTER = 20_000  # and end this far after it (a private key block)
FINGERPRINT_HEX = 16
_LINE_BREAKS = re.compile(r"\s+|\\[rn]")
# A value ends where JSON text would end it: cutting there keeps a JSON document valid after redaction.
_VALUE_END = frozenset("\"'\\ \t\r\n")
_VALUE_LEAD = frozenset("\"' \t\r\n=:")


def marker(secret_type: str, fingerprint: str) -> str:
    """What a secret's value is replaced by: ASCII, no quote or backslash, so JSON stays JSON."""
    return f"[redacted-secret:{secret_type}:{fingerprint}]"


@dataclass(frozen=True)
class SecretPolicy:
    """What the receiver does with a secret: the store's fingerprint key, and whether to redact."""

    key: bytes
    redact: bool = True
    # The rules whose anchor occurs in the request at hand (None: any may): `within`.
    rules: frozenset[int] | None = None

    @staticmethod
    def from_mode(key: bytes, mode: str) -> SecretPolicy:
        if mode not in MODES:
            raise ValueError(f"AGENTWATCH_SECRETS must be one of {MODES}, not {mode!r}")
        return SecretPolicy(key, redact=mode == "redact")

    def within(self, body: bytes) -> SecretPolicy | None:
        """This policy for one protobuf request: None when no rule can match anywhere in it, else narrowed
        to the rules that can. Every string of a protobuf request is in its body as it is (UTF-8), so one
        pass over the body answers for all its records. (JSON may escape any character: not so for JSON.)"""
        hits = _matcher().anchored(body)
        return dataclasses.replace(self, rules=frozenset(hits)) if hits else None

    def fingerprint(self, value: str) -> str:
        # Line breaks, real or JSON-escaped, are not part of a key block: the same key pasted as text or
        # inside a JSON document has one fingerprint.
        canonical = _LINE_BREAKS.sub("", value)
        digest = hmac.new(self.key, canonical.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
        return digest[:FINGERPRINT_HEX]


@dataclass(frozen=True)
class Finding:
    secret_type: str
    offset: int  # characters from the start of the text as sent
    length: int
    fingerprint: str


class _Anchors:
    """Anchors matched together: one RE2 set, one linear pass."""

    def __init__(self, anchors: list[str]) -> None:
        self.size = len(anchors)
        self.set = re2.Set.SearchSet(re2.Options())
        for anchor in anchors:
            self.set.Add(anchor)
        self.set.Compile()

    def anchored(self, text: str | bytes) -> list[int]:
        """The indexes of the anchors that occur in `text` (str, or bytes of UTF-8)."""
        if not self.size:
            return []
        try:
            return self.set.Match(text) or []
        except UnicodeEncodeError:  # a lone surrogate (JSON allows "\ud800"): RE2 reads UTF-8 only
            return self.set.Match(text.encode("utf-8", "surrogatepass")) or []


class _Matcher:
    """The rules, with their anchors."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self.anchors = _Anchors([rule.anchor for rule in rules])
        self.anchored = self.anchors.anchored

    def ranges(self, text: str) -> dict[int, list[tuple[int, int]]]:
        """Per rule whose anchor occurs: the ranges of `text` where its matches can be."""
        size = len(text)
        if size <= CHUNK:
            return {index: [(0, size)] for index in self.anchored(text)}
        # A large text is matched chunk by chunk (one pass all the same), so each rule runs only
        # around the chunks that hold its anchor.
        found: dict[int, list[tuple[int, int]]] = {}
        for start in range(0, size, CHUNK):
            end = min(size, start + CHUNK + MAX_ANCHOR)
            for index in self.anchored(text[start:end]):
                low, high = max(0, start - WINDOW_BEFORE), min(size, end + WINDOW_AFTER)
                ranges = found.setdefault(index, [])
                if ranges and low <= ranges[-1][1]:
                    ranges[-1] = (ranges[-1][0], high)
                else:
                    ranges.append((low, high))
        return found

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, type) of each secret in `text`, in order, none overlapping."""
        found = set()
        for index, ranges in self.ranges(text).items():
            rule = self.rules[index]
            for low, high in ranges:
                for match in rule.pattern.finditer(text, low, high):
                    span = _value(text, match, rule)
                    if span is not None:
                        found.add((*span, rule.secret_type, rule.generic))
        kept, end = [], -1
        for span in sorted(found, key=lambda s: (s[0], -s[1], s[3])):
            if span[0] >= end:  # overlapping finds of two rules: the one that starts first, the longest
                kept.append(span[:3])
                end = span[1]
        return kept


def _value(text: str, match, rule: Rule) -> tuple[int, int] | None:
    """The secret's own characters in a match: its value group, less delimiters the expression took in."""
    group = match.lastindex if rule.value_group and match.lastindex else 0
    start, end = match.span(group)
    if rule.secret_type != "private_key":  # a key block holds whitespace and \n escapes of its own
        while start < end and text[start] in _VALUE_LEAD:
            start += 1
        for index in range(start, end):
            if text[index] in _VALUE_END:
                end = index
                break
    if end - start < (1 if group else 4) or (rule.check is not None and not rule.check(text[start:end])):
        return None
    return start, end


_MATCHER: _Matcher | None = None


def _matcher() -> _Matcher:
    global _MATCHER
    if _MATCHER is None:
        _MATCHER = _Matcher(RULES)
    return _MATCHER


def might_hold_secret(text: str | bytes) -> bool:
    """One linear pass: False means no rule can match anywhere in `text`. Bytes are read as UTF-8: a
    protobuf OTLP request can be checked whole, since each of its strings is in it as it is."""
    return bool(_matcher().anchored(text))


# An anchor that starts with a literal: Python's `re` finds it faster than a call into RE2 costs.
_LITERAL_START = re.compile(r"[A-Za-z0-9:_.-]")


@functools.lru_cache(maxsize=256)
def _candidate_check(rules: frozenset[int]) -> Callable[[str], bool]:
    """Whether a text holds the anchor of one of these rules (those a request was found to hold)."""
    anchors = sorted({_matcher().rules[index].anchor for index in rules})
    literal = [re.compile(a) for a in anchors if _LITERAL_START.match(a)]
    others = _Anchors([a for a in anchors if not _LITERAL_START.match(a)])

    def check(text: str) -> bool:
        return any(pattern.search(text) for pattern in literal) or bool(others.anchored(text))

    return check


def _candidate(text: str, policy: SecretPolicy) -> bool:
    return might_hold_secret(text) if policy.rules is None else _candidate_check(policy.rules)(text)


def scan(text: str, policy: SecretPolicy) -> tuple[str, list[Finding]]:
    """The text to store (redacted unless the policy keeps it) and the secrets found in it."""
    spans = _matcher().spans(text)
    if not spans:
        return text, []
    findings, parts, at = [], [], 0
    for start, end, secret_type in spans:
        finding = Finding(secret_type, start, end - start, policy.fingerprint(text[start:end]))
        findings.append(finding)
        parts += [text[at:start], marker(secret_type, finding.fingerprint)]
        at = end
    parts.append(text[at:])
    return ("".join(parts) if policy.redact else text), findings


def store_key(client) -> bytes:
    """The store's fingerprint key: the first row of `secret_keys` (migration 0011 makes one)."""
    rows = client.query(f"SELECT Key FROM {KEYS_TABLE} ORDER BY CreatedAt, Key LIMIT 1").result_rows
    if not rows:
        raise RuntimeError(f"the store has no fingerprint key in {KEYS_TABLE}: run `agentwatch schema apply`")
    return bytes.fromhex(rows[0][0])


# --- rows of the receiver --------------------------------------------------------------------------------

def _scan_map(values: dict[str, str], policy: SecretPolicy, where: dict, out: list[dict]) -> None:
    for name, value in values.items():
        text, findings = scan(value, policy)
        if not findings:
            continue
        values[name] = text
        out += [{**where, "Attribute": name, "CharOffset": f.offset, "CharLength": f.length,
                 "SecretType": f.secret_type, "Fingerprint": f.fingerprint, "Redacted": policy.redact}
                for f in findings]


def scan_span(row: dict, policy: SecretPolicy) -> list[dict]:
    """Scan (and, by the policy, redact in place) an otel_traces row: its attributes, its events'
    attributes and its status message. Returns its secret_findings rows."""
    attrs = row["SpanAttributes"]
    events = row.get("Events.Attributes", ())
    status = row.get("StatusMessage", "")
    texts = list(attrs.values())
    if status:
        texts.append(status)
    for event_attrs in events:
        texts += event_attrs.values()
    # One pass over everything first: most spans hold no candidate at all. (A large payload goes
    # straight to its own scan below, which is one pass too.)
    if sum(map(len, texts)) <= CHUNK and not _candidate("\0".join(texts), policy):
        return []
    base = {"Timestamp": row["Timestamp"], "TraceId": row["TraceId"], "SpanId": row["SpanId"],
            "ParentSpanId": row["ParentSpanId"], "ServiceName": row["ServiceName"], "Signal": "traces",
            "Tenant": attrs.get(TENANT_ID) or row["ResourceAttributes"].get(TENANT_ID) or DEFAULT_TENANT,
            "AgentId": first(attrs, AGENT_ID_KEYS), "EventName": ""}
    found: list[dict] = []
    _scan_map(attrs, policy, {**base, "Location": "attributes"}, found)
    for index, (name, event_attrs) in enumerate(zip(row.get("Events.Name", ()), events)):
        _scan_map(event_attrs, policy, {**base, "Location": f"events[{index}]", "EventName": name}, found)
    if status:
        holder = {"StatusMessage": status}
        _scan_map(holder, policy, {**base, "Location": "status"}, found)
        row["StatusMessage"] = holder["StatusMessage"]
    return found


def scan_log(row: dict, policy: SecretPolicy) -> list[dict]:
    """The same for an otel_logs row: its body and its attributes."""
    attrs = row["LogAttributes"]
    texts = [row["Body"], *attrs.values()]
    if sum(map(len, texts)) <= CHUNK and not _candidate("\0".join(texts), policy):
        return []
    base = {"Timestamp": row["Timestamp"], "TraceId": row["TraceId"], "SpanId": row["SpanId"],
            "ParentSpanId": "", "ServiceName": row["ServiceName"], "Signal": "logs",
            "Tenant": attrs.get(TENANT_ID) or row["ResourceAttributes"].get(TENANT_ID) or DEFAULT_TENANT,
            "AgentId": first(attrs, AGENT_ID_KEYS), "EventName": attrs.get("event.name", "")}
    found: list[dict] = []
    holder = {"Body": row["Body"]}
    _scan_map(holder, policy, {**base, "Location": "body"}, found)
    row["Body"] = holder["Body"]
    _scan_map(attrs, policy, {**base, "Location": "attributes"}, found)
    return found
