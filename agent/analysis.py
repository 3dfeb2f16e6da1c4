"""What the UI shows about a run beyond its files, computed here so ui/ only renders: the answer
distributions behind the calibration plot, the probes' map (placed by their embeddings, coloured by the
clusters characterize found), and one input asked live of the teacher and of every evaluated variant."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def calibration(grid: dict, best_key: str | None, max_answers: int = 8, max_columns: int = 5) -> list[dict]:
    """Answer distributions aggregated over held-out probes: the teacher's (sampled), each column's sampled
    distribution where evaluation sampled it, else its greedy answers. Records {source, answer, p}."""
    rows, columns = grid.get("rows") or [], grid.get("columns") or []
    if not rows:
        return []
    sources: dict[str, dict[str, float]] = {"teacher": {}}
    for row in rows:
        for answer, p in ((row.get("teacher") or {}).get("dist") or {}).items():
            sources["teacher"][answer] = sources["teacher"].get(answer, 0.0) + p / len(rows)
    ordered = sorted(columns, key=lambda c: (c["key"] != best_key, c.get("variant") != "zero-shot"))[:max_columns]
    for c in ordered:
        sampled = [row["answers"].get(c["key"] + "::dist") for row in rows]
        if all(isinstance(d, dict) for d in sampled):
            label, dists = f"{c.get('variant')} (sampled)", sampled
        else:
            label = f"{c.get('variant')} (greedy)"
            dists = [{str((row["answers"].get(c["key"]) or {}).get("answer", "")): 1.0} for row in rows]
        if len({x.get("target") for x in columns}) > 1:
            label += f" · {c.get('target')}"
        agg: dict[str, float] = {}
        for d in dists:
            for answer, p in d.items():
                agg[answer] = agg.get(answer, 0.0) + p / len(rows)
        sources[label] = agg
    top = sorted(sources["teacher"], key=lambda a: -sources["teacher"][a])[:max_answers]
    records = []
    for source, dist in sources.items():
        other = 0.0
        for answer, p in dist.items():
            if answer in top:
                records.append({"source": source, "answer": answer, "p": round(p, 4)})
            else:
                other += p
        if other > 1e-9:
            records.append({"source": source, "answer": "(other)", "p": round(other, 4)})
    return records


def _project(texts: list[str]):
    """2-D PCA of the probes' embeddings (the store's MiniLM; TF-IDF when it is unavailable)."""
    import numpy as np

    try:
        from foster.prompts.embedding import embed

        vectors = embed(texts)
    except Exception:  # the map still draws without the embedding model
        from sklearn.feature_extraction.text import TfidfVectorizer

        vectors = TfidfVectorizer().fit_transform(texts).toarray()
    vectors = np.asarray(vectors, dtype=np.float64)
    if len(vectors) < 2:
        return np.zeros((len(vectors), 2))
    centred = vectors - vectors.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    if coords.shape[1] < 2:
        coords = np.hstack([coords, np.zeros((len(coords), 1))])
    return coords


def probe_map(grid: dict) -> list[dict]:
    """One point per held-out probe: PCA x/y, its cluster (characterize's, as evaluation wrote it into the
    grid; -1 when a grid predates clusters), disagreement (share of columns not giving the teacher's
    answer) and input."""
    rows, keys = grid.get("rows") or [], [c["key"] for c in grid.get("columns") or []]
    if not rows:
        return []
    coords = _project([str(r.get("input", "")) for r in rows])
    points = []
    for row, (x, y) in zip(rows, coords):
        answers = [row["answers"].get(k) for k in keys if row["answers"].get(k) is not None]
        disagreement = sum(1 for a in answers if not a.get("agree")) / len(answers) if answers else 0.0
        cluster = row.get("cluster")
        points.append({"x": float(x), "y": float(y), "cluster": -1 if cluster is None else int(cluster),
                       "disagreement": round(disagreement, 3), "input": str(row.get("input", ""))})
    return points


def ask_everyone(config: dict, columns: list[dict], bundle_paths: dict[str, Path], text: str,
                 max_workers: int = 4) -> list[dict]:
    """`text` asked live, greedily, of the run's teacher and of every grid column (its bundle on its target),
    through the run's own models (models file and endpoints). Rows {role, model, variant, answer, agree}."""
    from foster.agent import gateway
    from foster.agent.target import ask
    from foster.prompts.answers import answer_key
    from foster.prompts.bundle import Bundle

    models = gateway.Models.for_run(config.get("models_file"), config.get("endpoints"))
    max_tokens = int(config.get("max_new_tokens") or 24)

    def complete(model: str, **kw):
        return gateway.complete(model, models=models, **kw)

    jobs: list[tuple[str, str, str, Any]] = [("variant", c["target"], c.get("variant", ""), bundle_paths[c["bundle_id"]])
                                             for c in columns if c.get("bundle_id") in bundle_paths]
    teacher = config.get("teacher")
    if teacher:
        jobs.insert(0, ("teacher", teacher, "teacher", None))

    def run(job):
        role, model, _, path = job
        try:
            if role == "teacher":
                return complete(model, messages=[{"role": "user", "content": text}], temperature=0.0,
                                max_tokens=max_tokens).text, None
            bundle = Bundle.load(path)
            return ask(bundle, model, text, complete, temperature=0.0, max_tokens=max_tokens).text, bundle
        except Exception as exc:  # one unreachable model does not blank the table
            return f"error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", None

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        results = list(pool.map(run, jobs))
    teacher_text = results[0][0] if teacher else None
    out = []
    for (role, model, variant, _), (answer, bundle) in zip(jobs, results):
        agree = None
        if role != "teacher" and teacher_text is not None and bundle is not None:
            contract = bundle.output_contract
            agree = answer_key(answer, contract) == answer_key(teacher_text, contract)
        out.append({"role": role, "model": model, "variant": variant, "answer": answer, "agree": agree})
    return out
