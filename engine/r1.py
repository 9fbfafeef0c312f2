"""Facts of the DeepSeek-R1 format shared by chat, rewards, export and Ollama (data, no logic).

Special-token texts (fullwidth bar U+FF5C, U+2581), DeepSeek's sampling advice, and the known R1 chat
template used when a GGUF carries none. Since February 2025 the official templates end the generation prompt
with `<think>\n`, so a reply may hold only `</think>`: whether it starts inside a thought is read from the
rendered prompt, never from the model's name.
"""

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
STOPS = (BOS, EOS, USER, ASSISTANT)

# DeepSeek's usage guidance for R1 and its distills.
TEMPERATURE = 0.6
TOP_P = 0.95
SYSTEM_PROMPT_WARNING = ("DeepSeek advises no system prompt for R1 models: put instructions in the user turn "
                         "instead (the system text is still sent).")
MATH_HINT = "Please reason step by step, and put your final answer within \\boxed{}."

# The official DeepSeek-R1-Distill template (Feb 2025 revision) without its tool-call branches: system text
# first, earlier turns' reasoning cut at `</think>`, generation prompt pre-filled with `<think>\n`.
CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}"
    "{%- elif message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{%- if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
