"""The GenAI client and framework instrumentations `init` turns on.

They are found the way `opentelemetry-instrument` finds them: through the
`opentelemetry_instrumentor` entry points of what is installed. Only the
instrumentations in CLIENTS are ours to enable (never HTTP, database or web
framework ones). Several projects instrument the same client; each client
gets exactly one, in CLIENTS' order of preference: the client library's own
tracing where it has it (recent `anthropic` releases), else OpenTelemetry's own
GenAI instrumentation (it writes the GenAI semantic conventions as released),
then OpenLLMetry's (GenAI names, messages as `gen_ai.*.messages`), then
OpenInference's; for Bedrock and LangChain another order records more (their
entries say why). Two on one client would record every call twice.

    init(instrument=True)                          every client installed (the default)
    init(instrument=False)                         none
    init(instrument=["openai", "anthropic"])       only these clients
    init(instrument={"openai": "openinference",    choose the project per client,
                     "langchain": False})          or switch one off

`AGENTWATCH_INSTRUMENT` says the same when `instrument` is not given:
`false`, `openai,anthropic` or `openai=openinference,langchain=off`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, NamedTuple

from .forwarding import forwarding, provider_for, retire
from .settings import logger, warn_once

GROUP = "opentelemetry_instrumentor"

NATIVE = "native"  # the client library traces itself (GenAI conventions); no instrumentation on top
OPENTELEMETRY = "opentelemetry"  # the OpenTelemetry project's own GenAI instrumentations
OPENLLMETRY = "openllmetry"
OPENINFERENCE = "openinference"
FAMILIES = (NATIVE, OPENTELEMETRY, OPENLLMETRY, OPENINFERENCE)


class Choice(NamedTuple):
    family: str
    distribution: str  # the distribution whose entry point instruments the client (or the client, if native)


# client -> its instrumentations, preferred first. A distribution name is stable where an
# entry point name is not (OpenInference and OpenLLMetry both register theirs as "openai").
CLIENTS: dict[str, tuple[Choice, ...]] = {
    "openai": (
        Choice(OPENTELEMETRY, "opentelemetry-instrumentation-openai-v2"),
        Choice(OPENLLMETRY, "opentelemetry-instrumentation-openai"),
        Choice(OPENINFERENCE, "openinference-instrumentation-openai"),
    ),
    "anthropic": (
        # Recent `anthropic` releases trace every call themselves (anthropic/_tracing.py), on the
        # global tracer provider; an instrumentation on top would give each call a second span.
        Choice(NATIVE, "anthropic"),
        Choice(OPENLLMETRY, "opentelemetry-instrumentation-anthropic"),
        Choice(OPENINFERENCE, "openinference-instrumentation-anthropic"),
    ),
    "google-genai": (
        Choice(OPENTELEMETRY, "opentelemetry-instrumentation-google-genai"),
        Choice(OPENINFERENCE, "openinference-instrumentation-google-genai"),
    ),
    "bedrock": (
        # OpenLLMetry's first: it puts the messages on the span and instruments Bedrock alone;
        # botocore's (0.66) logs the messages apart, and traces every AWS call the agent makes.
        Choice(OPENLLMETRY, "opentelemetry-instrumentation-bedrock"),
        Choice(OPENTELEMETRY, "opentelemetry-instrumentation-botocore"),
        Choice(OPENINFERENCE, "openinference-instrumentation-bedrock"),
    ),
    "vertexai": (
        Choice(OPENLLMETRY, "opentelemetry-instrumentation-vertexai"),
        Choice(OPENINFERENCE, "openinference-instrumentation-vertexai"),
    ),
    "langchain": (  # LangChain and LangGraph
        # OpenInference's first: it needs only langchain-core (OpenLLMetry's 0.62 asks for the
        # `langchain` distribution), reports every kind of token and a tool's arguments as they are.
        Choice(OPENINFERENCE, "openinference-instrumentation-langchain"),
        Choice(OPENLLMETRY, "opentelemetry-instrumentation-langchain"),
    ),
    "llama-index": (
        Choice(OPENLLMETRY, "opentelemetry-instrumentation-llamaindex"),
        Choice(OPENINFERENCE, "openinference-instrumentation-llama-index"),
    ),
    "crewai": (
        Choice(OPENLLMETRY, "opentelemetry-instrumentation-crewai"),
        Choice(OPENINFERENCE, "openinference-instrumentation-crewai"),
    ),
    "openai-agents": (
        Choice(OPENLLMETRY, "opentelemetry-instrumentation-openai-agents"),
        Choice(OPENINFERENCE, "openinference-instrumentation-openai-agents"),
    ),
}

# Agent frameworks: their model spans wrap the call a client's instrumentation records again.
FRAMEWORKS = frozenset({"langchain", "llama-index", "crewai", "openai-agents"})

_OFF = ("0", "false", "no", "off", "none", "")

# What agentwatch instrumented, once per process: client -> (choice, instrumentor). A later
# `init` redirects their spans to its provider (forwarding.py) rather than re-applying them.
_ours: dict[str, tuple[Choice, Any]] = {}
# Those a later `init` switched off: silenced, not removed (some removals leave wrappers or
# trace processors behind, that a second `instrument` would double); switched back on as they are.
_idle: dict[str, tuple[Choice, Any]] = {}  # distribution -> (choice, instrumentor)
_switched_off: set[str] = set()  # client libraries' own tracing, switched off by us


def wanted(instrument: Any) -> dict[str, str | None]:
    """client -> the family asked for (None: the preferred one installed), from `instrument=`."""
    if instrument is None:
        instrument = _from_env(os.environ.get("AGENTWATCH_INSTRUMENT"))
    if instrument is True:
        return dict.fromkeys(CLIENTS)
    if not instrument:
        return {}
    if isinstance(instrument, str):
        instrument = [instrument]
    if isinstance(instrument, Mapping):
        choice = dict.fromkeys(CLIENTS)
        for client, family in instrument.items():
            _check_client(client)
            if family is False or family is None:
                choice.pop(client, None)
            elif family is True:
                choice[client] = None
            elif family in FAMILIES:
                choice[client] = family
            else:
                raise ValueError(f"instrument[{client!r}] must be one of {FAMILIES}, True or False, not {family!r}")
        return choice
    if isinstance(instrument, Iterable):
        clients = list(instrument)
        for client in clients:
            _check_client(client)
        return dict.fromkeys(clients)
    raise TypeError(f"instrument must be a bool, a list of clients or a dict, not {type(instrument).__name__}")


def _check_client(client: str) -> None:
    if client not in CLIENTS:
        raise ValueError(f"unknown client {client!r}; known: {', '.join(CLIENTS)}")


def _from_env(value: str | None) -> Any:
    if value is None:
        return True
    value = value.strip()
    if value.lower() in _OFF:
        return False
    if value.lower() in ("1", "true", "yes", "on", "all"):
        return True
    if "=" not in value:
        return [part.strip() for part in value.split(",") if part.strip()]
    choice: dict[str, Any] = {}
    for part in value.split(","):
        client, _, family = part.partition("=")
        family = family.strip().lower()
        choice[client.strip()] = False if family in _OFF else (True if family in ("on", "true") else family)
    return choice


def _installed() -> dict[str, list[EntryPoint]]:
    """distribution name -> its instrumentor entry points, for the distributions in CLIENTS (one
    distribution may have several: botocore's instruments botocore and aiobotocore)."""
    known = {choice.distribution for choices in CLIENTS.values() for choice in choices}
    found: dict[str, list[EntryPoint]] = {}
    for entry_point in entry_points(group=GROUP):
        dist = getattr(entry_point, "dist", None)
        name = _normal(dist.metadata["Name"]) if dist is not None else ""
        if name in known and entry_point not in found.get(name, ()):
            found.setdefault(name, []).append(entry_point)
    return found


def _normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _traces_itself(distribution: str) -> bool:
    """Whether the installed client library has its own OpenTelemetry tracing (read from its files)."""
    try:
        from importlib.metadata import distribution as find

        return find(distribution).locate_file(f"{distribution}/_tracing.py").exists()  # type: ignore[union-attr]
    except Exception:
        return False


def _already_instrumented(entry_point: EntryPoint) -> bool:
    """Instrumented by someone else (the app itself, opentelemetry-instrument)? Only a loaded
    module can have been, so nothing is imported to find out."""
    module = sys.modules.get(entry_point.module)
    if module is None:
        return False
    cls = getattr(module, entry_point.attr, None)
    instance = getattr(cls, "_instance", None)
    return bool(getattr(instance, "is_instrumented_by_opentelemetry", False))


def match_content_capture(capture: bool) -> None:
    """Set each project's own content switch to agentwatch's: whole messages, or none."""
    env = os.environ
    mode = env.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").strip().upper()
    if capture:
        if mode not in ("SPAN_ONLY", "SPAN_AND_EVENT"):
            env["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "SPAN_ONLY"
        # The official instrumentations put messages on the span (gen_ai.input.messages, ...)
        # only under the latest GenAI conventions; older ones log them as events instead.
        opt_in = [part.strip() for part in env.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",") if part.strip()]
        if "gen_ai_latest_experimental" not in opt_in:
            env["OTEL_SEMCONV_STABILITY_OPT_IN"] = ",".join([*opt_in, "gen_ai_latest_experimental"])
        # OpenInference cuts base64 images at 32,000 characters by default; content is kept whole.
        env.setdefault("OPENINFERENCE_BASE64_IMAGE_MAX_LENGTH", str(2**31 - 1))
        # The anthropic SDK's own tracing keeps content within 750,000 bytes unless told otherwise.
        env.setdefault("ANTHROPIC_OPEN_TELEMETRY_TRACES_MAX_CONTENT_BYTES", str(2**31 - 1))
    else:
        env["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "NO_CONTENT"
    env["ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE"] = "content" if capture else "metadata_only"
    env["TRACELOOP_TRACE_CONTENT"] = "true" if capture else "false"
    env["OPENINFERENCE_HIDE_INPUTS"] = "false" if capture else "true"
    env["OPENINFERENCE_HIDE_OUTPUTS"] = "false" if capture else "true"


def instrument(choice: dict[str, str | None], tracer_provider: Any) -> dict[str, str]:
    """Instrument each client in `choice` with one installed instrumentation; client -> distribution.

    Spans go to `tracer_provider` (through `forwarding`, so that a later init only redirects them);
    metrics to the global meter provider, which the first init that exports sets.
    """
    forwarding.target = tracer_provider
    for client in list(_ours):  # no longer wanted, or another project asked for
        if client not in choice or choice[client] not in (None, _ours[client][0].family):
            candidate, instrumentor = _ours.pop(client)
            provider_for(candidate.distribution, client in FRAMEWORKS).silenced = True
            _idle[candidate.distribution] = (candidate, instrumentor)
    if not choice:
        return {}
    try:
        from opentelemetry.instrumentation.dependencies import get_dist_dependency_conflicts
    except ImportError:  # no instrumentation installed at all: they all depend on this
        return {}
    installed = _installed()
    done: dict[str, str] = {}
    for client, family in choice.items():
        if client in _ours:
            done[client] = _ours[client][0].distribution
            continue
        native = next((c for c in CLIENTS[client] if c.family == NATIVE), None)
        if native is not None and _traces_itself(native.distribution):
            switch = f"{native.distribution.upper()}_OPEN_TELEMETRY"
            if family in (None, NATIVE):
                if switch in _switched_off:  # an earlier init chose another one
                    _switched_off.discard(switch)
                    os.environ.pop(switch, None)
                done[client] = native.distribution
                continue
            # Another one was asked for: the library's own spans would double it.
            os.environ[switch] = "false"
            _switched_off.add(switch)
        present = [c for c in CLIENTS[client] if c.distribution in installed]
        if any(_already_instrumented(ep) for c in present if c.distribution not in _idle
               for ep in installed[c.distribution]):
            continue  # the app instrumented this client itself: a second one would record every call twice
        candidates = [c for c in present if family in (None, c.family)]
        for candidate in candidates:
            provider = provider_for(candidate.distribution, client in FRAMEWORKS)
            instrumentor = None
            if candidate.distribution in _idle:  # ours, switched off by an earlier init: back on
                instrumentor = _idle.pop(candidate.distribution)[1]
            else:
                for entry_point in installed[candidate.distribution]:
                    instrumentor = _enable(entry_point, provider, get_dist_dependency_conflicts)
                    if instrumentor is not None:
                        break
            if instrumentor is None:
                provider.silenced = True
                continue
            _ours[client] = (candidate, instrumentor)
            done[client] = candidate.distribution
            logger.debug("agentwatch instrumented %s with %s", client, candidate.distribution)
            break
        else:
            if family is not None and not candidates:
                logger.warning("agentwatch: no %s instrumentation of %s is installed", family, client)
    return done


def _enable(entry_point: EntryPoint, provider: Any, conflicts: Any) -> Any:
    """The entry point's instrumentor, instrumenting; None where the library it covers is missing,
    or at a version it does not cover, or it failed."""
    try:
        if conflicts(entry_point.dist):
            return None
        instrumentor = entry_point.load()()
        from opentelemetry.instrumentation.dependencies import get_dependency_conflicts

        if get_dependency_conflicts(instrumentor.instrumentation_dependencies()):
            return None
        instrumentor.instrument(tracer_provider=provider)
    except Exception:
        warn_once("instrument:" + entry_point.value, "agentwatch could not enable %s", entry_point.value)
        return None
    return instrumentor if getattr(instrumentor, "is_instrumented_by_opentelemetry", True) else None


def detach() -> None:
    """The last init shut down: the instrumentations stay in place and record nothing."""
    forwarding.target = None


def _remove(choice: Choice, instrumentor: Any) -> None:
    retire(choice.distribution)  # whatever its removal leaves in place records nothing
    try:
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()
    except Exception:
        warn_once("uninstrument:" + choice.distribution, "agentwatch could not disable %s", choice.distribution)


def uninstrument() -> None:
    """Remove every instrumentation agentwatch applied (for code that instruments clients itself)."""
    for client in list(_ours):
        _remove(*_ours.pop(client))
    for distribution in list(_idle):
        _remove(*_idle.pop(distribution))
