"""The in-process `local/` model provider: embedded GGUF models, PEFT adapters and registered fakes.

`registry` resolves a `local/<name>` string to a backend (one `generate()` method); `provider`
exposes the backends to litellm as a custom provider. Nothing heavy is imported here.
"""

from foster.agent.local.registry import (
    Backend,
    Generation,
    LocalRequest,
    UnknownModelError,
    register_backend,
    unregister_backend,
)

__all__ = [
    "Backend",
    "Generation",
    "LocalRequest",
    "UnknownModelError",
    "register_backend",
    "unregister_backend",
]
