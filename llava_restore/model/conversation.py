"""Conversation templates producing byte-identical prompts to LLaVA-1.5's.

Only the templates LLaVA-1.5 uses are provided: ``vicuna_v1`` (eval), ``llava_v1`` (alias family)
and ``plain`` (projector pre-training).  Unknown names fail listing the known ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum


class SepStyle(Enum):
    TWO = "two"  # "SYSTEM<sep>ROLE: msg<sep>ROLE: msg<sep2>..."
    PLAIN = "plain"  # "msg<sep>msg<sep2>..." (no system, no roles)


@dataclass
class Conversation:
    system: str
    roles: tuple[str, str]
    sep_style: SepStyle
    sep: str
    sep2: str
    version: str
    messages: list[list] = field(default_factory=list)

    def copy(self) -> "Conversation":
        return replace(self, messages=[list(m) for m in self.messages])

    def append_message(self, role: str, message: str | None) -> None:
        self.messages.append([role, message])

    def get_prompt(self) -> str:
        seps = (self.sep, self.sep2)
        if self.sep_style is SepStyle.TWO:
            out = self.system + seps[0]
            for i, (role, msg) in enumerate(self.messages):
                out += f"{role}: {msg}{seps[i % 2]}" if msg else f"{role}:"
            return out
        if self.sep_style is SepStyle.PLAIN:
            out = self.system
            for i, (_, msg) in enumerate(self.messages):
                out += f"{msg}{seps[i % 2]}" if msg else ""
            return out
        raise ValueError(f"unknown separator style {self.sep_style}")


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
_LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)

conv_templates: dict[str, Conversation] = {
    "vicuna_v1": Conversation(_VICUNA_SYSTEM, ("USER", "ASSISTANT"), SepStyle.TWO, " ", "</s>", "v1"),
    "llava_v1": Conversation(_LLAVA_SYSTEM, ("USER", "ASSISTANT"), SepStyle.TWO, " ", "</s>", "v1"),
    "plain": Conversation("", ("", ""), SepStyle.PLAIN, "\n", "\n", "plain"),
}
conv_templates["v1"] = conv_templates["vicuna_v1"]


def get_conv_template(name: str) -> Conversation:
    if name not in conv_templates:
        raise ValueError(f"unknown conv-mode {name!r}; known: {sorted(conv_templates)}")
    return conv_templates[name].copy()


def build_prompt(question: str, conv_mode: str = "vicuna_v1", answer: str | None = None) -> str:
    """One-turn prompt as LLaVA's eval scripts build it (question already carries "<image>\\n")."""
    conv = get_conv_template(conv_mode)
    conv.append_message(conv.roles[0], question)
    conv.append_message(conv.roles[1], answer)
    return conv.get_prompt()
