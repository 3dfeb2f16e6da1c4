"""Build the CLINC150 travel domain's data files from the public dataset (CC BY 3.0).

    python examples/clinc_travel/make_data.py /path/to/oos-eval/data/data_full.json

The source is clinc/oos-eval's `data/data_full.json` (Larson et al., EMNLP 2019; see data/LICENSE
and README.md for the attribution). The travel domain's 15 intents plus the out-of-scope class
`oos` make a closed-label task whose labels a base model cannot guess (`carry_on`, `plug_type`,
`oos`, ...). The files are committed, so nothing here runs at install or test time; the script
documents, and reproduces byte for byte, how they were cut.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SEED = 150

# clinc/oos-eval data/domains.json, "travel"
TRAVEL = ["plug_type", "travel_notification", "translate", "flight_status", "international_visa", "timezone",
          "exchange_rate", "travel_suggestion", "travel_alert", "vaccines", "lost_luggage", "book_flight",
          "book_hotel", "carry_on", "car_rental"]
OOS = "oos"
LABELS = TRAVEL + [OOS]


def cut(source: dict) -> dict[str, list[dict]]:
    """train: what the teacher was tuned on; inputs: the team's history (CLINC's validation split);
    gold: fresh inputs with their gold labels (CLINC's test split) for figures on unseen data."""
    rng = random.Random(SEED)

    def pick(rows, n=None):
        rows = [{"input": t, "output": y} for t, y in rows if y in LABELS]
        return rng.sample(rows, n) if n is not None and n < len(rows) else rows

    per_intent: dict[str, list] = {}
    for t, y in source["train"]:
        if y in TRAVEL:
            per_intent.setdefault(y, []).append((t, y))
    train = [r for y in TRAVEL for r in pick(per_intent[y], 40)] + pick(source["oos_train"])
    inputs = pick([r for r in source["val"] if r[1] in TRAVEL]) + pick(source["oos_val"])
    gold = pick([r for r in source["test"] if r[1] in TRAVEL]) + pick(source["oos_test"], 150)
    for rows in (train, inputs, gold):
        rng.shuffle(rows)
    return {"train": train, "inputs": [{"input": r["input"]} for r in inputs], "gold": gold}


def write(files: dict[str, list[dict]]) -> None:
    DATA.mkdir(exist_ok=True)
    for name, rows in files.items():
        with (DATA / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}.jsonl: {len(rows)} rows")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    write(cut(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
