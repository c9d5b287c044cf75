"""`TransformersProvider` lives in the core package (`dd_prompting.finetune_provider`), so that building a
local LM imports nothing from `distill`; this module keeps the import path the README has always shown."""

from dd_prompting.finetune_provider import LocalTrainingJob, TransformersProvider, chat_rows

__all__ = ["TransformersProvider", "LocalTrainingJob", "chat_rows"]
