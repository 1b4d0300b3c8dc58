"""Credential material in captured text: found by format, fingerprinted, replaced by a marker.

The receiver scans every string of a span (name, attributes, event and link
attributes, status message) and of a log record (body, attributes), and the
resource and scope attributes they share (once per request), as it converts them. Each secret
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
rule then runs (RE2, or a linear finder of its own: no rule backtracks) only
where its anchor occurs: in the whole text if it is short, else around the 64 KB
chunks that hold the anchor, so a large payload costs one pass, plus a pass of
the few rules it gives cause to. The text is encoded to UTF-8 once and every rule
reads those bytes, so the work is linear in the text's length whatever it holds:
text crafted to hold an anchor every few bytes costs more per byte (a match each
time), never more per byte as it grows.
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
CHUNK = 1 << 16  # a text longer than this (in UTF-8 bytes) is matched chunk by chunk
MAX_ANCHOR = 128  # chunks overlap by this much, so an anchor across a boundary is seen whole
# A match may begin this far before its anchor (a connection string's other keys): a longer prefix is cut
# at the window's start. Its end is not bounded: a window ends past its chunk by WINDOW_AFTER, then runs on
# to the end of the run of text (no space, quote or backslash) it falls in, and a match that reaches it is
# matched again from its start over the whole text; key blocks are read by their own finders, to their footer.
WINDOW_BEFORE = 4096
WINDOW_AFTER = 4096
FINGERPRINT_HEX = 16
_LINE_BREAKS = re.compile(r"\s+|\\[rn]")
# Delimiters a whole-match expression takes in at its ends: trimming them (a trailing backslash of a JSON
# escape above all) keeps a JSON document valid after redaction.
_VALUE_END = frozenset(b"\"'\\ \t\r\n")
_VALUE_LEAD = frozenset(b"\"' \t\r\n=:")


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


_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 bytes that do not start a character
_RUN = re2.compile(rb"[^\s\"'\\]*")  # where a window's end may fall inside a secret: no space, quote or backslash


def _char_offsets(text: str, data: bytes, offsets: list[int]) -> dict[int, int]:
    """Byte offsets of `data` (`text` in UTF-8) as character offsets of `text`: one pass over the bytes."""
    if len(data) == len(text):
        return {offset: offset for offset in offsets}
    out, at, chars = {}, 0, 0
    for offset in sorted(set(offsets)):
        chars += len(data[at:offset].translate(None, _CONTINUATION))
        out[offset] = chars
        at = offset
    return out


class _Matcher:
    """The rules, with their anchors."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules
        self.anchors = _Anchors([rule.anchor for rule in rules])
        self.anchored = self.anchors.anchored
        options = re2.Options()
        options.log_errors = False
        self.compiled = [re2.compile(rule.expression.encode(), options) if rule.expression else None
                         for rule in rules]
        # The groups that hold the value (the last of them that took part), else group 1, the match.
        self.groups = [tuple(range(compiled.groups, 1, -1)) if rule.value_group and compiled is not None
                       and compiled.groups > 1 else (1,) for rule, compiled in zip(rules, self.compiled)]

    def ranges(self, data: bytes) -> dict[int, list[tuple[int, int]]]:
        """Per rule whose anchor occurs: the ranges of `data` where its matches can start, none overlapping."""
        size = len(data)
        if size <= CHUNK:
            return {index: [(0, size)] for index in self.anchored(data)}
        # A large text is matched chunk by chunk (one pass all the same), so each rule runs only
        # around the chunks that hold its anchor.
        found: dict[int, list[tuple[int, int]]] = {}
        for start in range(0, size, CHUNK):
            end = min(size, start + CHUNK + MAX_ANCHOR)
            for index in self.anchored(data[start:end]):
                low, high = max(0, start - WINDOW_BEFORE), min(size, end + WINDOW_AFTER)
                ranges = found.setdefault(index, [])
                if ranges and low <= ranges[-1][1]:
                    ranges[-1] = (ranges[-1][0], high)
                else:
                    ranges.append((low, high))
        for index, ranges in found.items():
            # A window's end that falls inside a run of secret-like text moves to the run's end, so a long
            # secret is taken whole (a JWT's payload may run on for megabytes); up to the next window at
            # most, which then joins this one, so each byte is read once.
            merged: list[tuple[int, int]] = []
            for number, (low, high) in enumerate(ranges):
                if merged and low <= merged[-1][1]:
                    low = merged.pop()[0]
                limit = ranges[number + 1][0] if number + 1 < len(ranges) else size
                merged.append((low, max(high, _RUN.match(data, high, max(high, limit)).end())))
            found[index] = merged
        return found

    def _matches(self, index: int, data: bytes, low: int, high: int):
        """(start, end) in bytes of the secret in each match of rule `index` that starts in [low, high)."""
        rule, compiled, groups = self.rules[index], self.compiled[index], self.groups[index]
        if compiled is None:
            yield from rule.finder(data, low, high)
            return
        whole = low == 0 and high == len(data)
        window = data if whole else data[low:high]  # `$` ends a token at the window's end too
        for match in compiled.finditer(window):
            base = 0 if whole else low
            if not whole and match.end() == len(window) and high < len(data):
                # It runs to the window's end: matched again from its start in the whole text.
                again = compiled.match(data, low + match.start())
                if again is not None:
                    match, base = again, 0
            for group in groups:
                start, end = match.span(group)
                if start >= 0:
                    yield base + start, base + end
                    break

    def spans(self, text: str) -> list[tuple[int, int, str]]:
        """(start, end, type) in characters of each secret in `text`, in order, none overlapping: finds of
        rules that overlap are one secret, redacted whole (the type of a token's own format, else the longest)."""
        data = text.encode("utf-8", "surrogatepass")
        found = []
        for index, ranges in self.ranges(data).items():
            rule = self.rules[index]
            for low, high in ranges:
                for start, end in self._matches(index, data, low, high):
                    span = _value(data, start, end, rule)
                    if span is not None:
                        found.append((*span, rule.secret_type, rule.generic))
        if not found:
            return []
        found.sort()
        merged: list[list] = []
        for start, end, secret_type, generic in found:
            rank = (generic, -(end - start))
            if merged and start < merged[-1][1]:
                last = merged[-1]
                last[1] = max(last[1], end)
                if rank < last[3]:
                    last[2], last[3] = secret_type, rank
            else:
                merged.append([start, end, secret_type, rank])
        chars = _char_offsets(text, data, [offset for span in merged for offset in span[:2]])
        return [(chars[start], chars[end], secret_type) for start, end, secret_type, _ in merged]


def _value(data: bytes, start: int, end: int, rule: Rule) -> tuple[int, int] | None:
    """The secret's own bytes in a match: a value group whole; a whole match less the delimiters its
    expression takes in at either end (a quote or space before a token, a backslash of a JSON escape after it)."""
    if not rule.value_group and rule.finder is None:
        while start < end and data[start] in _VALUE_LEAD:
            start += 1
        while end > start and data[end - 1] in _VALUE_END:
            end -= 1
    if end - start < (1 if rule.value_group else 4):
        return None
    if rule.check is not None and not rule.check(data[start:end].decode("utf-8", "surrogatepass")):
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


def _clean(texts: list[str], policy: SecretPolicy) -> bool:
    """One pass over everything first: most records hold no candidate at all. (A large payload goes
    straight to its own scan, which is one pass too.)"""
    return sum(map(len, texts)) <= CHUNK and not _candidate("\0".join(texts), policy)


class Shared:
    """The maps the records of one request share (a resource's attributes, a scope's): each is scanned once,
    its findings filed with the first record stored that holds it. One per request."""

    def __init__(self) -> None:
        self._seen: set[int] = set()

    def scan(self, maps: list[tuple[str, dict[str, str]]], policy: SecretPolicy, base: dict) -> list[dict]:
        found: list[dict] = []
        for location, values in maps:
            if id(values) in self._seen:
                continue
            self._seen.add(id(values))  # the map lives as long as the request's rows that hold it
            if values and not _clean(list(values.values()), policy):
                _scan_map(values, policy, {**base, "Location": location, "EventName": ""}, found)
        return found


def _base(row: dict, attrs: dict[str, str], signal: str, tenant: str | None) -> dict:
    # The tenant of an API key, where the request has one, whatever a record or its resource claims.
    return {"Timestamp": row["Timestamp"], "TraceId": row["TraceId"], "SpanId": row["SpanId"],
            "ParentSpanId": row.get("ParentSpanId", ""), "ServiceName": row["ServiceName"], "Signal": signal,
            "Tenant": tenant or attrs.get(TENANT_ID) or row["ResourceAttributes"].get(TENANT_ID) or DEFAULT_TENANT,
            "AgentId": first(attrs, AGENT_ID_KEYS), "EventName": ""}


def scan_span(row: dict, policy: SecretPolicy, tenant: str | None = None, shared: Shared | None = None) -> list[dict]:
    """Scan (and, by the policy, redact in place) an otel_traces row: its name, attributes, events' and links'
    attributes, status message, and (once per request, by `shared`) its resource's attributes. `tenant`: the
    request's API key's. Returns its secret_findings rows."""
    attrs = row["SpanAttributes"]
    events = row.get("Events.Attributes", ())
    links = row.get("Links.Attributes", ())
    status = row.get("StatusMessage", "")
    found: list[dict] = []
    base = None
    if shared is not None:
        base = _base(row, attrs, "traces", tenant)
        found += shared.scan([("resource", row["ResourceAttributes"])], policy, base)
    texts = [row["SpanName"], *attrs.values()]
    if status:
        texts.append(status)
    for values in (*events, *links):
        texts += values.values()
    if _clean(texts, policy):
        return found
    base = base or _base(row, attrs, "traces", tenant)
    holder = {"SpanName": row["SpanName"]}
    _scan_map(holder, policy, {**base, "Location": "name"}, found)
    row["SpanName"] = holder["SpanName"]
    _scan_map(attrs, policy, {**base, "Location": "attributes"}, found)
    for index, (name, event_attrs) in enumerate(zip(row.get("Events.Name", ()), events)):
        _scan_map(event_attrs, policy, {**base, "Location": f"events[{index}]", "EventName": name}, found)
    for index, link_attrs in enumerate(links):
        _scan_map(link_attrs, policy, {**base, "Location": f"links[{index}]"}, found)
    if status:
        holder = {"StatusMessage": status}
        _scan_map(holder, policy, {**base, "Location": "status"}, found)
        row["StatusMessage"] = holder["StatusMessage"]
    return found


def scan_log(row: dict, policy: SecretPolicy, tenant: str | None = None, shared: Shared | None = None) -> list[dict]:
    """The same for an otel_logs row: its body and its attributes, and (once per request) its resource's
    and its scope's attributes."""
    attrs = row["LogAttributes"]
    found: list[dict] = []
    base = None
    if shared is not None:
        base = {**_base(row, attrs, "logs", tenant), "EventName": attrs.get("event.name", "")}
        found += shared.scan([("resource", row["ResourceAttributes"]), ("scope", row["ScopeAttributes"])],
                             policy, base)
    if _clean([row["Body"], *attrs.values()], policy):
        return found
    base = base or {**_base(row, attrs, "logs", tenant), "EventName": attrs.get("event.name", "")}
    holder = {"Body": row["Body"]}
    _scan_map(holder, policy, {**base, "Location": "body"}, found)
    row["Body"] = holder["Body"]
    _scan_map(attrs, policy, {**base, "Location": "attributes"}, found)
    return found
