"""Drives the Tollgate gateway with the official OpenAI and Anthropic SDKs.

Usage: gateway_check.py GATEWAY_URL VIRTUAL_KEY
Prints one JSON object with what each SDK call returned or raised; the Rust test asserts
on it and on the events the gateway recorded. Retries are off so every call is one request.
"""

import json
import sys

import anthropic
import openai

base, key = sys.argv[1], sys.argv[2]
result = {}

oa = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
an = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)


def raised(name, call):
    """Runs `call`, which must raise; records the exception's class and status."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the class is what is being checked
        result[name] = {
            "raised": type(error).__name__,
            "status": getattr(error, "status_code", None),
            "message": str(error)[:300],
        }
    else:
        result[name] = {"raised": None}


chat = oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Name a prime number."}])
result["chat"] = {
    "content": chat.choices[0].message.content,
    "model": chat.model,
    "prompt_tokens": chat.usage.prompt_tokens,
    "completion_tokens": chat.usage.completion_tokens,
}

text, usage_chunks = "", 0
for chunk in oa.chat.completions.create(
    model="gpt-4o", messages=[{"role": "user", "content": "Stream please."}], stream=True
):
    if chunk.usage is not None:
        usage_chunks += 1
    for choice in chunk.choices:
        text += choice.delta.content or ""
result["chat_stream"] = {"content": text, "usage_chunks": usage_chunks}

text, usage = "", None
for chunk in oa.chat.completions.create(
    model="gpt-4o",
    messages=[{"role": "user", "content": "Stream with usage."}],
    stream=True,
    stream_options={"include_usage": True},
):
    if chunk.usage is not None:
        usage = chunk.usage.completion_tokens
    for choice in chunk.choices:
        text += choice.delta.content or ""
result["chat_stream_usage"] = {"content": text, "completion_tokens": usage}

tools = oa.chat.completions.create(
    model="gpt-4o",
    messages=[{"role": "user", "content": "What is the weather in Paris?"}],
    tools=[
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    tool_choice="auto",
    extra_body={"a_parameter_from_next_year": {"nested": [1, 2.5]}},
)
result["tools"] = {"finish_reason": tools.choices[0].finish_reason}

embeddings = oa.embeddings.create(model="text-embedding-3-small", input=["first", "second"])
result["embeddings"] = {"count": len(embeddings.data), "prompt_tokens": embeddings.usage.prompt_tokens}

result["models"] = sorted(model.id for model in oa.models.list())

message = an.messages.create(
    model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "Hello, Claude."}]
)
result["messages"] = {
    "content": message.content[0].text,
    "input_tokens": message.usage.input_tokens,
    "output_tokens": message.usage.output_tokens,
}

with an.messages.stream(
    model="claude-sonnet-4-5", max_tokens=64, messages=[{"role": "user", "content": "Stream, Claude."}]
) as stream:
    text = "".join(stream.text_stream)
    final = stream.get_final_message()
result["messages_stream"] = {"content": text, "output_tokens": final.usage.output_tokens}

wrong_key_oa = openai.OpenAI(base_url=f"{base}/v1", api_key="tg-not-a-key", max_retries=0)
wrong_key_an = anthropic.Anthropic(base_url=base, api_key="tg-not-a-key", max_retries=0)
raised(
    "openai_401",
    lambda: wrong_key_oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}]),
)
raised(
    "anthropic_401",
    lambda: wrong_key_an.messages.create(
        model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    ),
)
raised(
    "openai_404",
    lambda: oa.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}]),
)
raised(
    "anthropic_404",
    lambda: an.messages.create(model="claude-nonexistent", max_tokens=5, messages=[{"role": "user", "content": "x"}]),
)
huge = "word " * 20000
raised(
    "openai_413",
    lambda: oa.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": huge}]),
)
raised(
    "anthropic_413",
    lambda: an.messages.create(
        model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": huge}]
    ),
)
raised(
    "openai_429",
    lambda: oa.chat.completions.create(model="rate-limited", messages=[{"role": "user", "content": "x"}]),
)

print(json.dumps(result))
