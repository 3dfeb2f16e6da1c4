"""A finished run on disk, as the agent writes it, and a live server on 127.0.0.1 for the service tests."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from foster.agent.state import NODES

RUN_ID = "fixture-run"
TEACHER = "local/fake-teacher"
TARGET = "local/fake-target"
LABELS = ["BILLING", "ACCOUNT", "SHIPPING", "OTHER"]
PROBES = [
    ("I was charged twice for my order", "BILLING"),
    ("please refund the extra fee", "BILLING"),
    ("my card was billed after I cancelled", "BILLING"),
    ("I cannot log in to my account", "ACCOUNT"),
    ("reset my password please", "ACCOUNT"),
    ("my account is locked", "ACCOUNT"),
    ("where is my parcel", "SHIPPING"),
    ("the delivery is a week late", "SHIPPING"),
    ("do you sell gift cards", "OTHER"),
    ("what is the weather like", "OTHER"),
]


def label_for(text: str) -> str:
    low = text.lower()
    for words, label in ((("charg", "refund", "bill"), "BILLING"), (("log in", "password", "account"), "ACCOUNT"),
                         (("parcel", "deliver"), "SHIPPING")):
        if any(w in low for w in words):
            return label
    return "OTHER"


def make_bundles(run_dir: Path, target: str = TARGET) -> dict:
    from foster.prompts.bundle import Bundle, Example, OutputContract

    contract = OutputContract(format="label", answers=LABELS)
    zero = Bundle(teacher=TEACHER, targets=[target], system_prompt="Route the support ticket.", output_contract=contract)
    best = Bundle(
        teacher=TEACHER,
        targets=[target],
        name="ticket-router",
        system_prompt="Route the support ticket to one of: BILLING, ACCOUNT, SHIPPING, OTHER. Answer with the label only.",
        examples=[Example(input=t, output=label) for t, label in PROBES[::3]],
        output_contract=contract,
    )
    zero_path = zero.save(run_dir / "bundles" / "zero-shot-r1")
    best_variant_path = best.save(run_dir / "bundles" / "gepa-t0-r1")
    best.report = {"run_id": run_dir.name, "fidelity": 0.9, "target": target}
    best_path = best.save(run_dir / "best_bundle")
    return {"zero": zero, "best": best, "zero_path": zero_path, "best_variant_path": best_variant_path, "best_path": best_path}


def make_run(home: Path, run_id: str = RUN_ID, status: str = "done", target: str = TARGET) -> dict:
    """A finished run under home/runs/<run_id>: config, status, events, grid, report and bundles."""
    run_dir = home / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    made = make_bundles(run_dir, target)
    zero, best = made["zero"], made["best"]
    (run_dir / "config.json").write_text(json.dumps({"teacher": TEACHER, "targets": [target], "threshold": 0.9,
                                                     "max_new_tokens": 8}))
    columns = [
        {"key": f"{target}::zero-shot", "target": target, "variant": "zero-shot", "bundle_id": zero.id, "fidelity": 0.3,
         "ceiling": 0.95, "calibration_gap": 0.41, "tokens": 6, "latency_s": 0.012, "cost": 0.0},
        {"key": f"{target}::gepa-t0", "target": target, "variant": "gepa-t0", "bundle_id": best.id, "fidelity": 0.9,
         "ceiling": 0.95, "calibration_gap": 0.08, "tokens": 64, "latency_s": 0.015, "cost": 0.0},
    ]
    rows = []
    for i, (text, label) in enumerate(PROBES):
        zero_answer = label if i % 3 == 0 else "OTHER"
        best_answer = label if i != 7 else "OTHER"
        rows.append({
            "probe_id": f"p-{i:03d}",
            "input": text,
            "cluster": i % 3,
            "teacher": {"mode": label, "dist": {label: 0.9, "OTHER": 0.1} if label != "OTHER" else {"OTHER": 1.0}},
            "answers": {
                columns[0]["key"]: {"answer": zero_answer, "agree": zero_answer == label, "score": float(zero_answer == label)},
                columns[1]["key"]: {"answer": best_answer, "agree": best_answer == label, "score": float(best_answer == label)},
                columns[1]["key"] + "::dist": {best_answer: 0.8, "OTHER": 0.2} if best_answer != "OTHER" else {"OTHER": 1.0},
            },
        })
    (run_dir / "grid.json").write_text(json.dumps({"columns": columns, "rows": rows}))
    report = {"run_id": run_id, "teacher": TEACHER, "verdict": "threshold met", "threshold": 0.9, "ceiling": 0.95,
              "answer_kind": "closed", "held_out": len(rows), "train": 20,
              "targets": {target: {"best": {"variant": "gepa-t0", "fidelity": 0.9, "bundle_id": best.id},
                                   "zero_shot": {"fidelity": 0.3}, "calibration_gap": 0.08}},
              "best_bundle": {"target": target, "variant": "gepa-t0", "fidelity": 0.9, "bundle_id": best.id,
                              "path": str(made["best_path"])}}
    (run_dir / "report.json").write_text(json.dumps(report))
    now = time.time()
    nodes = [n for n in NODES if n != "lora"]  # a run whose prompting met the threshold
    (run_dir / "status.json").write_text(json.dumps({
        "run_id": run_id, "status": status, "node": "bundle" if status == "done" else "optimize", "round": 1,
        "progress": {n: 1.0 for n in nodes} if status == "done" else {"probe": 1.0, "characterize": 1.0, "mine": 1.0, "optimize": 0.4},
        "started_at": now - 60, "finished_at": now if status == "done" else None, "error": None,
        "verdict": "threshold met" if status == "done" else None,
        "best_bundle": str(made["best_path"]) if status == "done" else None,
        "teacher": TEACHER, "targets": [target], "figures": {},
    }))
    with open(run_dir / "events.jsonl", "w") as handle:
        for i, node in enumerate(nodes):
            for kind in ("start", "end"):
                handle.write(json.dumps({"ts": now - 60 + i, "run_id": run_id, "node": node, "kind": kind,
                                         "message": f"{node} {kind}", "progress": 1.0 if kind == "end" else 0.0}) + "\n")
        if status == "done":
            handle.write(json.dumps({"ts": now, "run_id": run_id, "node": None, "kind": "done", "message": "threshold met",
                                     "progress": None}) + "\n")
    return {"run_dir": run_dir, **made}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app, timeout: float = 30.0):
    """Serve `app` with uvicorn in a background thread on a free 127.0.0.1 port; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
