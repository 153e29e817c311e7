"""`qvl serve`: one resident engine behind an OpenAI-compatible API, and the client the command
line uses to answer through it (`--server URL`). See docs/serve.md.

Modules: `protocol` (request bodies -> `ChatRequest`, answers and errors in OpenAI's shapes),
`media` (a request's media staged and identified), `sessions` (the kept media prefixes), `worker`
(the engine's thread and queue), `app` (Starlette routes, uvicorn), `command` (`qvl serve`),
`client` (`--server`, standard library only). Only `app` and `command` need the `serve` extra.
"""
