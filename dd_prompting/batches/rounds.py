"""A job whose model calls go through a batch API, in rounds over the call cache.

A round runs the job's pass (every unfinished problem's program) with the calls answered from the cache; a call
the cache cannot answer is collected (`Round`), not sent, and its problem writes nothing. The round's calls go
out as one batch per file, each line's custom_id its call-cache key; when the batch ends, every answered line is
stored in the cache under that key and the next pass runs. A pass that collects nothing has finished every
problem. Joint decomposition takes about two rounds; iterative one more than its longest chain.

Nothing is sent twice: the round's intent and each batch id are in the run's `BatchManifest` before anything
waits, and a restarted job re-attaches to its pending batches (or finds them by the round's token) before its
first pass.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dd_prompting.batches.capture import BodyCapture
from dd_prompting.batches.manifest import BatchManifest
from dd_prompting.batches.openai_batches import BatchStatus, OpenAIBatches
from dd_prompting.batches.providers import api_name, batch_api_for, key_variable
from dd_prompting.batches.round import Round
from dd_prompting.models.config import ModelConfig
from dd_prompting.models.secrets import safe_url

__all__ = ["BatchRounds", "RoundsSummary", "DEFAULT_POLL_SECONDS"]

logger = logging.getLogger(__name__)

DEFAULT_POLL_SECONDS = 30.0
MAX_POLL_BACKOFF = 300.0


@dataclass
class RoundsSummary:
    """What a batched job did: passes run, batches and lines sent, lines answered and sent again, what the
    batches billed, and why it stopped early (a budget), if it did."""

    passes: int = 0
    batches: list[str] = field(default_factory=list)
    lines_sent: int = 0
    answered: int = 0
    resent: int = 0
    given_up: int = 0
    billed: float = 0.0
    waited_s: float = 0.0
    stopped: str | None = None


class BatchRounds:
    """Runs a job in batch rounds for one model.

    Args:
        engine: The model's `CachingEngine` (with its call cache); its misses are collected while a pass runs.
        config: The model (`batch = true`): where its batch API is and its poll interval. A line that fails or
            expires goes again in the next round, as often as the engine retries a synchronous call.
        manifest: The run directory's `BatchManifest`.
        before_submit: Called with a round's lines before they are submitted; a returned text stops the job
            there (a budget), unsent.
        on_billed: Called with what each ended batch billed.
        api: The batch API (default: the one `config` calls, `batch_api_for`).
        progress: Show a progress line while waiting.
        cancel_hint: The command that cancels the run's pending batches, said when a wait is interrupted.
    """

    def __init__(self, engine: Any, config: ModelConfig, manifest: BatchManifest, *,
                 before_submit: Callable[[list[dict[str, Any]]], str | None] | None = None,
                 on_billed: Callable[[float], None] | None = None, api: OpenAIBatches | None = None,
                 progress: bool = True, cancel_hint: str | None = None):
        if engine.cache is None:
            raise ValueError(f"{config.section}: batch rounds need the call cache")
        self.engine = engine
        self.config = config
        self.manifest = manifest
        self.before_submit = before_submit
        self.on_billed = on_billed
        self.api = api if api is not None else batch_api_for(config)
        self.poll_seconds = config.batch_poll_seconds or DEFAULT_POLL_SECONDS
        self.retries = engine.retries  # the model's own, else the run's: as a synchronous call is retried
        self.progress = progress
        self.cancel_hint = cancel_hint or f"`dd-evals cancel-batches {manifest.path.parent}`"
        self.summary = RoundsSummary()
        self._attempts: Counter[str] = Counter()
        self._given_up: dict[str, str] = {}

    # ------------------------------------------------------------------------------------------------ the loop
    def run(self, one_pass: Callable[[], None]) -> RoundsSummary:
        """Run `one_pass` until it collects no call (every problem finished) or a budget stops it."""
        self._reattach()
        # As many captures at once as the job runs problems at once (a run's threads, 8 by default).
        with BodyCapture(self.config, parallel=self.config.threads or 8) as capture:
            while True:
                batch_round = Round(capture, given_up=self._given_up)
                self.engine.round = batch_round
                try:
                    one_pass()
                finally:
                    self.engine.round = None
                self.summary.passes += 1
                if not batch_round.calls:
                    return self.summary
                lines = self._lines(batch_round)
                if self.before_submit is not None and (reason := self.before_submit(lines)):
                    self.summary.stopped = reason
                    return self.summary
                self._wait(self._submit(lines))

    def _lines(self, batch_round: Round) -> list[dict[str, Any]]:
        endpoint = _route_path(self.api.endpoint)
        lines = []
        for key, call in batch_round.calls.items():
            if _route_path(call.path) != endpoint:
                raise ValueError(f"{self.config.section}: its route posts to {call.path}, and its batch API takes "
                                 f"{self.api.endpoint} requests; try the other engine ('auto' or 'litellm')")
            lines.append(self.api.line(key, call.body))
        return lines

    # ------------------------------------------------------------------------------------------------ submitting
    def _submit(self, lines: list[dict[str, Any]]) -> list[str]:
        keys = [line["custom_id"] for line in lines]
        url = safe_url(self.api.base_url)
        token = self.manifest.intend(model=self.config.name, url=url, keys=keys)
        ids: list[str] = []

        def created(batch_id: str, batch_keys: list[str]) -> None:
            self.manifest.add(batch_id, model=self.config.name, url=url, keys=batch_keys, round_token=token,
                              key_env=key_variable(self.config), api=api_name(self.config))
            ids.append(batch_id)

        self.api.submit(lines, metadata={"dd_prompting_run": self.manifest.run_id(), "dd_prompting_round": token,
                                         "model": self.config.name}, on_created=created)
        self.manifest.drop_intent(token)
        self.summary.batches += ids
        self.summary.lines_sent += len(lines)
        logger.info("%s: round %d: %d calls sent as %s to %s", self.config.name, self.summary.passes, len(lines),
                    ", ".join(ids), url)
        return ids

    def _reattach(self) -> None:
        """Wait for the batches an earlier, killed run left pending (and find those it had no time to write down)."""
        for token, intent in self.manifest.intents(self.config.name).items():
            found = self.api.find({"dd_prompting_round": token})
            known = self.manifest.batches
            for batch_id in found:
                if batch_id not in known:
                    self.manifest.add(batch_id, model=self.config.name, url=intent["url"], keys=intent["keys"],
                                      round_token=token, key_env=key_variable(self.config),
                                      api=api_name(self.config))
            logger.warning("%s: a round was being submitted when the last run stopped: %s", self.config.name,
                           f"re-attached to {', '.join(found)}" if found else
                           "the provider has no batch of it; its calls go in the next round")
            self.manifest.drop_intent(token)
        pending = list(self.manifest.pending(self.config.name))
        if pending:
            logger.info("%s: re-attaching to %d pending batch(es) of an earlier run: %s", self.config.name,
                        len(pending), ", ".join(pending))
            self._wait(pending)

    # ------------------------------------------------------------------------------------------------ waiting
    def _wait(self, ids: list[str]) -> None:
        from tqdm.auto import tqdm

        entries = self.manifest.batches
        started = time.monotonic()
        pending = {batch_id: BatchStatus(id=batch_id, status="submitted", total=entries[batch_id]["requests"])
                   for batch_id in ids}
        bar = tqdm(total=sum(status.total for status in pending.values()), desc=f"batches {self.config.name}",
                   unit="call", disable=not self.progress, dynamic_ncols=True)
        backoff = 0.0
        try:
            while pending:
                for batch_id in list(pending):
                    try:
                        status = self.api.status(batch_id)
                    except Exception as err:  # noqa: BLE001 - checked below: only a dropped network waits
                        backoff = self._backoff(err, backoff)
                        break
                    backoff = 0.0
                    pending[batch_id] = status
                    if status.done:
                        self._ingest(status, entries[batch_id]["keys"])
                        del pending[batch_id]
                bar.n = sum(entries[i]["requests"] for i in ids if i not in pending) + sum(
                    status.completed + status.failed for status in pending.values())
                bar.set_postfix_str(_describe(pending.values(), time.monotonic() - started), refresh=False)
                bar.refresh()
                if pending:
                    time.sleep(backoff or self.poll_seconds)
        except KeyboardInterrupt:
            logger.warning("Interrupted while waiting: %s still run(s) at %s and %s recorded in %s. Run the same "
                           "command again to re-attach (nothing is sent twice), or cancel with %s.",
                           ", ".join(pending), safe_url(self.api.base_url), "is" if len(pending) == 1 else "are",
                           self.manifest.path, self.cancel_hint)
            raise
        finally:
            bar.close()
            self.summary.waited_s += time.monotonic() - started

    def _backoff(self, err: Exception, backoff: float) -> float:
        if not self.api.transient(err):
            raise err
        backoff = min(max(backoff * 2, self.poll_seconds), MAX_POLL_BACKOFF)
        logger.warning("%s: could not reach %s (%s); trying again in %.0f s", self.config.name,
                       safe_url(self.api.base_url), type(err).__name__, backoff)
        return backoff

    # ------------------------------------------------------------------------------------------------ reading
    def _ingest(self, status: BatchStatus, keys: list[str]) -> None:
        """Store every answered line in the call cache; count the others, which go again in the next round."""
        results = self.api.results(status) if status.output_file_id or status.error_file_id else None
        answered, failed = (results.answered, dict(results.failed)) if results else ({}, {})
        billed = 0.0
        stored = 0
        for key, body in answered.items():
            try:
                cost = self.engine.store_batch_reply(key, self.api.response(body), batch_id=status.id)
            except Exception as err:  # noqa: BLE001 - a malformed reply is a failed line, as synchronously
                failed[key] = f"malformed reply: {type(err).__name__}: {err}"[:500]
                continue
            stored += 1
            billed += cost or 0.0
        why = "; ".join(status.errors) or status.status
        for key in keys:
            if key in answered and key not in failed:
                continue
            self._attempts[key] += 1
            if self._attempts[key] > self.retries:
                self._given_up[key] = (f"its batch line went {self._attempts[key]} times without an answer; last: "
                                       f"{failed.get(key) or why}")
        unanswered = len(keys) - stored
        given_up = sum(key in self._given_up for key in keys)
        self.summary.answered += stored
        self.summary.resent += unanswered - given_up
        self.summary.given_up += given_up
        self.summary.billed += billed
        self.manifest.finish(status.id, status.status, answered=stored, unanswered=unanswered)
        if self.on_billed is not None:
            self.on_billed(billed)
        if unanswered:
            logger.warning("%s: batch %s ended %s with %d of %d lines unanswered (%s): %d go again in the next "
                           "round, %d failed too often", self.config.name, status.id, status.status, unanswered,
                           len(keys), why if not failed else next(iter(failed.values())), unanswered - given_up,
                           given_up)


def _route_path(path: str) -> str:
    """A route's path without its version prefixes: "/v1/v1/messages" (litellm on a base URL ending in /v1),
    "/messages" and "/v1/messages" are one endpoint."""
    while path.startswith("/v1/"):
        path = path[3:]
    return path


def _describe(statuses, age: float) -> str:
    """Each pending batch: id, status, lines done and failed of its requests; and how long the wait has been."""
    shown = [f"{s.id} {s.status} {s.completed}/{s.total} done {s.failed} failed" for s in statuses]
    return "; ".join([*shown, f"waiting {age / 60:.0f} min"] if shown else ["all ended"])
