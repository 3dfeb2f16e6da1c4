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


# --- a fake litellm embedding model, registered the way a real provider plugs into litellm ---------

EMBEDDING_PROVIDER = "fakeembed"


def hashed_words(text: str, dim: int = 64) -> list[float]:
    """A deterministic bag of words: each word adds a signed weight in [0.5, 1.5) in the slot its
    hash picks, so texts that share words are near each other (and, as with a real model, two
    cosines are almost never exactly equal)."""
    import hashlib

    row = [0.0] * dim
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big")
        weight = 0.5 + ((h >> 16) % 1000) / 1000
        row[h % dim] += weight if (h >> 40) & 1 else -weight
    return row


def fake_embedding_provider():
    """A context manager registering `fakeembed/hashed-<dim>` in litellm.custom_provider_map (a
    CustomLLM with `embedding`/`aembedding`, as any third-party provider registers); it yields the
    handler, whose `calls` lists the texts of each request and `sent` its timeout, api_key and
    api_base. It reports one prompt token per word; exceptions put in `fail_next` are raised by the next
    requests, one each. Unregistered on exit."""
    import contextlib

    import litellm
    from litellm.llms.custom_llm import CustomLLM
    from litellm.types.utils import Usage
    from litellm.utils import custom_llm_setup

    class HashedWordsEmbedding(CustomLLM):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[list[str]] = []
            self.sent: list[dict] = []
            self.fail_next: list[Exception] = []

        def embedding(self, model, input, model_response, *args, **kwargs):
            self.calls.append([str(text) for text in input])
            self.sent.append({key: kwargs.get(key) for key in ("timeout", "api_key", "api_base")})
            if self.fail_next:
                raise self.fail_next.pop(0)
            dim = int(model.rsplit("-", 1)[1]) if re.fullmatch(r".*-\d+", model) else 64
            model_response.model = model
            model_response.data = [{"object": "embedding", "index": i, "embedding": hashed_words(str(text), dim)}
                                   for i, text in enumerate(input)]
            words = sum(len(re.findall(r"[a-z0-9]+", str(text).lower())) for text in input)
            model_response.usage = Usage(prompt_tokens=words, completion_tokens=0, total_tokens=words)
            return model_response

        async def aembedding(self, *args, **kwargs):
            return self.embedding(*args, **kwargs)

    @contextlib.contextmanager
    def registered():
        handler = HashedWordsEmbedding()
        litellm.custom_provider_map = [*litellm.custom_provider_map,
                                       {"provider": EMBEDDING_PROVIDER, "custom_handler": handler}]
        custom_llm_setup()
        try:
            yield handler
        finally:
            litellm.custom_provider_map = [item for item in litellm.custom_provider_map
                                           if item["custom_handler"] is not handler]
            for names in (litellm.provider_list, litellm._custom_providers):
                while EMBEDDING_PROVIDER in names:
                    names.remove(EMBEDDING_PROVIDER)

    return registered()
