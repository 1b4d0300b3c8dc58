"""The examples in the detectors' and the vocabulary's docstrings run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["agentwatch.detectors.detector", "agentwatch.detectors.traces", "agentwatch.detectors.fanout",
           "agentwatch.detectors.loop", "agentwatch.detectors.cost_spike", "agentwatch.detectors.cross_tenant",
           "agentwatch.detectors.credential_fanout", "agentwatch.detectors.novel_trace", "agentwatch.detectors.shape_model",
           "agentwatch.detectors.tailing", "agentwatch.schemas.vocabulary"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0, f"{name} has no example"
