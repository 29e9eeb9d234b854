-- wrk request for scripts/bench-gateway: the same chat completion, streamed.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer tg-bench"
wrk.body = '{"model":"gpt-4o-mini-stream","stream":true,"max_tokens":64,"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"Say hello to the benchmark."}]}'
