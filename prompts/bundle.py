"""The portable prompt bundle: what foster ships, and the one code path that renders it.

Evaluation and serving both call `messages()` / `prompt()` on a loaded bundle, so what was measured
is what runs. A bundle is saved as JSON plus a readable Markdown sidecar, and refuses to hold an API
key or an endpoint URL (those belong to the deployment, not the prompt).

    from foster.prompts.bundle import Bundle
    Bundle.load("intent.json").messages("where is my refund?")
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, UTC
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from foster.prompts import templates
from foster.prompts.answers import answer_key, answers_agree, normalize_answer
from foster.prompts.embedding import EMBEDDING_MODEL, check_embedding_provider

__all__ = [
    "SCHEMA_VERSION",
    "Bundle",
    "BundleLoadError",
    "Example",
    "ExampleSelection",
    "OutputContract",
    "PoolVectors",
    "Provenance",
    "answer_key",
    "answers_agree",
    "data_hash",
    "normalize_answer",
]

SCHEMA_VERSION = 1

TRACKED_LIBRARIES = ("litellm", "dspy", "langgraph", "chromadb", "pydantic", "tiktoken")


class Example(BaseModel):
    """One demonstration: an input and the teacher's output for it."""

    model_config = ConfigDict(extra="forbid")

    input: str
    output: str


def inputs_hash(texts: Iterable[str]) -> str:
    """A short hash of a pool's inputs, in order: stored vectors belong to exactly these."""
    return data_hash(list(texts))[len("sha256:") :][:16]


class PoolVectors(BaseModel):
    """A knn pool's embeddings, stored in the bundle so rendering embeds only the input.

    Rows are float16 (half the size of float32; the pool's order of neighbours is unchanged on
    the evaluation's inputs, see tests/test_bundle_runtime.py), base64 of the row-major array."""

    model_config = ConfigDict(extra="forbid")

    model: str = EMBEDDING_MODEL
    dim: int = Field(ge=1)
    count: int = Field(ge=0)
    inputs_hash: str
    dtype: Literal["float16"] = "float16"
    data: str

    @model_validator(mode="after")
    def _check_size(self) -> PoolVectors:
        try:
            raw = base64.b64decode(self.data, validate=True)
        except ValueError as exc:
            raise ValueError(f"data is not base64: {exc}") from exc
        if len(raw) != self.count * self.dim * 2:
            raise ValueError(f"data holds {len(raw) // 2} float16 values, not count*dim = {self.count * self.dim}")
        return self

    @classmethod
    def from_array(cls, vectors: np.ndarray, texts: list[str], model: str = EMBEDDING_MODEL) -> PoolVectors:
        rows = np.ascontiguousarray(vectors, dtype="<f2")
        return cls(model=model, dim=int(rows.shape[1]), count=int(rows.shape[0]), inputs_hash=inputs_hash(texts),
                   data=base64.b64encode(rows.tobytes()).decode("ascii"))

    def array(self) -> np.ndarray:
        """The rows as float32, (count, dim), unit length again after float16 rounding (so a dot
        product is the cosine every exported selector computes)."""
        rows = np.frombuffer(base64.b64decode(self.data), dtype="<f2").reshape(self.count, self.dim)
        rows = rows.astype(np.float32)
        return rows / np.clip(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12, None)


class ExampleSelection(BaseModel):
    """How examples reach the prompt: all of them in order ("fixed"), or the k nearest to the
    input by embedding ("knn", DSPy KNNFewShot style), nearest last. A knn bundle names the
    embedding it needs (the packaged all-MiniLM-L6-v2, or any litellm provider/model embedding)
    and, once saved, carries its pool's vectors made with it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["fixed", "knn"] = "fixed"
    k: int = Field(default=4, ge=1)
    embedding_model: str = EMBEDDING_MODEL
    vectors: PoolVectors | None = None
    # Where a 135M target repeats the nearest example's answer less often than that answer is right, an
    # input this close to a recorded one is answered with the recorded answer and the target is not asked
    # (a semantic cache, chosen on validation by foster's tuner; None: the target answers every input).
    recall_above: float | None = Field(default=None, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _recall_needs_knn(self) -> ExampleSelection:
        if self.recall_above is not None and self.kind != "knn":
            raise ValueError("recall_above needs knn selection (it answers from the nearest pool example)")
        return self

    @field_validator("embedding_model")
    @classmethod
    def _known_embedding(cls, name: str) -> str:
        # a bundle is untrusted input: a name only (no URL), and a provider litellm knows
        check_embedding_provider(name)
        return name


class OutputContract(BaseModel):
    """What an answer looks like: a label from `answers`, free text, or JSON."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["label", "text", "json"] = "text"
    answers: list[str] = Field(default_factory=list)
    description: str = ""


def _foster_version() -> str:
    try:
        return metadata.version("foster")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _library_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def data_hash(data: bytes | str | Path | Iterable[Any]) -> str:
    """"sha256:<hex>" of a file (Path), a string, bytes, or records (hashed as JSON lines)."""
    digest = hashlib.sha256()
    if isinstance(data, Path):
        with data.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    elif isinstance(data, bytes):
        digest.update(data)
    elif isinstance(data, str):
        digest.update(data.encode("utf-8"))
    else:
        for record in data:
            digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False, default=str).encode())
            digest.update(b"\n")
    return "sha256:" + digest.hexdigest()


class Provenance(BaseModel):
    """Where a bundle came from: when, with which library versions, from which data."""

    model_config = ConfigDict(extra="forbid")

    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    foster_version: str = Field(default_factory=_foster_version)
    library_versions: dict[str, str] = Field(default_factory=_library_versions)
    data_hashes: dict[str, str] = Field(default_factory=dict)
    run_id: str | None = None
    parent_run_id: str | None = Field(None, description="a refined bundle: the run it refines")
    deployment: str | None = Field(None, description="a refined bundle: the deployment whose shadow traffic seeded it")
    notes: str = ""

    @classmethod
    def collect(
        cls, run_id: str | None = None, data_hashes: dict[str, str] | None = None, notes: str = ""
    ) -> Provenance:
        """Provenance for now, with the installed library versions filled in."""
        return cls(run_id=run_id, data_hashes=dict(data_hashes or {}), notes=notes)


# --- secrets and endpoints ------------------------------------------------------------------------

_SECRET_PATTERNS = [
    ("an Anthropic API key", re.compile(r"\bsk-ant-[A-Za-z0-9_\-]{8,}")),
    ("an OpenAI-style API key", re.compile(r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{16,}")),
    ("a Google API key", re.compile(r"\bAIza[0-9A-Za-z_\-]{30,}")),
    ("a Hugging Face token", re.compile(r"\bhf_[A-Za-z0-9]{20,}")),
    ("a GitHub token", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}")),
    ("an AWS access key", re.compile(r"\bAKIA[0-9A-Z]{16}\b")),
    # a token, not prose ("bearer instruments"): it has a digit
    ("a bearer token", re.compile(r"\bBearer\s+(?=[A-Za-z\-._~+/]*\d)[A-Za-z0-9\-._~+/]{12,}")),
    (
        "an api_key assignment",
        re.compile(r"""\bapi[_\-]?key["']?\s*[:=]\s*["']?[^\s"',}]{8,}""", re.IGNORECASE),
    ),
]
_URL = re.compile(r"\b(?:https?|wss?)://", re.IGNORECASE)
_FORBIDDEN_KEYS = {
    "api_key", "apikey", "api-key", "api_base", "api-base", "base_url", "api_secret",
    "secret_key", "access_token", "authorization", "password",
}  # fmt: skip


def _walk(value: Any, path: str) -> Iterable[tuple[str, Any, str | None]]:
    """Yield (path, value, dict key) for every string and dict key inside value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{path}.{key}", key, str(key)
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")
    elif isinstance(value, str):
        yield path, value, None


def find_secrets(document: dict[str, Any], url_fields: Iterable[str]) -> list[str]:
    """Problems that make a document unshippable: keys anywhere; URLs in `url_fields`."""
    problems = []
    url_fields = set(url_fields)
    for field, value in document.items():
        for path, text, key in _walk(value, field):
            if key is not None:
                if key.strip().lower().replace(" ", "_") in _FORBIDDEN_KEYS:
                    problems.append(f"{path}: a {key!r} entry (credentials and endpoints stay out of bundles)")
                text = key
            for label, pattern in _SECRET_PATTERNS:
                if pattern.search(text):
                    problems.append(f"{path}: looks like {label}")
                    break
            if field in url_fields and _URL.search(text):
                problems.append(f"{path}: contains an endpoint URL ({text[:80]!r})")
    return problems


_URL_FIELDS = ("name", "teacher", "targets", "provenance", "report")


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _refuse_unshippable(document: dict[str, Any]) -> None:
    selection = document.get("selection")
    if isinstance(selection, dict) and isinstance(selection.get("vectors"), dict):
        # base64 of float16 rows whose length is checked against count*dim: numbers, not text, and
        # long enough to contain a key-shaped run of letters by chance
        document = {**document, "selection": {**selection, "vectors": {**selection["vectors"], "data": ""}}}
    problems = find_secrets(document, url_fields=_URL_FIELDS)
    if problems:
        raise ValueError(
            "a bundle never carries API keys or endpoint URLs (model ids are plain "
            "provider/model strings; endpoints and keys belong to the deployment): "
            + "; ".join(problems)
        )


# --- the bundle ----------------------------------------------------------------------------------


def default_completion_template() -> str:
    """The default Jinja source for completion (base) targets, from prompts/templates/bundle.yaml."""
    return templates.sources("bundle")["completion"]


class Bundle(BaseModel):
    """A portable prompt: system prompt, examples and their selection rule, output contract."""

    model_config = ConfigDict(extra="forbid", validate_assignment=False)

    schema_version: int = SCHEMA_VERSION
    id: str = ""
    name: str = ""
    teacher: str
    targets: list[str]
    system_prompt: str = ""
    examples: list[Example] = Field(default_factory=list)
    selection: ExampleSelection = Field(default_factory=ExampleSelection)
    output_contract: OutputContract = Field(default_factory=OutputContract)
    completion_template: str | None = Field(default_factory=default_completion_template)
    report: dict[str, Any] | None = None
    provenance: Provenance = Field(default_factory=Provenance.collect)

    _example_vectors: np.ndarray | None = PrivateAttr(default=None)
    _example_vectors_key: tuple | None = PrivateAttr(default=None)
    _vectors_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _query: tuple[str, np.ndarray] | None = PrivateAttr(default=None)  # the last input's embedding
    # the id was derived from the content (not chosen): it follows the content when it changes
    _derived_id: bool = PrivateAttr(default=False)

    @model_validator(mode="before")
    @classmethod
    def _refuse_secrets(cls, data: Any) -> Any:
        if isinstance(data, dict):
            version = data.get("schema_version", SCHEMA_VERSION)
            if isinstance(version, int) and version > SCHEMA_VERSION:
                raise ValueError(
                    f"bundle schema version {version} is newer than this foster reads "
                    f"({SCHEMA_VERSION}); upgrade foster"
                )
            _refuse_unshippable({key: _plain(value) for key, value in data.items()})
        return data

    @model_validator(mode="after")
    def _check(self) -> Bundle:
        if not self.targets:
            raise ValueError("a bundle names at least one target model")
        vectors = self.selection.vectors
        if vectors is not None and vectors.model != self.selection.embedding_model:
            raise ValueError(
                f"selection.vectors were made with {vectors.model!r}, not the bundle's embedding "
                f"{self.selection.embedding_model!r}"
            )
        if self.completion_template:
            try:
                templates.from_string(self.completion_template)
            except jinja2.TemplateSyntaxError as exc:
                raise ValueError(f"completion_template does not parse: {exc}") from exc
        if not self.id or self.id == self.content_hash():
            self._derived_id = True
        if not self.id:
            self.id = self.content_hash()
        return self

    def __eq__(self, other: object) -> bool:
        # Field values only: the private embedding cache and its lock are not the bundle.
        if not isinstance(other, Bundle):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]

    def content_hash(self) -> str:
        """A short stable hash of what the bundle renders (not its report or provenance)."""
        content = self.model_dump(include={
            "schema_version", "teacher", "targets", "system_prompt", "examples",
            "selection", "output_contract", "completion_template",
        }, exclude={"selection": {"vectors"}})  # fmt: skip  (vectors follow from the examples)
        if content["selection"].get("recall_above") is None:  # ids of bundles from before the rule stay put
            content["selection"].pop("recall_above", None)
        blob = json.dumps(content, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]

    # --- rendering --------------------------------------------------------------------------------

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Texts embedded with the model the bundle names (unit rows)."""
        from foster.prompts.embedding import embedder

        return embedder(self.selection.embedding_model)(texts)

    def _vectors(self) -> np.ndarray:
        key = tuple(example.input for example in self.examples)
        model = self.selection.embedding_model
        with self._vectors_lock:
            if self._example_vectors is None or self._example_vectors_key != (model, key):
                stored = self.selection.vectors
                if (stored is not None and stored.model == model and stored.count == len(key)
                        and stored.inputs_hash == inputs_hash(key)):
                    self._example_vectors = stored.array()
                else:  # no vectors stored, or the pool was edited after they were
                    self._example_vectors = self._embed(list(key))
                self._example_vectors_key = (model, key)
            return self._example_vectors

    def attach_vectors(self) -> Bundle:
        """Store the pool's embeddings, made with the bundle's embedding model, in a knn bundle
        (done by `save()`); returns self."""
        if self.selection.kind == "knn" and self.examples:
            texts = [example.input for example in self.examples]
            model = self.selection.embedding_model
            stored = self.selection.vectors
            if (stored is None or stored.model != model or stored.count != len(texts)
                    or stored.inputs_hash != inputs_hash(texts)):
                self.selection.vectors = PoolVectors.from_array(self._vectors(), texts, model)
        return self

    def with_embedding(self, model: str) -> Bundle:
        """A copy whose knn examples are retrieved by `model`: the packaged all-MiniLM-L6-v2 or a
        litellm provider/model embedding (`openai/text-embedding-3-small`; its key comes from the
        provider's environment variable). The pool is embedded with it on `save()`. Another model
        picks other neighbours, so the copy carries no evaluation report until it is measured again."""
        try:
            check_embedding_provider(model)
        except ValueError as exc:
            raise ValueError(f"selection.embedding_model: {exc}") from None
        data = self.model_dump()
        if data["selection"]["embedding_model"] == model:
            return Bundle.model_validate(data)
        before = data["selection"]["embedding_model"]
        data["selection"].update(embedding_model=model, vectors=None)
        data["report"] = None
        note = f"embedding changed from {before} to {model}; not evaluated with it"
        data["provenance"]["notes"] = "; ".join(n for n in (data["provenance"]["notes"], note) if n)
        if self._derived_id:
            data["id"] = ""  # the id follows the content, which now names another embedding
        return Bundle.model_validate(data)

    def _similarities(self, user_input: str) -> np.ndarray:
        """Cosine of the input to every pool example (knn), with the input's embedding kept for the
        next call on the same input (recall() then select_examples() embed it once)."""
        with self._vectors_lock:
            cached = self._query if self._query is not None and self._query[0] == user_input else None
        pool = self._vectors()
        query = cached[1] if cached else self._embed([user_input])[0]
        with self._vectors_lock:
            self._query = (user_input, query)
        if pool.shape[1] != query.shape[0]:
            raise ValueError(
                f"selection.vectors hold {pool.shape[1]}-dimensional rows but {self.selection.embedding_model!r} "
                f"embeds the input in {query.shape[0]} dimensions: the pool was not embedded by this model"
            )
        return pool @ query

    def select_examples(self, user_input: str) -> list[Example]:
        """The examples this input is shown: all in order (fixed), or the k nearest by embedding
        (knn) ordered least to most similar, so the closest sits next to the input. Ties keep
        pool order, so the choice is deterministic."""
        if self.selection.kind == "fixed" or not self.examples:
            return list(self.examples)
        similarity = self._similarities(user_input)
        ranked = sorted(range(len(self.examples)), key=lambda i: (-float(similarity[i]), i))
        nearest = ranked[: self.selection.k]
        return [self.examples[i] for i in reversed(nearest)]

    def nearest(self, user_input: str) -> tuple[Example, float] | None:
        """The pool example nearest to the input and its cosine (knn bundles with a pool; else None)."""
        if self.selection.kind != "knn" or not self.examples:
            return None
        similarity = self._similarities(user_input)
        i = int(np.argmax(similarity))  # the first of equals: pool order, as select_examples ranks them
        return self.examples[i], float(similarity[i])

    def recall(self, user_input: str) -> str | None:
        """The recorded answer served for this input without asking the target: the nearest pool
        example's output when its cosine is at least `selection.recall_above`; None otherwise (and
        always for a bundle without the rule). Evaluation and serving both honour it (agent/target.py)."""
        if self.selection.recall_above is None:
            return None
        found = self.nearest(user_input)
        if found is None or found[1] < self.selection.recall_above:
            return None
        return found[0].output

    def messages(self, user_input: str) -> list[dict[str, str]]:
        """Chat messages for a chat target: system, one user/assistant pair per example, input."""
        messages = []
        if self.system_prompt:
            messages.append({"role": "system", "content": self.system_prompt})
        for example in self.select_examples(user_input):
            messages.append({"role": "user", "content": example.input})
            messages.append({"role": "assistant", "content": example.output})
        messages.append({"role": "user", "content": user_input})
        return messages

    def prompt(self, user_input: str) -> str:
        """A completion prompt for a base target (ends with "Output:"; use with `stop`)."""
        source = self.completion_template or default_completion_template()
        return templates.render_string(
            source,
            system_prompt=self.system_prompt,
            examples=self.select_examples(user_input),
            input=user_input,
            output_contract=self.output_contract,
        )

    @property
    def stop(self) -> list[str]:
        """Stop sequences for `prompt()`: the next "Input:", a newline for labels, and a blank
        line unless some example's output itself contains one."""
        stop = ["\nInput:"]
        if self.output_contract.format == "label":
            stop.append("\n")
        elif not any("\n\n" in example.output for example in self.examples):
            stop.append("\n\n")
        return stop

    def normalize(self, text: str | None) -> str:
        """The answer `text` gives under this bundle's output contract."""
        return normalize_answer(text, self.output_contract)

    def lint(self, **known: Any) -> list[Any]:
        """Problems that keep this bundle from shipping (see prompts/lint.py; `known` sharpens them)."""
        from foster.prompts.lint import lint

        return lint(self, **known)

    # --- size ---------------------------------------------------------------------------------------

    def token_counts(
        self, local_counter: Callable[[str], int] | None = None, local_name: str | None = None
    ) -> dict[str, int]:
        """The bundle's size in tokens per encoding (o200k_base, cl100k_base, and the target's own
        tokenizer as `local_name` or "local" when a counter is given).

        Counted: the system prompt plus the examples a call carries, message contents only (chat
        template overhead depends on the target). Fixed selection counts every example; knn counts
        min(k, pool) examples of the pool's average size, since which k depends on the input.
        """
        from foster.prompts.tokens import ENCODINGS, count

        counters: dict[str, Callable[[str], int]] = {
            name: (lambda text, name=name: count(text, name)) for name in ENCODINGS
        }
        if local_counter is not None:
            counters[local_name or "local"] = local_counter
        pieces = [f"{example.input}\n{example.output}" for example in self.examples]
        result = {}
        for name, counter in counters.items():
            total = counter(self.system_prompt) if self.system_prompt else 0
            sizes = [counter(piece) for piece in pieces]
            if self.selection.kind == "knn" and sizes:
                total += round(min(self.selection.k, len(sizes)) * sum(sizes) / len(sizes))
            else:
                total += sum(sizes)
            result[name] = int(total)
        return result

    # --- files --------------------------------------------------------------------------------------

    @staticmethod
    def _paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
        path = Path(path)
        if path.suffix in (".json", ".md"):
            path = path.with_suffix("")
        return path.with_name(path.name + ".json"), path.with_name(path.name + ".md")

    def to_json(self) -> str:
        """The bundle as JSON; refuses if a key or URL was assigned after construction."""
        if self._derived_id:  # e.g. `targets` narrowed after loading: one id never names two contents
            self.id = self.content_hash()
        _refuse_unshippable(self.model_dump())
        return self.model_dump_json(indent=2) + "\n"

    def to_markdown(self, json_name: str | None = None) -> str:
        """The readable sidecar: teacher, targets, prompt, examples, contract, report, provenance."""
        try:
            sizes: dict[str, int] | None = self.token_counts()
        except Exception:  # a missing offline encoding must not stop a save
            sizes = None
        return templates.render(
            "bundle",
            "markdown",
            bundle=self,
            token_counts=sizes,
            report_rows=_report_rows(self.report),
            fence=_fence,
            json_name=json_name or (self.name or self.id) + ".json",
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write <stem>.json and <stem>.md (each atomically); returns the JSON path."""
        json_path, md_path = self._paths(path)
        json_path.parent.mkdir(parents=True, exist_ok=True)
        self.attach_vectors()
        text = self.to_json()
        markdown = self.to_markdown(json_name=json_path.name)
        _atomic_write(json_path, text)
        _atomic_write(md_path, markdown)
        return json_path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Bundle:
        """Read a bundle from its .json file (or the stem, or the .md sidecar's name); `~` and
        relative paths work. A bad file raises BundleLoadError naming the file and the field."""
        given = Path(path).expanduser()
        json_path, _ = cls._paths(given)
        if not json_path.exists() and given.is_file():
            json_path = given
        json_path = json_path.resolve()
        if not json_path.is_file():
            raise FileNotFoundError(f"no bundle at {json_path} (from {str(path)!r})")
        try:
            return cls.model_validate_json(json_path.read_text(encoding="utf-8"))
        except ValidationError as exc:
            raise BundleLoadError(json_path, exc) from None


class BundleLoadError(ValueError):
    """A bundle file that does not validate: says which file and which field."""

    def __init__(self, path: Path, error: ValidationError) -> None:
        self.path = path
        self.errors = error.errors(include_url=False)
        problems = []
        for item in self.errors:
            field = ".".join(str(part) for part in item.get("loc", ())) or "(the document)"
            if item.get("type") == "json_invalid":
                field = "(JSON syntax)"
            problems.append(f"{field}: {str(item.get('msg', '')).removeprefix('Value error, ')}")
        super().__init__(f"{path}: not a valid bundle: " + "; ".join(problems))


def _fence(text: str) -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}text\n{text}\n{ticks}"


def _report_rows(report: dict[str, Any] | None, limit: int = 40) -> list[tuple[str, str]]:
    """Scalar entries of the report (and of its nested dicts, one level down) for a table."""
    rows: list[tuple[str, str]] = []
    for key, value in (report or {}).items():
        if isinstance(value, dict):
            for sub, item in value.items():
                if isinstance(item, (str, int, float, bool)) or item is None:
                    rows.append((f"{key}.{sub}", _cell(item)))
        elif isinstance(value, (str, int, float, bool)) or value is None:
            rows.append((str(key), _cell(value)))
    return rows[:limit]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    else:
        text = str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
