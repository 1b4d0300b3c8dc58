"""The formats of credential material the receiver looks for, and the cheap anchor of each.

Each rule is one of detect-secrets' format plugins (its own regular expression,
as the plugin ships it, in RE2's syntax: `re2_form`) or one of the few formats it
lacks. Left out on purpose: the entropy plugins and the keyword plugin (they flag
hashes, ids and ordinary words), and the public-IP plugin (an address is not a
credential).

A rule's anchor is a short regular expression (RE2 syntax, which is also Python
syntax here) that every match of the rule contains: all anchors are matched
together in one linear pass (an RE2 set), and a rule runs only near its anchor's
occurrences, so text without any candidate costs one pass and nothing more.

Every rule runs in linear time: its expression under RE2 (no backtracking), where
each quantifier that is not bounded runs over a class the match itself consumes;
the two formats RE2 cannot say (a key block up to its footer, a PuTTY key file up to
its MAC) have finders of their own that read each byte a bounded number of times.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import re2

from detect_secrets.plugins.artifactory import ArtifactoryDetector
from detect_secrets.plugins.aws import AWSKeyDetector
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.basic_auth import BasicAuthDetector
from detect_secrets.plugins.cloudant import CloudantDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.ibm_cloud_iam import IbmCloudIamDetector
from detect_secrets.plugins.ibm_cos_hmac import IbmCosHmacDetector
from detect_secrets.plugins.jwt import JwtTokenDetector
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.softlayer import SoftlayerDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

# detect-secrets plugins deliberately not used (a test checks every installed plugin is used or listed here).
LEFT_OUT = {
    "KeywordDetector": "flags ordinary words such as 'password' next to any value",
    "Base64HighEntropyString": "flags any random-looking text: hashes, ids, encoded data",
    "HexHighEntropyString": "flags hex digests and trace ids",
    "IPPublicDetector": "an IP address is not a credential",
    # The two below are replaced by whole-value forms (RULES): the plugin's match is not the whole secret.
    "PrivateKeyDetector": "matches the BEGIN line only; the rule below takes the whole block",
    "NpmDetector": "its `.+` runs to the end of the line (a whole one-line JSON payload); bounded below",
}


def named_key(value: str) -> str:
    """The anchor of detect-secrets' named-key plugins (`cl_api_key = "..."`, `"secret_key": "..."`): the
    name's last word, the assignment and the value's own form (their expressions ignore case)."""
    return rf"""(?i:(?:key|pwd|pw|password|pass|token)["'\]]{{0,2}} *(?:=>|::?=?|=| +) *\\?["']?{value})"""


Finder = Callable[[bytes, int, int], Iterator[tuple[int, int]]]


@dataclass(frozen=True)
class Rule:
    secret_type: str  # what the marker and the finding call it
    # RE2 syntax: group 1 is the match (less what a lookaround of the original only looked at), groups after
    # it are the original's own; None where `finder` does the matching.
    expression: str | None
    anchor: str
    value_group: bool = False  # the secret is the last group that took part (the value after a name), not the match
    check: Callable[[str], bool] | None = None  # a format check of the value found
    generic: bool = False  # a password in a URL or connection string: a token's own format names it better
    # (UTF-8 bytes, low, high) -> (start, end) of each match that starts in [low, high); it may read past high.
    finder: Finder | None = None


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_LOOKBEHIND_START = r"(?:(?<=\W)|(?<=^))"  # detect-secrets' "at the start of a word or of the text"
_LOOKAHEAD = r"\(\?!(\\w|\[[^\]]*\])\)"  # (?!\w) or (?![class]): "not followed by"
_LONG_REPEAT = re.compile(r"\{(\d+),(\d{4,})\}")  # {m,n} past RE2's limit of 1000


def _not(item: str) -> str:
    return "[^0-9A-Za-z_]" if item == r"\w" else "[^" + item[1:]


def re2_form(pattern: re.Pattern) -> str:
    """A detect-secrets expression in RE2's syntax, the whole match as group 1. A lookbehind of a word start
    and a lookahead of the end become a character (or the text's edge) taken in outside the groups; a
    repeat bound RE2 cannot compile is left open (the longer run is redacted whole). Anything else RE2
    refuses fails here, at import, not at the first request."""
    source = pattern.pattern
    if pattern.flags & re.VERBOSE and re.search(r"\s|#", source):
        raise RuntimeError(f"verbose expression {source!r}: review its RE2 form")
    source = source.replace(_LOOKBEHIND_START, "(?:^|[^0-9A-Za-z_])")
    source = _LONG_REPEAT.sub(r"{\1,}", source)
    tail = ""
    end = re.search(_LOOKAHEAD + "$", source)
    if end:
        source, tail = source[:end.start()], f"(?:{_not(end[1])}|$)"
    source = re.sub(_LOOKAHEAD + r"\)", lambda m: f")(?:{_not(m[1])}|$)", source)  # at the value group's end
    if "(?!" in source or "(?<" in source:
        raise RuntimeError(f"lookaround in {source!r}: review its RE2 form")
    expression = ("(?i)" if pattern.flags & re.IGNORECASE else "") + f"({source}){tail}"
    re2.compile(expression, _OPTIONS)
    return expression


def _plugin(plugin, anchors: list[str], value_group: bool = False, generic: bool = False) -> list[Rule]:
    """One rule per expression of a detect-secrets plugin, with the anchor of each."""
    patterns = list(plugin.denylist)
    if len(anchors) != len(patterns):
        raise RuntimeError(f"{plugin.__name__} has {len(patterns)} expressions in this detect-secrets release, "
                           f"{len(anchors)} anchors here: review the plugin and its anchors")
    kind = _slug(plugin.secret_type)
    return [Rule(kind, re2_form(pattern), anchor, value_group and pattern.groups > 0, generic=generic)
            for pattern, anchor in zip(patterns, anchors)]


def _jwt_valid(token: str) -> bool:
    return JwtTokenDetector.is_formally_valid(token)


_AWS_ID, _AWS_NAMED = AWSKeyDetector.denylist
PRIVATE_KEY_NAMES = r"(?:RSA |DSA |EC |OPENSSH |ENCRYPTED |SSH2 ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?"
MAX_KEY_BLOCK = 32_768  # bytes from a key file's header to its footer (or MAC): an 8192-bit RSA PEM is 6.5 KB


def _own(expression: str) -> str:
    """An expression of this module's own, checked by RE2 at import, the whole match as group 1."""
    expression = f"({expression})"
    re2.compile(expression, _OPTIONS)
    return expression


_KEY_HEADER = re2.compile(rf"-----BEGIN {PRIVATE_KEY_NAMES}-----".encode(), _OPTIONS)
_KEY_FOOTER = re2.compile(rf"-----END {PRIVATE_KEY_NAMES}-----".encode(), _OPTIONS)
_KEY_TEXT = re2.compile(rb"(?:[A-Za-z0-9+/=\s:,.-]|\\[rn])*", _OPTIONS)  # a block's body: lines may be JSON's \n
_KEY_BASE64 = re2.compile(rb"(?:[A-Za-z0-9+/=\s]|\\[rn])*", _OPTIONS)
_PUTTY_HEADER = re2.compile(rb"PuTTY-User-Key-File-[0-9]:", _OPTIONS)
_PUTTY_MAC = re2.compile(rb"Private-MAC: [0-9a-f]+", _OPTIONS)


def _headers(pattern, data: bytes, low: int, high: int) -> Iterator[tuple[int, int]]:
    for match in pattern.finditer(data, low, min(len(data), high + 64)):
        if match.start() >= high:
            return
        yield match.span()


def key_blocks(data: bytes, low: int, high: int) -> Iterator[tuple[int, int]]:
    """A key block from its header to the first footer after it, where all between is key text (at most
    MAX_KEY_BLOCK bytes), else the header and the base64 that follows it. Linear: footers are read once, in
    order; the key text after a header is read once, extended as later headers need; a match is not read again."""
    footers = iter(_KEY_FOOTER.finditer(data, low, min(len(data), high + MAX_KEY_BLOCK + 64)))
    footer = next(footers, None)
    text_from = text_to = -1  # [text_from, text_to): key text, read; text_done: text_to is where it ends
    text_done = False
    at = low
    for start, head_end in _headers(_KEY_HEADER, data, low, high):
        if start < at:
            continue
        while footer is not None and footer.start() < head_end:
            footer = next(footers, None)
        end = None
        if footer is not None and footer.start() - head_end <= MAX_KEY_BLOCK:
            if not text_from <= head_end <= text_to:
                text_from, text_to, text_done = head_end, head_end, False
            if not text_done and text_to < footer.start():
                text_to = _KEY_TEXT.match(data, text_to, footer.start()).end()
                text_done = text_to < footer.start()
            if text_to >= footer.start():
                end = footer.end()
        if end is None:
            end = _KEY_BASE64.match(data, head_end).end()
        yield start, end
        at = end


def putty_keys(data: bytes, low: int, high: int) -> Iterator[tuple[int, int]]:
    """A PuTTY key file from its header to the first MAC line after it, at most MAX_KEY_BLOCK bytes on.
    Linear: MAC lines are read once, in order."""
    macs = iter(_PUTTY_MAC.finditer(data, low, min(len(data), high + MAX_KEY_BLOCK + 64)))
    mac = next(macs, None)
    at = low
    for start, head_end in _headers(_PUTTY_HEADER, data, low, high):
        if start < at:
            continue
        while mac is not None and mac.start() < head_end:
            mac = next(macs, None)
        if mac is None:
            return
        if mac.start() - head_end <= MAX_KEY_BLOCK:
            at = _PUTTY_MAC.match(data, mac.start()).end()  # its hex, whole, past the window read above
            yield start, at


RULES: tuple[Rule, ...] = (
    Rule("aws_access_key", re2_form(_AWS_ID), r"A3T|ABIA|ACCA|AKIA|ASIA"),
    Rule("aws_secret_access_key", re2_form(_AWS_NAMED), r"(?i:aws)", value_group=True),
    # The credentials-file and environment form, which detect-secrets' quoted form misses:
    # aws_secret_access_key = wJalr...  /  AWS_SECRET_ACCESS_KEY=wJalr...
    # and the JSON of AWS's own tools ("SecretAccessKey": "wJalr...").
    Rule("aws_secret_access_key", _own(
        r"(?i:aws_?secret_?(?:access_?)?key|secretaccesskey)\\?[\"']?\s*[=:]\s*\\?[\"']?"
        r"([A-Za-z0-9/+]{40})") + r"(?:[^A-Za-z0-9/+=]|$)",
        r"(?i:aws_?secret|secretaccesskey)", value_group=True),
    *_plugin(ArtifactoryDetector, [r"AKC[a-zA-Z0-9]{10}", r"AP[0-9A-F][a-zA-Z0-9]{8}"]),
    *_plugin(AzureStorageKeyDetector, ["AccountKey="]),
    # Anchored on a whole `://user:password@` (any URL would do for `://` alone, and most payloads hold some).
    *_plugin(BasicAuthDetector, [r"://[^\s/@:]+:[^\s/@]+@"], value_group=True, generic=True),
    # A password with no user name (redis://:secret@host), which the plugin's expression requires.
    Rule("basic_auth_credentials", _own(r"://:([^:/?#\[\]@!$&'()*+,;=\s]+)@"), r"://:[^\s/@]+@",
         value_group=True, generic=True),
    *_plugin(CloudantDetector, [named_key("[0-9a-f]{64}"), named_key("[a-z]{24}"), r"\.cloudant\.com",
                                r"\.cloudant\.com"], value_group=True),
    *_plugin(DiscordBotTokenDetector, [r"[MNO][\w-]{23,25}\.[\w-]{6}\."]),
    # The GitHub and GitLab expressions group a prefix of the token: the whole match is the secret.
    *_plugin(GitHubTokenDetector, [r"gh[pousr]_"]),
    *_plugin(GitLabTokenDetector, [r"(?:glpat|gldt|glft|glsoat|glrt)-", "GR1348941", "glcbt-", "glimt-", "glptt-",
                                   "glagent-", "gloas-"]),
    *_plugin(IbmCloudIamDetector, [named_key("[a-zA-Z0-9_-]{44}")], value_group=True),
    *_plugin(IbmCosHmacDetector, [named_key("[a-f0-9]{48}")], value_group=True),
    # detect-secrets' JWT expression ends lazily (it leaves the signature out) and its character class
    # `0-9-_` spans ':' to '^' (backslashes included): this takes header.payload.signature in base64url
    # and keeps the plugin's own check that header and payload decode to JSON.
    Rule("json_web_token", _own(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "eyJ", check=_jwt_valid),
    *_plugin(MailchimpDetector, [r"-us[0-9]"]),
    Rule("npm_tokens", _own(r"//[^\s\"'\\]{1,256}/:_authToken=\s*(npm_[A-Za-z0-9]{36}|[A-Fa-f0-9-]{36})"),
         ":_authToken=", value_group=True),
    *_plugin(OpenAIDetector, ["T3BlbkFJ"]),
    # The whole block, header to footer (newlines may be real or JSON's \n), else the header and the
    # base64 that follows it; PuTTY's key file down to its MAC.
    Rule("private_key", None, "PRIVATE KEY-----", finder=key_blocks),
    Rule("private_key", None, "PuTTY-User-Key-File-", finder=putty_keys),
    *_plugin(PypiTokenDetector, ["pypi-AgEIcHlwaS5vcmc", "pypi-AgENdGVzdC5weXBpLm9yZw"]),
    *_plugin(SendGridDetector, [r"SG\.[a-zA-Z0-9_-]{22}\."]),
    *_plugin(SlackDetector, [r"(?i:xox[abposr]-)", r"(?i:hooks\.slack\.com/services/)"]),
    *_plugin(SoftlayerDetector, [named_key("[a-z0-9]{64}"), r"api.softlayer.com/soap/"], value_group=True),
    *_plugin(SquareOAuthDetector, ["sq0csp-"]),
    *_plugin(StripeDetector, ["k_live_"]),
    *_plugin(TelegramBotTokenDetector, [r"[0-9]{8}:[\w-]{35}"]),
    *_plugin(TwilioKeyDetector, [r"AC[a-z0-9]{32}", r"SK[a-z0-9]{32}"]),
    # Formats detect-secrets lacks.
    Rule("anthropic_api_key", _own(r"sk-ant-(?:api|admin)\d\d-[A-Za-z0-9_-]{80,120}") + r"(?:[^A-Za-z0-9_-]|$)",
         "sk-ant-"),
    Rule("google_api_key", _own(r"AIza[0-9A-Za-z_-]{35}") + r"(?:[^0-9A-Za-z_-]|$)", "AIza"),
    # A password in a connection string (ADO.NET / ODBC `Server=..;Password=..`, JDBC `?password=`),
    # only where the string is one: next to a server, host, user or database of its own. The value runs to
    # the `;` (or space) that ends it, through a quote or backslash that more of it follows (`Pa"ss;`), not
    # through one that ends the JSON string around it (`pass"}`). Three rules, so that no thread of one
    # form stays alive over text where another form matches.
    *(Rule("connection_string_password", _own(form), r"(?i:password|pwd)\s*=", value_group=True, generic=True)
      for form in (
          r"(?i:server|data source|host|address|addr|user id|uid|database|initial catalog)\s*=[^;\"'\\\n]+;"
          r"(?:[^;\"'\\\n]*;)*?\s*(?i:password|pwd)\s*=\s*(" + r"[^;\"'\\\s]+(?:[\"'\\]+[^;\"'\\\s,}\]:]+)*" + ")",
          r"[?&](?i:user|username)=[^&\s\"'\\]{1,100}&(?i:password|pwd)=([^&#;\s\"'\\]+)",
          r"[?&](?i:password|pwd)=([^&#;\s\"'\\]+)&(?i:user|username)=")),
)
