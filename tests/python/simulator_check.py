"""Drives the simulated provider with the official OpenAI and Anthropic SDKs.

Usage: simulator_check.py BASE_URL
Prints one JSON object with what each SDK call returned; the Rust test asserts on it.
"""

import json
import sys

import anthropic
import openai

base = sys.argv[1]
result = {}

client = openai.OpenAI(base_url=f"{base}/v1", api_key="sk-test", max_retries=0)
chat = client.chat.completions.create(
    model="gpt-4o", messages=[{"role": "user", "content": "Name a prime number."}]
)
result["chat"] = {
    "content": chat.choices[0].message.content,
    "prompt_tokens": chat.usage.prompt_tokens,
    "completion_tokens": chat.usage.completion_tokens,
}

text, usage = "", None
stream = client.chat.completions.create(
    model="gpt-4o",
    messages=[{"role": "user", "content": "Stream please."}],
    stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
    if chunk.usage is not None:
        usage = chunk.usage.completion_tokens
result["chat_stream"] = {"content": text, "completion_tokens": usage}

embedding = client.embeddings.create(model="text-embedding-3-small", input=["one", "two"])
result["embeddings"] = {"count": len(embedding.data), "dimensions": len(embedding.data[0].embedding)}
result["models"] = sorted(model.id for model in client.models.list())

claude = anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0)
message = claude.messages.create(
    model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "Hello, Claude."}]
)
result["messages"] = {
    "content": message.content[0].text,
    "input_tokens": message.usage.input_tokens,
    "output_tokens": message.usage.output_tokens,
}
with claude.messages.stream(
    model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "Stream, Claude."}]
) as claude_stream:
    streamed = "".join(claude_stream.text_stream)
    final = claude_stream.get_final_message()
result["messages_stream"] = {"content": streamed, "output_tokens": final.usage.output_tokens}

print(json.dumps(result))
