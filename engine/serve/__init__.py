"""`aha serve`: Aha's model library as a local OpenAI-compatible server that keeps the thinking apart.

protocol — the request checked into a ChatRequest; completion, chunk, usage and error shapes (pure)
host — the served models, the one loaded (swapped on request) and the first-come first-served turn queue
decode — one request's decoding on a worker thread (ChatModel.stream, --save into a conversation, stop strings)
app — the Starlette app: /v1/models, /v1/chat/completions, the Bearer key, disconnect → cancel, the request log
server — the job: bind rules (loopback, or a key), uvicorn on our socket, the ready and request events
"""
