"""The examples in the detectors' and the vocabulary's docstrings run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["agentwatch.detectors.detector", "agentwatch.detectors.traces", "agentwatch.detectors.fanout",
           "agentwatch.detectors.loop", "agentwatch.detectors.cost_spike", "agentwatch.detectors.cross_tenant",
           "agentwatch.detectors.credential_fanout", "agentwatch.detectors.novel_trace", "agentwatch.detectors.shape_model",
           "agentwatch.detectors.tailing", "agentwatch.schemas.vocabulary"]
STORE_MODULES = ["agentwatch.detectors.lease"]


@pytest.mark.parametrize("name", MODULES + STORE_MODULES)
def test_docstring_examples(name, client):
    # Examples of the modules that work on the store get `client`, a connection to a migrated one.
    extra = {"client": client} if name in STORE_MODULES else {}
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, extraglobs=extra)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no example"
