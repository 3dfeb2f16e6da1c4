"""Generate the house-style rewrite data deterministically from templates (no LLM).

    python examples/house_style/make_data.py

A broadband provider's support desk rewrites every customer message into a one-line ticket
summary in its house style (README.md lists the conventions). Every summary is a function of the
message alone, so a small fine-tune can learn it; a base model cannot guess it.

Writes data/train.jsonl (input, output), data/inputs.jsonl (40 historical inputs, no outputs),
data/history.jsonl (300 more historical inputs, no outputs), data/history_more.jsonl (600 after those)
and data/gold.jsonl (held-out pairs used
only to grade the teacher). Splits are disjoint by text.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SEED = 20250301

# history_more comes after history, and history after the rest, so the earlier splits (and the teacher trained on train.jsonl) stay byte-identical
SIZES = {"gold": 40, "inputs": 40, "train": 300, "history": 300, "history_more": 600}

# Slot values as the customer writes them -> as the house style writes them.
DAYS = {"2 days": "2d", "3 days": "3d", "4 days": "4d", "a week": "7d", "10 days": "10d", "two weeks": "14d"}
AMOUNTS = {"$45": "USD 45.00", "$12.50": "USD 12.50", "$89.99": "USD 89.99", "€30": "EUR 30.00",
           "€19.90": "EUR 19.90", "£60": "GBP 60.00", "£7.25": "GBP 7.25", "$120": "USD 120.00"}
DEVICES = {"Hub 3": "hub3", "Hub 4": "hub4", "Mesh Pod": "meshpod", "TV box": "tvbox", "fibre modem": "modem"}
WEEKDAYS = {"Monday": "mon", "Tuesday": "tue", "Wednesday": "wed", "Thursday": "thu", "Friday": "fri",
            "Saturday": "sat"}
MONTHS = {"January": "jan", "February": "feb", "March": "mar", "April": "apr", "May": "may", "June": "jun",
          "September": "sep", "October": "oct"}
DATES = {"March 3": "03-03", "April 14": "04-14", "May 28": "05-28", "June 1": "06-01", "July 19": "07-19",
         "August 9": "08-09", "October 22": "10-22"}
PLANS = ["150", "300", "500", "900"]
SPEEDS = ["2", "5", "12", "40"]
TOWNS = ["Leeds", "Bristol", "York", "Cardiff", "Derby", "Bath", "Hull", "Luton"]
NAMES = ["Maria", "Tom", "Priya", "Jonas", "Aiko", "Sam", "Leila", "Chris", "Dana", "Omar"]

# (area, what the customer writes, the house-style summary). {x} is the slot as written,
# {x_} the slot in house style.
TEMPLATES: list[tuple[str, str, str]] = [
    ("NET", "My internet has been down for {days}.", "restore outage {days_}"),
    ("NET", "The wifi drops every few minutes and has done for {days}.", "fix intermittent drops {days_}"),
    ("NET", "I'm paying for {plan} Mbps but only getting {speed} Mbps.", "fix slow speed {speed}/{plan} Mbps"),
    ("NET", "No internet at all, the light on the {device} is red.", "restore outage, red light on {device_}"),
    ("NET", "The whole street has no broadband, is there an outage in {town}?", "confirm area outage {town}"),
    ("NET", "Wifi doesn't reach the upstairs rooms at all.", "improve wifi coverage"),
    ("NET", "Speed drops to {speed} Mbps every evening, I pay for {plan}.", "fix evening slowdown {speed}/{plan} Mbps"),
    ("BILL", "I was charged {amount} twice this month.", "reverse double charge {amount_}"),
    ("BILL", "My bill went up to {amount} without any warning.", "explain price rise to {amount_}"),
    ("BILL", "Please refund the {amount} late fee, I paid on time.", "waive late fee {amount_}"),
    ("BILL", "I cancelled last month but you still took {amount}.", "refund post-cancel charge {amount_}"),
    ("BILL", "Can I switch to paying by direct debit?", "set up direct debit"),
    ("BILL", "I never got a bill for {month}.", "resend {month_} invoice"),
    ("HW", "My {device} keeps restarting on its own.", "replace rebooting {device_}"),
    ("HW", "The {device} you sent arrived dead, no lights at all.", "replace dead-on-arrival {device_}"),
    ("HW", "Can I get a second {device} for the garage?", "quote extra {device_}"),
    ("HW", "How do I send back the old {device} now that I've left?", "send return bag for {device_}"),
    ("HW", "The power cable for my {device} is broken.", "send power cable for {device_}"),
    ("VISIT", "The engineer didn't turn up on {weekday} for my appointment.", "rebook missed visit {weekday_}"),
    ("VISIT", "Can I move my installation appointment to {weekday}?", "move install to {weekday_}"),
    ("VISIT", "Please cancel the technician visit booked for {weekday}.", "cancel visit {weekday_}"),
    ("VISIT", "The engineer on {weekday} left a cable lying across my garden.", "send crew to tidy cable, visit {weekday_}"),
    ("MOVE", "I'm moving to {town} on {date}, can I take my broadband with me?", "transfer service to {town} {date_}"),
    ("MOVE", "We're moving house next month, what happens to my contract?", "explain contract on move"),
    ("MOVE", "Our new address is in {town}, please update my account.", "update address to {town}"),
    ("MOVE", "Can you connect the new flat in {town} before {date}?", "book new line in {town} by {date_}"),
    ("ACCT", "I can't log in to my account online.", "reset portal login"),
    ("ACCT", "Please cancel my contract, I'm leaving.", "process cancellation"),
    ("ACCT", "Please add my partner {name} as an account holder.", "add holder {name}"),
    ("ACCT", "Change the email on my account to my new one.", "update contact email"),
    ("ACCT", "I want to complain about how I was treated on the phone.", "log complaint about call"),
]

# How customers quote their account number; the house style always writes `ref #<digits>`.
ACCOUNT_FORMS = [" Account {acct}.", " My account number is {acct}.", " (acct {acct})", " Acct no. {acct}.",
                 " Customer number {acct}."]
GREETINGS = ["", "", "", "Hi, ", "Hello, ", "Hey there, ", "Good morning, ", "Hi team, "]
CALM = ["", "", " Thanks.", " Thank you!", " Cheers, {name}", " - {name}", " Any help appreciated."]
# Urgency cues: the house style appends `; P1` to the summary.
URGENT = [" Fix this asap!!", " This is urgent, I work from home.", " Please sort it today!",
          " URGENT please.", " I need this fixed now!"]


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 2)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:] if rng.random() < 0.5 else word[:i] + word[i + 1:]


def noisy(text: str, rng: random.Random, protected: set[str]) -> str:
    """A typo now and then (never inside a slot value) and sometimes all lower case."""
    words = text.split(" ")
    for _ in range(rng.choice([0, 0, 0, 1, 1])):
        j = rng.randrange(len(words))
        if len(words[j]) > 5 and words[j].isalpha() and words[j] not in protected:
            words[j] = _typo(words[j], rng)
    text = " ".join(words)
    return text.lower() if rng.random() < 0.1 else text


def fill(rng: random.Random) -> tuple[dict, dict]:
    """(slots as written, slots in house style)."""
    days, amount, device = rng.choice(list(DAYS)), rng.choice(list(AMOUNTS)), rng.choice(list(DEVICES))
    weekday, month, date = rng.choice(list(WEEKDAYS)), rng.choice(list(MONTHS)), rng.choice(list(DATES))
    written = {"days": days, "amount": amount, "device": device, "weekday": weekday, "month": month, "date": date,
               "plan": rng.choice(PLANS), "speed": rng.choice(SPEEDS), "town": rng.choice(TOWNS),
               "name": rng.choice(NAMES), "signer": rng.choice(NAMES)}
    house = {**written, "days_": DAYS[days], "amount_": AMOUNTS[amount], "device_": DEVICES[device],
             "weekday_": WEEKDAYS[weekday], "month_": MONTHS[month], "date_": DATES[date]}
    return written, house


def render(template: tuple[str, str, str], rng: random.Random) -> dict:
    area, message, summary = template
    written, house = fill(rng)
    body = message.format(**written)
    greeting = rng.choice(GREETINGS)
    if greeting and body[0].isupper() and body[1:2].islower():
        body = body[0].lower() + body[1:]
    acct = str(rng.randint(10000, 99999)) if rng.random() < 0.65 else None
    account = rng.choice(ACCOUNT_FORMS).format(acct=acct) if acct else ""
    urgent = rng.random() < 0.3
    closing = (rng.choice(URGENT) if urgent else rng.choice(CALM)).format(name=written["signer"])
    protected = {str(v) for v in written.values()} | set(" ".join(map(str, written.values())).split())
    text = noisy(greeting + body + account + closing, rng, protected)
    output = f"[{area}] {summary.format(**house)}; ref {'#' + acct if acct else 'none'}" + ("; P1" if urgent else "")
    return {"input": text, "output": output}


def norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    """Each split cycles through every template, so every phrasing appears in every split."""
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[dict]] = {}
    for split, size in SIZES.items():
        rows: list[dict] = []
        k = 0
        while len(rows) < size:
            row = render(TEMPLATES[k % len(TEMPLATES)], rng)
            k += 1
            key = norm(row["input"])
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
        rng.shuffle(rows)
        splits[split] = rows
    return splits


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    splits = generate()
    write_jsonl(DATA / "train.jsonl", splits["train"])
    write_jsonl(DATA / "gold.jsonl", splits["gold"])
    write_jsonl(DATA / "inputs.jsonl", [{"input": r["input"]} for r in splits["inputs"]])
    # a support desk's recent traffic: 300 historical inputs (no outputs) to probe from at realistic scale
    write_jsonl(DATA / "history.jsonl", [{"input": r["input"]} for r in splits["history"]])
    # the same traffic, longer: bench.freetext --history N > 300 reads these after history.jsonl
    write_jsonl(DATA / "history_more.jsonl", [{"input": r["input"]} for r in splits["history_more"]])
    for name, rows in splits.items():
        print(f"{name}: {len(rows)}")


if __name__ == "__main__":
    main()
