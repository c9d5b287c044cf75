"""Shared test set-up: nothing reaches the network, nothing lands in the user's home cache."""

import atexit
import logging
import os
import shutil
import tempfile

# Before dspy or litellm are imported: litellm would fetch its price map, dspy would cache in $HOME.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
if "DSPY_CACHEDIR" not in os.environ:
    os.environ["DSPY_CACHEDIR"] = tempfile.mkdtemp(prefix="dd-prompting-dspy-cache-")
    atexit.register(shutil.rmtree, os.environ["DSPY_CACHEDIR"], ignore_errors=True)
if "DD_PROMPTING_CACHE_DIR" not in os.environ:  # dequantised GGUF copies (about 0.5 GB for SmolLM2)
    os.environ["DD_PROMPTING_CACHE_DIR"] = tempfile.mkdtemp(prefix="dd-prompting-cache-")
    atexit.register(shutil.rmtree, os.environ["DD_PROMPTING_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import dspy  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def clear_dspy_settings(request):
    """Each test starts with no LM configured and ChatAdapter, the format DummyLM and the scripted replies are
    written in, named here rather than taken from DSPy's default (XMLAdapter from DSPy 3.5 on). A test of
    what happens with no adapter configured (a local model picking PlainTextAdapter) is marked `no_adapter`."""
    adapter = None if request.node.get_closest_marker("no_adapter") else dspy.ChatAdapter()
    with dspy.context(lm=None, adapter=adapter, trace=[]):
        yield


@pytest.fixture(autouse=True)
def restore_logger_levels():
    """The commands set logger levels (`dd-evals` quiets dd_prompting to WARNING, `dd-distill --quiet` the root):
    each test starts with the levels the one before it found, so `caplog` sees what it asks for in any order."""
    loggers = [logging.getLogger(), *(logger for logger in logging.root.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    levels = {logger: logger.level for logger in loggers}
    yield
    for logger, level in levels.items():
        logger.setLevel(level)
    for logger in list(logging.root.manager.loggerDict.values()):  # made during the test (`dd_prompting` itself,
        if isinstance(logger, logging.Logger) and logger not in levels:  # when only its children existed before)
            logger.setLevel(logging.NOTSET)
