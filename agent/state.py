"""What a caller gives the graph (InputState), what the graph carries (State), and the shapes inside it.

The payloads are TypedDicts: they stay plain JSON in the checkpoint and in the run's files, and the
fields are written here once instead of in comments beside each `list[dict]`.
"""
from __future__ import annotations

from typing import Any, Literal, TypedDict

# The pipeline's nodes in the order a run meets them; agent/graph.py wires exactly these, the UI and the
# run registry show progress per node from this list.
NODES = ("probe", "characterize", "mine", "optimize", "evaluate", "decide", "lora", "bundle")

Split = Literal["train", "heldout"]


class _ProbeRequired(TypedDict):
    id: str  # stable hash of (run, text): the same text is the same probe after a resume
    text: str
    kind: str  # historical | record | corpus | variation | edge | adjacent | ambiguous | out_of_domain
    split: Split
    round: int
    gold: str | None  # recorded teacher output or corpus label; None on the live path


class Probe(_ProbeRequired, total=False):
    cluster: int  # set by characterize


class Observation(TypedDict):
    """One teacher sample of one probe."""

    t: float  # temperature
    i: int  # sample index at that temperature
    output: str


class ProbeSpec(TypedDict):
    """The teacher's behaviour on one probe."""

    mode: str  # the normalized most frequent answer (closed) or the greedy answer (free text)
    dist: dict[str, float]
    entropy: float
    samples: list[str]
    cluster: int
    sampled: bool  # in the stratified subset sampled at every temperature (else: its greedy answer only)


class ClusterSummary(TypedDict):
    cluster: int
    size: int
    answers: dict[str, int]  # the cluster's five most frequent teacher answers
    examples: list[str]


class Spec(TypedDict):
    """The behavioural spec characterize writes (and exports as an acceptance test)."""

    answer_kind: Literal["closed", "free"]
    format: Literal["label", "text"]
    inventory: dict[str, int]  # closed answers and how often the teacher gave each
    probes: dict[str, ProbeSpec]  # probe id -> its teacher behaviour
    clusters: list[ClusterSummary]
    refusal_rate: float
    hedge_rate: float
    ceiling: float
    ceiling_heldout: float | None
    ceiling_method: str
    ceiling_n: int  # probes the ceiling is measured on (the sampled ones)
    ceiling_heldout_n: int
    n_sampled: int
    n_probes: int
    n_heldout: int
    probe_kinds: dict[str, int]
    probing: dict[str, Any]  # State.probing as characterize saw it


class _VariantRequired(TypedDict):
    name: str
    path: str  # the exported bundle's JSON: evaluation loads it from disk


class Variant(_VariantRequired, total=False):
    baseline: bool  # zero-shot and hand-written prompts are compared against, never chosen
    calls_used: int  # optimized variants: target calls the optimizer spent


class DivergenceCluster(TypedDict):
    cluster: int
    fidelity: float
    size: int
    examples: list[str]


class TargetSummary(TypedDict, total=False):
    """One target's figures in the evaluation (agent/evaluate.py evaluate_target)."""

    zero_shot: dict | None
    hand_written: dict | None
    nearest_copy: dict
    best: dict  # the best non-baseline variant's row: variant, bundle_id, path, fidelity, tokens, latency_s, ...
    variants: list[dict]
    ceiling: float
    calibration_gap: float | None
    sampled_agreement: float | None
    divergence_clusters: list[DivergenceCluster]
    fidelity_method: str


class Evaluation(TypedDict, total=False):
    """The latest report (report.json before the bundle node adds usage, verdict and wall time)."""

    run_id: str
    teacher: str
    path: Literal["live", "records", "relabel"]
    answer_kind: Literal["closed", "free"]
    fidelity_method: str
    threshold: float
    round: int
    ceiling: float
    ceiling_all_probes: float
    ceiling_method: str
    refusal_rate: float
    hedge_rate: float
    held_out: int
    train: int
    probe_kinds: dict[str, int]
    targets: dict[str, TargetSummary]
    notes: list[str]
    lora: dict  # the LoRA fallback's section (agent/lora/node.py)
    best_artifact: dict  # "bundle" or "bundle + adapter"


class Best(TypedDict, total=False):
    """The run's best artifact so far."""

    target: str  # the model that serves it (with @adapter for a LoRA)
    variant: str
    path: str
    fidelity: float
    bundle_id: str
    adapter: str  # LoRA: the adapter directory
    base_target: str  # LoRA: the target the adapter was trained on


class InputState(TypedDict):
    run_id: str


class State(InputState, total=False):
    round: int
    probes: list[Probe]
    teacher: dict[str, list[Observation]]  # probe id -> the teacher's samples
    spec: Spec
    candidates: list[Variant]  # mined variants
    variants: dict[str, list[Variant]]  # target -> variants incl. optimized ones
    evaluation: Evaluation
    history: list[float]  # best held-out fidelity per round
    best: Best
    verdict: str
    verdict_reason: str | None  # why no further round ran, when that is not the threshold
    next: Literal["probe", "lora", "bundle"]  # decide's choice (see agent/decide.py route)
    stop_reason: str | None
    probing: dict[str, Any]  # agent/probe.py: history kept and left out, calls/s per model, sampled probes
    usage: dict[str, dict[str, Any]]
    node_seconds: dict[str, float]
