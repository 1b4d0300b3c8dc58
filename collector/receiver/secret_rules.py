"""The formats of credential material the receiver looks for, and the cheap anchor of each.

Each rule is one of detect-secrets' format plugins (its own regular expression,
as the plugin ships it) or one of the few formats it lacks. Left out on purpose:
the entropy plugins and the keyword plugin (they flag hashes, ids and ordinary
words), and the public-IP plugin (an address is not a credential).

A rule's anchor is a short regular expression (RE2 syntax, which is also Python
syntax here) that every match of the rule contains: all anchors are matched
together in one linear pass (an RE2 set), and a rule runs only near its anchor's
occurrences, so text without any candidate costs one pass and nothing more.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Rule:
    secret_type: str  # what the marker and the finding call it
    pattern: re.Pattern
    anchor: str
    value_group: bool = False  # the secret is the pattern's last group (the value after a name), not the match
    check: Callable[[str], bool] | None = None  # a format check of the value found
    generic: bool = False  # a password in a URL or connection string: a token's own format names it better


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _plugin(plugin, anchors: list[str], value_group: bool = False, generic: bool = False) -> list[Rule]:
    """One rule per expression of a detect-secrets plugin, with the anchor of each."""
    patterns = list(plugin.denylist)
    if len(anchors) != len(patterns):
        raise RuntimeError(f"{plugin.__name__} has {len(patterns)} expressions in this detect-secrets release, "
                           f"{len(anchors)} anchors here: review the plugin and its anchors")
    kind = _slug(plugin.secret_type)
    return [Rule(kind, pattern, anchor, value_group and pattern.groups > 0, generic=generic) for pattern, anchor in
            zip(patterns, anchors)]


def _jwt_valid(token: str) -> bool:
    return JwtTokenDetector.is_formally_valid(token)


_AWS_ID, _AWS_NAMED = AWSKeyDetector.denylist
PRIVATE_KEY_NAMES = r"(?:RSA |DSA |EC |OPENSSH |ENCRYPTED |SSH2 ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?"

RULES: tuple[Rule, ...] = (
    Rule("aws_access_key", _AWS_ID, r"A3T|ABIA|ACCA|AKIA|ASIA"),
    Rule("aws_secret_access_key", _AWS_NAMED, r"(?i:aws)", value_group=True),
    # The credentials-file and environment form, which detect-secrets' quoted form misses:
    # aws_secret_access_key = wJalr...  /  AWS_SECRET_ACCESS_KEY=wJalr...
    # and the JSON of AWS's own tools ("SecretAccessKey": "wJalr...").
    Rule("aws_secret_access_key", re.compile(
        r"(?i:aws_?secret_?(?:access_?)?key|secretaccesskey)\\?[\"']?\s*[=:]\s*\\?[\"']?"
        r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"),
        r"(?i:aws_?secret|secretaccesskey)", value_group=True),
    *_plugin(ArtifactoryDetector, [r"AKC[a-zA-Z0-9]{10}", r"AP[0-9A-F][a-zA-Z0-9]{8}"]),
    *_plugin(AzureStorageKeyDetector, ["AccountKey="]),
    # Anchored on a whole `://user:password@` (any URL would do for `://` alone, and most payloads hold some).
    *_plugin(BasicAuthDetector, [r"://[^\s/@:]+:[^\s/@]+@"], value_group=True, generic=True),
    # A password with no user name (redis://:secret@host), which the plugin's expression requires.
    Rule("basic_auth_credentials", re.compile(r"://:([^:/?#\[\]@!$&'()*+,;=\s]+)@"), r"://:[^\s/@]+@",
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
    Rule("json_web_token", re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "eyJ",
         check=_jwt_valid),
    *_plugin(MailchimpDetector, [r"-us[0-9]"]),
    Rule("npm_tokens", re.compile(r"//[^\s\"'\\]{1,256}/:_authToken=\s*(npm_[A-Za-z0-9]{36}|[A-Fa-f0-9-]{36})"),
         ":_authToken=", value_group=True),
    *_plugin(OpenAIDetector, ["T3BlbkFJ"]),
    # The whole block, header to footer (newlines may be real or JSON's \n), else the header and the
    # base64 that follows it; PuTTY's key file down to its MAC.
    Rule("private_key", re.compile(
        rf"-----BEGIN {PRIVATE_KEY_NAMES}-----(?:[A-Za-z0-9+/=\s:,.-]|\\[rn]){{0,16384}}?"
        rf"-----END {PRIVATE_KEY_NAMES}-----"
        rf"|-----BEGIN {PRIVATE_KEY_NAMES}-----(?:[A-Za-z0-9+/=\s]|\\[rn])*"), "PRIVATE KEY-----"),
    Rule("private_key", re.compile(r"PuTTY-User-Key-File-\d:[\s\S]{0,16384}?Private-MAC: [0-9a-f]+"),
         "PuTTY-User-Key-File-"),
    *_plugin(PypiTokenDetector, ["pypi-AgEIcHlwaS5vcmc", "pypi-AgENdGVzdC5weXBpLm9yZw"]),
    *_plugin(SendGridDetector, [r"SG\.[a-zA-Z0-9_-]{22}\."]),
    *_plugin(SlackDetector, [r"(?i:xox[abposr]-)", r"(?i:hooks\.slack\.com/services/)"]),
    *_plugin(SoftlayerDetector, [named_key("[a-z0-9]{64}"), r"api.softlayer.com/soap/"], value_group=True),
    *_plugin(SquareOAuthDetector, ["sq0csp-"]),
    *_plugin(StripeDetector, ["k_live_"]),
    *_plugin(TelegramBotTokenDetector, [r"[0-9]{8}:[\w-]{35}"]),
    *_plugin(TwilioKeyDetector, [r"AC[a-z0-9]{32}", r"SK[a-z0-9]{32}"]),
    # Formats detect-secrets lacks.
    Rule("anthropic_api_key", re.compile(r"sk-ant-(?:api|admin)\d\d-[A-Za-z0-9_-]{80,120}(?![A-Za-z0-9_-])"),
         "sk-ant-"),
    Rule("google_api_key", re.compile(r"AIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"), "AIza"),
    # A password in a connection string (ADO.NET / ODBC `Server=..;Password=..`, JDBC `?password=`),
    # only where the string is one: next to a server, host, user or database of its own.
    Rule("connection_string_password", re.compile(
        r"(?i:server|data source|host|address|addr|user id|uid|database|initial catalog)\s*=[^;\"'\\\n]{1,200};"
        r"(?:[^;\"'\\\n]{0,200};){0,8}?\s*(?i:password|pwd)\s*=\s*([^;\"'\\\s]+)"
        r"|[?&](?i:user|username)=[^&\s\"'\\]{1,100}&(?i:password|pwd)=([^&#;\s\"'\\]+)"
        r"|[?&](?i:password|pwd)=([^&#;\s\"'\\]+)&(?i:user|username)="),
        r"(?i:password|pwd)\s*=", value_group=True, generic=True),
)
