"""What an in-process model is: the Backend protocol (one `generate()`), its request and answer, and the
transcript helpers every backend serving chat on a base model shares. Imports nothing heavy."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace


class UnknownModelError(ValueError):
    """A model string that names no provider, alias, file or adapter this process can serve."""


@dataclass(frozen=True)
class LocalRequest:
    """One sample asked of a local backend; `messages` for chat, `prompt` for raw completion."""

    messages: tuple[dict, ...] | None = None
    prompt: str | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None
    sample_index: int = 0

    @property
    def messages_or_prompt(self) -> list[dict] | str:
        return self.prompt if self.prompt is not None else [dict(m) for m in self.messages or ()]

    def sample(self, index: int) -> LocalRequest:
        """The request for sample `index` of n: seed + index, so every sample is reproducible."""
        seed = None if self.seed is None else self.seed + index
        return replace(self, sample_index=index, seed=seed)


@dataclass
class Generation:
    """A backend's answer to one request (or, when streamed, one piece of it)."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


class Backend:
    """A model served in-process. Subclasses implement `generate`; the rest has defaults."""

    def generate(self, request: LocalRequest) -> Generation:
        raise NotImplementedError

    def stream(self, request: LocalRequest) -> Iterator[Generation]:
        """Text pieces as they are produced; the last piece carries finish reason and token counts."""
        yield self.generate(request)

    def count_tokens(self, text: str) -> int | None:
        """Tokens of `text` under this model's own tokenizer, or None when it has none."""
        return None

    def close(self) -> None:
        """Free the weights (called when the model is evicted, and for loaded models at interpreter exit)."""


# ---------------------------------------------------------------------------------------------
# Shared by backends that serve chat requests on base models


def message_text(message: dict) -> str:
    """A message's text; OpenAI content parts are joined."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


TRANSCRIPT_STOP = ("\nUser:",)


def render_transcript(messages: list[dict] | tuple[dict, ...]) -> str:
    """Chat rendered for a base model: system text, then User/Assistant turns, ending `Assistant:`."""
    lines: list[str] = []
    for m in messages:
        role, text = m.get("role"), message_text(m).strip()
        if role == "system":
            lines.append(text + "\n")  # a blank line between the instructions and the turns
        elif role == "assistant":
            lines.append(f"Assistant: {text}")
        else:
            lines.append(f"User: {text}")
    lines.append("Assistant:")
    return "\n".join(lines)


def truncate_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """`text` cut at the earliest stop string; True when one was found."""
    cut = min((i for i in (text.find(s) for s in stop if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)
