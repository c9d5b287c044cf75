"""`ModelConfig`: one description of a model, whoever uses it (an eval run's `[[models]]`, a distill teacher).

    kind = "api"      any litellm model string, at the provider or at an OpenAI-compatible `api_base`
    kind = "local"    a transformers causal LM in process: a hub id, a directory, or "smollm2" (offline)
    kind = "student"  a `dd-distill` run's students (`run_dir`), the pair or the CoT student

The key is never part of the config: `api_key_env` names the environment variable that holds it.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from dd_prompting.config import ConfigError
from dd_prompting.models.secrets import safe_url, url_secrets

__all__ = ["ModelConfig", "MODEL_KINDS", "ADAPTERS", "SERVING_FIELDS", "BATCH_FIELDS", "api_key_for", "secrets_for",
           "public_servers"]

MODEL_KINDS = ("api", "local", "student")
ADAPTERS = ("chat", "json", "plain")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./:+-]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# How a model is served, not what it answers: left out of a result's identity, a cache key and dd-distill's
# stage settings (a rerun with other values resumes), as `threads` is.
SERVING_FIELDS = ("device", "max_batch_size", "max_batch_tokens")
# Whether calls go through a provider's batch API: the same requests, the same replies, half the price, later.
BATCH_FIELDS = ("batch", "batch_poll_seconds")


@dataclass
class ModelConfig:
    """One model: what it is, where it is served, how it samples, what it costs, how hard to push it."""

    model: str | None = field(
        default=None,
        metadata={"help": "kind='api': a litellm model string ('openai/gpt-4o-mini', 'ollama_chat/llama3'); "
                          "kind='local': a transformers hub id or directory, or 'smollm2' for the bundled "
                          "SmolLM2-135M; kind='student': a label."})
    name: str | None = field(default=None, metadata={"help": "Short name used in reports; defaults to `model`."})
    kind: Literal["api", "local", "student"] = field(default="api", metadata={"help": f"One of {MODEL_KINDS}."})
    api_base: str | None = field(
        default=None, metadata={"help": "Base URL of an OpenAI-compatible server (vLLM, Ollama, a proxy)."})
    api_key_env: str | None = field(
        default=None,
        metadata={"help": "Name of the environment variable holding the API key (default: the provider's own, "
                          "e.g. OPENAI_API_KEY; with a custom api_base and no api_key_env, a placeholder key is "
                          "sent, never a provider's). Keys never reach files, logs, reports or cache keys."})
    engine: Literal["auto", "litellm"] = field(
        default="auto", metadata={"help": "dspy.LM engine: 'auto' (DSPy's own client where it can) or 'litellm'."})
    temperature: float | None = field(default=0.0, metadata={"help": "Sampling temperature (None: the model's own)."})
    max_tokens: int | None = field(default=1024, metadata={"help": "Cap on the tokens of each reply (kind='api')."})
    max_new_tokens: int = field(default=256, metadata={"help": "Cap on the tokens of each reply (kind='local')."})
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF file inside `model` (kind='local')."})
    adapter: Literal["chat", "json", "plain"] | None = field(
        default=None, metadata={"help": f"Prompt format, one of {ADAPTERS}; default chat for API models, plain "
                                        "text for local models."})
    threads: int | None = field(
        default=None, metadata={"help": "Cap on concurrent calls to this model (a local model decodes concurrent "
                                        "calls together, in batches)."})
    device: str | None = field(
        default=None, metadata={"help": "kind='local': where the model runs ('cpu', 'cuda', 'cuda:1'; default: a GPU "
                                        "if there is one)."})
    max_batch_size: int | None = field(
        default=None, metadata={"help": "kind='local': most calls decoded in one batch (default 16)."})
    max_batch_tokens: int | None = field(
        default=None, metadata={"help": "kind='local': most prompt + reply tokens in one batch, what bounds the "
                                        "key/value cache's memory (default 16384)."})
    retries: int | None = field(
        default=None, metadata={"help": "Retries of one failed call (rate limit, server error, time-out), with "
                                        "exponential back-off (default: the run's)."})
    retry_backoff: float | None = field(
        default=None, metadata={"help": "First back-off in seconds, doubled each retry (default: the run's)."})
    timeout: float | None = field(
        default=None, metadata={"help": "Seconds before one call times out (default: the run's)."})
    input_cost_per_million: float | None = field(
        default=None, metadata={"help": "Price in USD per million input tokens; overrides litellm's price map."})
    output_cost_per_million: float | None = field(
        default=None, metadata={"help": "Price in USD per million output tokens."})
    run_dir: str | None = field(default=None, metadata={"help": "A dd-distill run directory (kind='student')."})
    student: Literal["pair", "cot"] = field(
        default="pair", metadata={"help": "Which student of the run (kind='student'): 'pair' (decomposer + "
                                          "solver) or 'cot'."})
    servers: dict[str, Any] | None = field(
        default=None, metadata={"help": "Run the students on OpenAI-compatible servers (vLLM, SGLang; kind='student'): "
                                        "{decomposer = URL, solver = URL} or {cot = URL}; an entry may be "
                                        "{url = ..., model = ...}. Part of what identifies the results."})
    batch: bool = field(
        default=False, metadata={"help": "kind='api': send the calls the call cache cannot answer through the "
                                         "provider's batch API (half the price, answered within 24 hours), in "
                                         "rounds; needs a call cache. Not part of what identifies the results."})
    batch_poll_seconds: float | None = field(
        default=None, metadata={"help": "With batch: seconds between two looks at a pending batch (default 30)."})

    def __post_init__(self):
        self._check_model()

    # A subclass (a distill teacher) names itself differently in errors.
    @property
    def section(self) -> str:
        return f"models[{self.name}]"

    def _check_model(self) -> None:
        if not self.model:
            raise ConfigError(f"{self.section}: model is required (e.g. 'openai/gpt-4o-mini', 'smollm2')")
        if self.name is None:
            self.name = self.model
        section = self.section
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(f"{section}: name {self.name!r} must start with a letter or digit and use only "
                              "letters, digits and _ . / : + -")
        _choice(section, "kind", self.kind, MODEL_KINDS)
        _choice(section, "engine", self.engine, ("auto", "litellm"))
        _choice(section, "student", self.student, ("pair", "cot"))
        if self.adapter is not None:
            _choice(section, "adapter", self.adapter, ADAPTERS)
        if self.api_key_env is not None and not _ENV_NAME.match(self.api_key_env):
            raise ConfigError(f"{section}: api_key_env must be the NAME of an environment variable (e.g. "
                              "OPENAI_API_KEY), not the key itself")
        if self.kind == "student" and not self.run_dir:
            raise ConfigError(f"{section}: kind='student' needs run_dir, the dd-distill run directory")
        if self.servers is not None:
            roles = ["cot"] if self.student == "cot" else ["decomposer", "solver"]
            if self.kind != "student":
                raise ConfigError(f"{section}: servers are for kind='student' (a run's students on vLLM or SGLang); "
                                  "an API model's server is its api_base")
            if not isinstance(self.servers, dict) or sorted(self.servers) != sorted(roles):
                got = sorted(self.servers) if isinstance(self.servers, dict) else self.servers
                raise ConfigError(f"{section}: servers must name the {self.student!r} student's {' and '.join(roles)} "
                                  f"(a URL or {{url, model}} each), got {got!r}")
        for name, minimum in (("threads", 1), ("max_batch_size", 1), ("max_batch_tokens", 1), ("retries", 0), ("retry_backoff", 0), ("max_new_tokens", 1),
                              ("max_tokens", 1), ("temperature", 0), ("input_cost_per_million", 0),
                              ("output_cost_per_million", 0)):
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ConfigError(f"{section}: {name} must be at least {minimum}, got {value}")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError(f"{section}: timeout must be positive seconds, got {self.timeout}")
        if self.batch and self.kind != "api":
            raise ConfigError(f"{section}: batch = true is for API models (kind='api'), whose provider answers a batch "
                              f"API; a {self.kind} model is called directly")
        if self.batch_poll_seconds is not None and self.batch_poll_seconds <= 0:
            raise ConfigError(f"{section}: batch_poll_seconds must be positive seconds, got {self.batch_poll_seconds}")
        if (self.input_cost_per_million is None) != (self.output_cost_per_million is None):
            raise ConfigError(f"{section}: set both input_cost_per_million and output_cost_per_million, or neither")

    @property
    def serving(self) -> dict[str, Any]:
        """How a local model is served (device, batch bounds), as `local_lm` takes them: the ones that are set."""
        return {name: getattr(self, name) for name in SERVING_FIELDS if getattr(self, name) is not None}

    @property
    def default_adapter(self) -> str:
        return self.adapter or ("chat" if self.kind == "api" else "plain")

    def to_public_dict(self) -> dict[str, Any]:
        """The config as written to files and reports: `api_base` without credentials."""
        data = asdict(self)
        data["api_base"] = safe_url(self.api_base)
        if self.servers is None:
            del data["servers"]  # as before servers existed: a model's fingerprint and stage settings stay the same
        else:
            data["servers"] = public_servers(self.servers)
        for name in BATCH_FIELDS:
            if data[name] == ModelConfig.__dataclass_fields__[name].default:
                del data[name]  # as before batches existed: fingerprints and stage settings stay the same
        return data


def public_servers(servers: dict[str, Any]) -> dict[str, Any]:
    """Each student's server as written to files and keys: `{"url": ..., "model": ...}`, the URL without credentials."""
    entries = {}
    for role, entry in sorted(servers.items()):
        url, model = (entry, None) if isinstance(entry, str) else (entry.get("url"), entry.get("model"))
        entries[role] = {"url": safe_url(url), "model": model}
    return entries


def _choice(section: str, name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{section}: {name} must be one of {list(choices)}, got {value!r}")


def api_key_for(config: ModelConfig, *, required: bool = True) -> str | None:
    """The key in the variable `api_key_env` names (None when no variable is named)."""
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env)
    if not key and required:
        raise ConfigError(f"{config.section}: the environment variable {config.api_key_env} named by api_key_env "
                          "is not set; export the API key in it (keys are never read from config files)")
    return key or None


def secrets_for(config: ModelConfig) -> tuple[str, ...]:
    """What must never be written about this model: its key and the credentials inside its api_base."""
    key = api_key_for(config, required=False)
    return tuple(value for value in (key, *url_secrets(config.api_base)) if value)
