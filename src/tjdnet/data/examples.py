"""The two kinds of records the data layer hands around."""

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """A single-turn question and its reference answer (``None`` for prompt-only sets such as MT-Bench)."""

    question: str
    answer: str | None


@dataclass(frozen=True)
class Conversation:
    """A multi-turn chat: messages ``{"role": "system" | "user" | "assistant", "content": str}`` in order.

    Training puts loss on the assistant turns only. A conversation may not open with an assistant turn (chat
    templates cannot render a reply to nothing).
    """

    messages: tuple[dict[str, str], ...]

    def __post_init__(self) -> None:
        for message in self.messages:
            if message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise ValueError(f"bad chat message {message!r}: needs a role in {ROLES} and string content")
        if self.messages and self.messages[0]["role"] == "assistant":
            raise ValueError("a conversation may not open with an assistant turn")
