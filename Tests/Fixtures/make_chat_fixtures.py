#!/usr/bin/env python3
"""Byte-level BPE tokenizers with the pre-tokenizers Llama-family models use, chat templates, and what Hugging Face
makes of them. Run by hand, never in CI:

    ~/.reins-reference/bin/python Tests/Fixtures/make_chat_fixtures.py

Pinned: tokenizers==0.22.2, transformers==4.57.6 (Tests/Fixtures/reference-venv.sh).

Writes Tests/Fixtures/tokenizers/<style>/tokenizer.json for three styles trained on a small corpus — `llama3` (the
Llama 3 split regex, ignore_merges, a BOS added by TemplateProcessing), `qwen2` (NFC, the Qwen2 regex with single
digits) and `smollm` (Digits + GPT-2's ByteLevel regex) — and Tests/Fixtures/tokenizers/chat.json: for each style the
ids `tokenizers` gives for hard texts, and for each chat template the text transformers' apply_chat_template renders
(with and without the generation prompt) and its ids.
"""
import json
import os

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tokenizers")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's a dog's life, isn't it? THEY'LL SEE.",
    "Fine-tuning adapters: LoRA, prefix tuning, BitFit and Houlsby adapters steer one frozen base model.",
    "Café, naïve, résumé, Ångström and Zürich keep their accents; so does cafe\u0301 decomposed.",
    "中文分词测试：我们在北京学习语言模型。日本語のテキストも少しあります。",
    "Numbers like 3.14159, 2026 and 1,000,000 and 1234567 appear; emoji too 🙂🚀 and symbols #@$%^&*.",
    "Tabs\tand  double  spaces   and\nnewlines\n\nare whitespace.\r\n Windows lines too.",
    "def main():\n    print('hello')  # code\n    return x**2 + y[3]",
    "<|im_start|>user\nHow are you?<|im_end|>\n<|im_start|>assistant\nFine, thanks!<|im_end|>",
] * 30
TEXTS = [
    "Hello, world!",
    "The quick brown fox's jumps: isn't it LAZY? I'LL GO",
    "Café naïve RÉSUMÉ Ångström cafe\u0301",
    "中文分词测试 and 日本語",
    "emoji 🙂🚀 and 👩‍👩‍👧 family",
    "tabs\tand  two spaces   three\nnew line\n\n  indented\r\n",
    "   leading and trailing spaces   ",
    "numbers 3.14159 and 1,000,000 and 1234567890",
    "def f(x):\n    return x**2  # square\n",
    "weird\u00a0nbsp\u2028line sep\u200bzero width\u0007bell",
    "",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "supercalifragilisticexpialidocious" * 3,
]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>",
            "<|start_header_id|>", "<|end_header_id|>"]


def train(style):
    tok = Tokenizer(models.BPE(ignore_merges=(style == "llama3")))
    if style == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    elif style == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    if style == "llama3":
        bos = tok.token_to_id("<|begin_of_text|>")
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
                                          special_tokens=[("<|begin_of_text|>", bos)])])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    os.makedirs(os.path.join(OUT, style), exist_ok=True)
    path = os.path.join(OUT, style, "tokenizer.json")
    tok.save(path)
    return Tokenizer.from_file(path)


SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
           "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
           "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3 = ("{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
          "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
          "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
         "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
         "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
         "{{ '<|im_start|>assistant\n' }}{% endif %}")
# Multi-line templates in the style of Llama 3.1 and Qwen2.5: whitespace control, trim_blocks/lstrip_blocks, slices,
# `is defined`, `is not none`, namespaces, tools as JSON, loop.last, raise_exception.
LLAMA31_STYLE = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none %}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role not in ['user', 'assistant'] %}
        {{- raise_exception("Only user and assistant roles after the system message") }}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""
QWEN25_STYLE = """{%- set ns = namespace(system_seen=false, turns=0) %}
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
        {%- set ns.system_seen = true %}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
        {%- set ns.system_seen = true %}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "system" and loop.first %}
        {%- continue %}
    {%- endif %}
    {%- set ns.turns = ns.turns + 1 %}
    {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- if loop.last and message.role == "assistant" %}
        {{- '<!-- ' ~ ns.turns ~ ' turns -->' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""
TEMPLATES = {"smollm2": ("smollm", SMOLLM2), "llama3": ("llama3", LLAMA3), "qwen2": ("qwen2", QWEN2),
             "llama31-style": ("llama3", LLAMA31_STYLE), "qwen25-style": ("qwen2", QWEN25_STYLE)}
CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "  You answer briefly.\n"}, {"role": "user", "content": " Hi there! "},
     {"role": "assistant", "content": "Hello. 🙂"}, {"role": "user", "content": "Café or thé?\nPick one."}],
    [{"role": "user", "content": "Quote: \"x\" and 'y' \\ done"}, {"role": "assistant", "content": "日本語で答えます。"}],
]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city, in °C",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


if __name__ == "__main__":
    expected = {"texts": TEXTS, "styles": {}, "templates": {}, "tools_json": json.dumps(TOOLS, ensure_ascii=False)}
    fast = {}
    for style in ["llama3", "qwen2", "smollm"]:
        t = train(style)
        expected["styles"][style] = {"ids": [t.encode(x).ids for x in TEXTS],
                                     "ids_without_specials": [t.encode(x, add_special_tokens=False).ids for x in TEXTS],
                                     "decoded": [t.decode(t.encode(x).ids, skip_special_tokens=False) for x in TEXTS]}
        fast[style] = PreTrainedTokenizerFast(tokenizer_file=os.path.join(OUT, style, "tokenizer.json"),
                                              bos_token="<|begin_of_text|>", eos_token="<|endoftext|>")
    for name, (style, template) in TEMPLATES.items():
        tok = fast[style]
        cases = []
        for conversation in CONVERSATIONS:
            for generation in [False, True]:
                for tools in ([None, TOOLS] if "style" in name else [None]):
                    kwargs = {"tools": tools} if tools else {}
                    text = tok.apply_chat_template(conversation, chat_template=template, tokenize=False,
                                                   add_generation_prompt=generation, **kwargs)
                    ids = tok.apply_chat_template(conversation, chat_template=template, tokenize=True,
                                                  add_generation_prompt=generation, **kwargs)
                    if isinstance(ids, dict):
                        ids = ids["input_ids"]
                    cases.append({"messages": conversation, "add_generation_prompt": generation, "tools": tools,
                                  "text": text, "ids": list(ids)})
        expected["templates"][name] = {"style": style, "template": template, "bos_token": "<|begin_of_text|>",
                                       "eos_token": "<|endoftext|>", "cases": cases}
    # A conversation the Llama-3.1-style template refuses (a tool role after the system message).
    with open(os.path.join(OUT, "chat.json"), "w", encoding="utf-8") as f:
        json.dump(expected, f, ensure_ascii=False, indent=1)
    print("wrote", os.path.join(OUT, "chat.json"), sum(len(v["cases"]) for v in expected["templates"].values()), "cases")
