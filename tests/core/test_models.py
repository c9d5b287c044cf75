"""The model layer: which key reaches which server, what the call cache keys on and stores, redaction."""

import os

import diskcache
import dspy
import pytest

from dd_prompting.config import ConfigError
from dd_prompting.models import CallCache, ModelConfig, build_lm, call_key, identity_for, redact, safe_url
from dd_prompting.testing import OpenAICompatibleServer

PROVIDER_KEY = "sk-provider-key-never-leaves-0123456789"
REPLY = "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"


def _ask(lm):
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter()):  # REPLY is in ChatAdapter's format
        return dspy.Predict("question -> answer")(question="What is 6 * 7?").answer


@pytest.mark.parametrize("engine", ["auto", "litellm"])
def test_a_provider_key_in_the_environment_never_reaches_a_custom_api_base(monkeypatch, engine):
    monkeypatch.setenv("OPENAI_API_KEY", PROVIDER_KEY)
    with OpenAICompatibleServer(lambda request: REPLY) as server:
        lm = build_lm(ModelConfig(model="openai/served", api_base=server.base_url, engine=engine), cache=None)
        assert _ask(lm) == "42"
        assert server.authorizations and all(PROVIDER_KEY not in (auth or "") for auth in server.authorizations)
        assert server.authorizations[0] == "Bearer EMPTY"


def test_api_key_env_names_the_variable_the_key_is_read_from(monkeypatch):
    monkeypatch.setenv("MY_SERVER_KEY", "server-key-123456")
    monkeypatch.setenv("OPENAI_API_KEY", PROVIDER_KEY)
    with OpenAICompatibleServer(lambda request: REPLY) as server:
        lm = build_lm(ModelConfig(model="openai/served", api_base=server.base_url, api_key_env="MY_SERVER_KEY"),
                      cache=None)
        _ask(lm)
    assert server.authorizations == ["Bearer server-key-123456"]
    monkeypatch.delenv("MY_SERVER_KEY")
    with pytest.raises(ConfigError, match="MY_SERVER_KEY"):
        build_lm(ModelConfig(model="openai/served", api_key_env="MY_SERVER_KEY"), cache=None)


def test_two_endpoints_of_one_model_string_are_cached_apart(tmp_path):
    cache = CallCache(tmp_path / "cache")
    with OpenAICompatibleServer(lambda r: REPLY) as first, OpenAICompatibleServer(lambda r: REPLY) as second:
        for server in (first, second, first):
            _ask(build_lm(ModelConfig(model="openai/same", name=f"m{server.base_url[-5:]}",
                                      api_base=server.base_url), cache=cache))
    assert (first.call_count, second.call_count) == (1, 1)  # the third call came from the cache


def test_cache_keys_hold_the_endpoint_but_never_a_key_or_url_credentials():
    base = dict(model="openai/m", messages=[{"role": "user", "content": "hi"}], prompt=None)
    plain = call_key(**base, settings={"api_base": "http://host/v1"})
    assert plain != call_key(**base, settings={"api_base": "http://other/v1"})
    assert plain == call_key(**base, settings={"api_base": "http://user:pw@host/v1", "api_key": "sk-abc"})
    assert call_key(**base, settings={"rollout_id": 1}) != call_key(**base, settings={"rollout_id": 2})
    one = identity_for(ModelConfig(model="openai/m", api_base="http://a/v1"))
    two = identity_for(ModelConfig(model="openai/m", api_base="http://b/v1"))
    assert one.key(messages=base["messages"]) != two.key(messages=base["messages"])


def test_the_cache_stores_json_and_never_unpickles_a_planted_value(tmp_path, caplog):
    directory = tmp_path / "shared-cache"
    marker = tmp_path / "pwned"

    class Planted:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    cache = CallCache(directory)
    cache.put("good", {"outputs": ["x"]})
    cache.close()
    planted = diskcache.Cache(str(directory))  # another program writing into a shared directory, with pickle
    planted.set("evil", Planted())
    planted.close()
    cache = CallCache(directory)
    assert cache.get("evil") is None and not marker.exists()
    assert "never unpickled" in caplog.text
    assert cache.get("good") == {"outputs": ["x"]}
    cache.close()
    # What our cache wrote is plain JSON text in SQLite, loadable without pickle.
    raw = diskcache.Cache(str(directory))
    rows = raw._sql("SELECT mode, value FROM Cache WHERE key = ?", ("good",)).fetchall()
    raw.close()
    assert rows == [(diskcache.core.MODE_RAW, '{"outputs": ["x"]}')]


def test_url_credentials_and_keys_are_redacted():
    assert safe_url("http://user:pw@host:8000/v1") == "http://host:8000/v1"
    text = redact("failed at http://bob:hunter22@proxy/v1 with sk-abcdefghijklmnop", ["hunter22"])
    assert "hunter22" not in text and "bob" not in text and "sk-abcdefghijklmnop" not in text
    config = ModelConfig(model="openai/m", api_base="http://bob:hunter22@proxy/v1")
    assert "hunter22" not in str(config.to_public_dict())


def test_a_cache_dir_that_is_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "cache"
    path.write_text("not a directory")
    with pytest.raises(NotADirectoryError, match="cache_dir .* is a file"):
        CallCache(path)
