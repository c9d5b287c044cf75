"""The serve stage: trained students answering through servers (vLLM, SGLang, any OpenAI-compatible
`/v1/completions`) with the prompts, token for token, that they decode with in this process (`students/`)."""
