"""Turning chat messages into a prompt for a local model.

The bundled Gemma GGUF carries no chat template (llama-cpp-python would fall back to ``llama-2`` and the model
answers nothing), and llama-cpp-python's own ``gemma`` format drops system messages, so the Gemma and ChatML
formats live here. A GGUF that carries ``tokenizer.chat_template`` is formatted with that template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hybrid.protocol import content_text


@dataclass(frozen=True)
class FormattedPrompt:
    prompt: str
    stop: list[str]


ChatFormatter = Callable[[list[dict[str, Any]]], FormattedPrompt]


def _split_system(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    system = [content_text(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    rest = [m for m in messages if m.get("role") not in ("system", "developer")]
    return "\n\n".join(s for s in system if s), rest


def format_gemma(messages: list[dict[str, Any]]) -> FormattedPrompt:
    """Gemma's turn format; system text is folded into the first user turn, as Gemma's own template does."""
    system, rest = _split_system(messages)
    parts: list[str] = []
    pending_system = system
    for m in rest:
        role = "model" if m.get("role") == "assistant" else "user"
        text = content_text(m.get("content"))
        if role == "user" and pending_system:
            text = f"{pending_system}\n\n{text}"
            pending_system = ""
        parts.append(f"<start_of_turn>{role}\n{text}<end_of_turn>\n")
    if pending_system:  # a system message alone
        parts.append(f"<start_of_turn>user\n{pending_system}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n")
    return FormattedPrompt("".join(parts), ["<end_of_turn>"])


def format_chatml(messages: list[dict[str, Any]]) -> FormattedPrompt:
    parts = []
    for m in messages:
        role = m.get("role", "user")
        role = {"developer": "system", "function": "tool"}.get(role, role)
        parts.append(f"<|im_start|>{role}\n{content_text(m.get('content'))}<|im_end|>\n")
    parts.append("<|im_start|>assistant\n")
    return FormattedPrompt("".join(parts), ["<|im_end|>"])


BUILTIN_FORMATS: dict[str, ChatFormatter] = {"gemma": format_gemma, "chatml": format_chatml}


def jinja_formatter(template: str, eos_token: str, bos_token: str) -> ChatFormatter:
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    fmt = Jinja2ChatFormatter(template=template, eos_token=eos_token, bos_token=bos_token)

    def _format(messages: list[dict[str, Any]]) -> FormattedPrompt:
        res = fmt(messages=messages)  # type: ignore[arg-type]  # OpenAI-shaped dicts, as its TypedDicts describe
        stop = res.stop if isinstance(res.stop, list) else ([res.stop] if res.stop else [])
        prompt = res.prompt
        if bos_token and prompt.startswith(bos_token):  # llama.cpp adds BOS itself
            prompt = prompt[len(bos_token) :]
        return FormattedPrompt(prompt, stop)

    return _format


def pick_formatter(
    chat_format: str, metadata: dict[str, str], eos_token: str = "", bos_token: str = ""
) -> tuple[str, ChatFormatter]:
    """The formatter for a model: the configured one, else the GGUF's template, else by architecture."""
    if chat_format:
        if chat_format in BUILTIN_FORMATS:
            return chat_format, BUILTIN_FORMATS[chat_format]
        if chat_format == "jinja" and metadata.get("tokenizer.chat_template"):
            return "jinja", jinja_formatter(metadata["tokenizer.chat_template"], eos_token, bos_token)
        raise ValueError(f"unknown chat_format {chat_format!r} (known: {', '.join(BUILTIN_FORMATS)}, jinja)")
    if metadata.get("tokenizer.chat_template"):
        return "jinja", jinja_formatter(metadata["tokenizer.chat_template"], eos_token, bos_token)
    arch = metadata.get("general.architecture", "")
    if arch.startswith("gemma"):
        return "gemma", format_gemma
    return "chatml", format_chatml
