"""A small routing domain with a scripted teacher and target, registered through the real `local/` provider."""
from __future__ import annotations

import random
import re

KEYWORDS = {"refund": "BILL-REFUND", "charged": "BILL-REFUND", "password": "ACCT-LOCKOUT", "locked": "ACCT-LOCKOUT",
            "late": "SHIP-LATE", "parcel": "SHIP-LATE"}
LABELS = sorted(set(KEYWORDS.values())) + ["OTHER"]

HISTORICAL = [
    "I want a refund for my order 1234", "I was charged twice this month", "please refund the extra fee",
    "I forgot my password and cannot log in", "my account is locked after three tries", "reset my password please",
    "my parcel is late by a week", "where is my parcel, it is late", "the delivery is late again",
    "can I get a refund on the shoes", "locked out of my account since Monday", "my parcel never arrived late or not",
    "charged for something I did not buy", "password link does not work", "package is very late",
    "what is the weather like", "do you sell gift cards", "refund please, the item broke",
    "I keep getting locked out", "the parcel tracking says late",
]


def true_label(text: str) -> str:
    low = text.lower()
    for k, v in KEYWORDS.items():
        if k in low:
            return v
    return "OTHER"


def _last_user(messages_or_prompt) -> str:
    if isinstance(messages_or_prompt, str):
        m = re.findall(r"Input: (.*)", messages_or_prompt)
        return m[-1] if m else messages_or_prompt
    return [m["content"] for m in messages_or_prompt if m["role"] == "user"][-1]


def teacher(req) -> str:
    """Keyword routing; at temperature > 0 it sometimes hedges to OTHER (so its ceiling is below 1)."""
    text = _last_user(req.messages_or_prompt)
    label = true_label(text)
    rng = random.Random(f"{text}|{req.temperature}|{req.seed}")
    if req.temperature > 0 and rng.random() < 0.15:
        return "OTHER"
    return label


def target(req) -> str:
    """A weak base model: knows the right label only when the prompt shows it that label's vocabulary."""
    mp = req.messages_or_prompt
    whole = mp if isinstance(mp, str) else "\n".join(str(m["content"]) for m in mp)
    text = _last_user(mp)
    if "Reply with the message only" in text:  # acting as the probe generator
        seed = re.findall(r'"([^"]+)"', text)
        rng = random.Random(f"{text}|{req.seed}")
        base = seed[0] if seed else "hello there"
        return f"{rng.choice(['hi,', 'hey', 'urgent:', 'so'])} {base} {rng.choice(['thanks', 'asap', 'pls help', '!!'])}"
    label = true_label(text)
    context = whole[: whole.rfind(text)] if text in whole else whole
    if label in context:
        return label
    return "I am not sure."
