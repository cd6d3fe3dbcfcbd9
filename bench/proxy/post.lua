-- wrk script: POST a chat completion; STREAM=1 in the environment asks for SSE.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
local stream = os.getenv("STREAM") == "1" and "true" or "false"
wrk.body = '{"model":"gpt-4o","stream":' .. stream .. ',"messages":[{"role":"user","content":"Say hello."}]}'
