"""The `ollama` export's Modelfile: FROM the GGUF, a TEMPLATE that renders chats as the model's own chat
template does, its stop tokens, and the run's system prompt.

Ollama's TEMPLATE is a Go text/template, the model's is Jinja; no library translates one into the other,
so we derive it here. We render the Jinja template on marker messages to learn what it writes around each
turn (the first system message, the default system prompt when there is none, user and assistant turns,
the generation prompt), rebuild it as a Go template from those pieces, and refuse templates that are not
such a sequence of turns (the check renders both ways and compares).

A template wrapped in tunelab's tool prologue (data/tools.py: trained on function-calling data) gets the
prologue's rewriting in Go too, on Ollama's tool fields: `.Tools` listed in the first system message,
each assistant message's `.ToolCalls` as `<tool_call>` blocks, `tool` messages merged into one user turn
of `<tool_response>` blocks. Ollama prints a tool's function and a call's arguments with Go's
`json.Marshal` (`{"city":"Oslo"}`) where the prologue's `tojson` writes `{"city": "Oslo"}`: no Go template
can space them, so those two kinds of JSON are the one thing a served prompt writes differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..data.tools import CLOSE, OPEN, PROLOGUE_MARK, TOOLS_INTRO, TOOLS_OUTRO
from .config import ExportError

MARK = "TUNELAB{}MARK"  # message contents no template alters, found again in its output


@dataclass
class ChatShape:
    """The text a chat template writes around each kind of turn; `{content}` marks the message's text."""

    first_system: str  # the conversation's start when it opens with a system message
    no_system: str  # its start otherwise (e.g. a default system prompt)
    system: str  # a later system message
    user: str
    assistant: str
    generation: str  # what asks for the assistant's reply
    tools: bool = False  # the template is tunelab's tool prologue before these turns (data/tools.py)

    def render(self, messages: list[dict]) -> str:
        """What the derived Go template renders, in Python: checked against Jinja before use."""
        text = ""
        for i, message in enumerate(messages):
            role = message["role"]
            if i == 0:
                shape = self.first_system if role == "system" else self.no_system + getattr(self, role)
            else:
                shape = getattr(self, role)
            text += shape.replace("{content}", message["content"])
        return text + self.generation


def chat_shape(tokenizer) -> ChatShape:
    """Learn the turn shapes of the tokenizer's chat template; ExportError when it has no such shape."""

    def render(*roles: str, generation: bool = False) -> str:
        messages = [{"role": r, "content": MARK.format(i)} for i, r in enumerate(roles)]
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)

    def after(longer: str, shorter: str, what: str) -> str:
        if not longer.startswith(shorter):
            raise ExportError(
                f"ollama: the model's chat template does not write {what} after the turns before it, so it "
                "has no Ollama TEMPLATE equivalent tunelab can derive; use --format gguf and write the "
                "Modelfile's TEMPLATE by hand"
            )
        return longer[len(shorter) :]

    if not getattr(tokenizer, "chat_template", None):
        raise ExportError("ollama: the tokenizer has no chat template to translate into a TEMPLATE")
    try:
        first_system = render("system")
        user = after(render("system", "user"), first_system, "a user turn")
        assistant = after(render("system", "user", "assistant"), render("system", "user"), "an answer")
        generation = after(render("system", "user", generation=True), render("system", "user"), "a prompt")
        alone = render("user")
        if not alone.endswith(user.replace(MARK.format(1), MARK.format(0))):
            raise ExportError("ollama: the chat template writes a first user turn unlike later ones")
        no_system = alone[: len(alone) - len(user)]
        system = after(render("user", "system"), alone, "a later system message")
    except ExportError:
        raise
    except Exception as err:  # a template that refuses a role order (raise_exception) or a system role
        raise ExportError(f"ollama: could not derive a TEMPLATE from the chat template: {err}") from err
    shape = ChatShape(
        first_system.replace(MARK.format(0), "{content}"),
        no_system,
        system.replace(MARK.format(1), "{content}"),
        user.replace(MARK.format(1), "{content}"),
        assistant.replace(MARK.format(2), "{content}"),
        generation,
        tokenizer.chat_template.startswith(PROLOGUE_MARK),
    )
    check = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    check += [{"role": "user", "content": "and?"}]
    for messages in (check, [{"role": "system", "content": "sys"}, *check]):
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if shape.render(messages) != expected:
            raise ExportError(
                "ollama: the chat template is not a plain sequence of turns (a derived TEMPLATE renders "
                "it differently); use --format gguf and write the Modelfile's TEMPLATE by hand"
            )
    return shape


def _go_text(text: str, content: str = "{{ .Content }}") -> str:
    """Literal text in a Go template, with `{content}` as `content` (by default the message's)."""
    literal = text.replace("{{", '{{"{{"}}')  # the only sequence Go would read as an action
    return literal.replace("{content}", content)


# The prologue's writing of tools and calls on Ollama's fields. Ollama takes the text that the first `if`
# on `.ToolCalls` starts with as the prefix that marks a call in a reply, and runs the `range` over them
# to learn the call's JSON keys: so the separator after the content tests the calls with `with`, and the
# `if` starts with the tag.
TOOLS = (
    '{{ with .Messages }}{{ with index . 0 }}{{ if eq .Role "system" }}{{ .Content }}\n\n{{ end }}'
    "{{ end }}{{ end }}"
    + _go_text(TOOLS_INTRO)
    + '{{ range .Tools }}\n{"type": "function", "function": {{ .Function }}}{{ end }}'
    + _go_text(TOOLS_OUTRO)
)
CALLS = (
    "{{ .Content }}{{ if .Content }}{{ with .ToolCalls }}\n{{ end }}{{ end }}"
    f"{{{{ if .ToolCalls }}}}{OPEN}\n{{{{ range $j, $call := .ToolCalls }}}}"
    f"{{{{ if $j }}}}\n{OPEN}\n{{{{ end }}}}"
    '{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}'
    f"\n{CLOSE}{{{{ end }}}}{{{{ end }}}}"
)
TOOL_RESPONSE = "<tool_response>\n{{ .Content }}\n</tool_response>"


def go_template(shape: ChatShape) -> str:
    """The Go template (Ollama's `.Messages` form). No trim markers: literal text stays exactly as is."""
    first_system, no_system = _go_text(shape.first_system), _go_text(shape.no_system)
    turns = {role: _go_text(getattr(shape, role)) for role in ("system", "user", "assistant")}
    start = before = after = end = ""
    if shape.tools:
        # The tools open the conversation as its system message; tool answers in a row share one user
        # turn, opened by the first and closed by whatever comes after the last (`$prev`: the last role).
        user_open, _, user_close = (_go_text(part) for part in shape.user.partition("{content}"))
        start = '{{ $prev := "" }}{{ if .Tools }}' + _go_text(shape.first_system, TOOLS) + "{{ end }}"
        first_system = "{{ if not $.Tools }}" + first_system + "{{ end }}"
        no_system = "{{ if not $.Tools }}" + no_system + "{{ end }}"
        turns["assistant"] = _go_text(shape.assistant, CALLS)
        turns["tool"] = f'{{{{ if eq $prev "tool" }}}}\n{{{{ else }}}}{user_open}{{{{ end }}}}{TOOL_RESPONSE}'
        before = f'{{{{ if and (eq $prev "tool") (ne .Role "tool") }}}}{user_close}{{{{ end }}}}'
        after = "{{ $prev = .Role }}"
        end = f'{{{{ if eq $prev "tool" }}}}{user_close}{{{{ end }}}}'
    branches = [f'eq .Role "{role}" }}}}{text}' for role, text in turns.items()]
    return (
        f"{start}{{{{ range $i, $m := .Messages }}}}{before}"
        f'{{{{ if and (eq $i 0) (eq .Role "system") }}}}{first_system}'
        f"{{{{ else }}}}{{{{ if eq $i 0 }}}}{no_system}{{{{ end }}}}"
        f"{{{{ if {'{{ else if '.join(branches)}{{{{ end }}}}"
        f"{{{{ end }}}}{after}{{{{ end }}}}{end}{_go_text(shape.generation)}"
    )


def stop_tokens(tokenizer, generation_config) -> list[str]:
    eos = generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return list(dict.fromkeys(tokenizer.convert_ids_to_tokens([i for i in ids if i is not None])))


def modelfile(gguf_name: str, template: str, stops: list[str], system: str | None) -> str:
    for name, text in (("TEMPLATE", template), ("SYSTEM", system or "")):
        if '"""' in text:
            raise ExportError(f'ollama: the {name} contains """, which a Modelfile cannot quote')
    lines = [
        "# Made by `tunelab export --format ollama`; create the model with: ollama create NAME -f Modelfile",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
        *(f"PARAMETER stop {json.dumps(stop)}" for stop in stops),
        "PARAMETER temperature 0",  # greedy, like `tunelab chat` and the numbers tunelab measured
    ]
    if system:
        lines.append(f'SYSTEM """{system}"""')
    return "\n".join(lines) + "\n"


def read_template(path: Path) -> str:
    """The TEMPLATE of a Modelfile written by `modelfile`."""
    text = Path(path).read_text()
    start = text.index('TEMPLATE """') + len('TEMPLATE """')
    return text[start : text.index('"""', start)]
