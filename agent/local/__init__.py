"""The in-process `local/` model provider: embedded GGUF models, PEFT adapters and registered fakes.

`backend` says what a backend is (one `generate()` method), `catalog` lists the embedded models,
`registry` resolves a `local/<name>` string to a loaded backend, and `provider` exposes the backends
to litellm as a custom provider. Nothing heavy is imported here.
"""

from foster.agent.local.backend import Backend, Generation, LocalRequest, UnknownModelError
from foster.agent.local.registry import register_backend, unregister_backend

__all__ = [
    "Backend",
    "Generation",
    "LocalRequest",
    "UnknownModelError",
    "register_backend",
    "unregister_backend",
]
