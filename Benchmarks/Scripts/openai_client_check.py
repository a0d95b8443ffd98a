"""By hand: the official `openai` Python client (pip install openai) against a running `reins serve`:
models, completions, streamed chat completions and embeddings for two different adapters.

    reins serve --model SmolLM2-135M-Instruct.Q4_1.gguf --adapters reins-demo/decoder/adapters --port 8080 &
    python3 Benchmarks/Scripts/openai_client_check.py --port 8080 --adapters lora define
"""
import argparse

from openai import OpenAI

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, default=8080)
p.add_argument("--adapters", nargs=2, default=["lora", "define"])
args = p.parse_args()
client = OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="unused")

print("models:", [m.id for m in client.models.list().data])
prompts = {"lora": ("Translate to French.", "white"), "define": ("Define the word briefly.", "tree")}
for adapter in args.adapters:
    system, word = prompts.get(adapter, ("Translate to French.", "white"))
    c = client.completions.create(model=adapter, prompt="Once upon a time", max_tokens=12, temperature=0)
    print(f"[{adapter}] completion: {c.choices[0].text!r} ({c.choices[0].finish_reason}, {c.usage.completion_tokens} tokens)")
    stream = client.chat.completions.create(
        model=adapter, stream=True, max_tokens=24, temperature=0,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": word}])
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    print(f"[{adapter}] streamed chat ({len(pieces)} chunks): {''.join(pieces)!r}")
    e = client.embeddings.create(model=adapter, input=["hello there", "a cat"])
    print(f"[{adapter}] embeddings: {len(e.data)} vectors of {len(e.data[0].embedding)}, first values {e.data[0].embedding[:3]}")
try:
    client.chat.completions.create(model="no-such-adapter", messages=[{"role": "user", "content": "hi"}])
except Exception as error:  # the client raises its NotFoundError for a 404
    print("unknown adapter:", type(error).__name__, getattr(error, "status_code", ""))
