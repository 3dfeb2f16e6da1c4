"""Generate the ticket-routing demo data deterministically from templates (no LLM).

    python examples/ticket_routing/make_data.py

Writes data/train.jsonl, data/inputs.jsonl (a history of HISTORY = 300 inputs), data/gold.jsonl and
data/records.jsonl. The records' outputs are the *gold* labels here; `train_teacher.py record`
overwrites them with what the trained teacher actually answered (the "teacher is gone, its outputs
were recorded" path).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
SEED = 20240611

LABELS = [
    "BILL-REFUND",
    "BILL-DOUBLECHARGE",
    "ACCT-LOCKOUT",
    "ACCT-DELETE",
    "SHIP-LATE",
    "SHIP-DAMAGED",
    "TECH-APP-CRASH",
    "OTHER-HUMAN",
]

# Split sizes; every split is disjoint from every other by normalised text.
SIZES = {"train": 400, "inputs": 40, "gold": 40, "records": 60}
# The historical inputs a team hands foster: the first 40 are the original `inputs` split (so the other
# splits, and the teacher trained on `train`, stay exactly as they were); the rest are drawn after them
# with their own seed. 300 is enough for a held-out set of 100 probes beside a training pool.
HISTORY = 300

SLOTS = {
    "product": [
        "TrailLite backpack", "Ember kettle", "Nimbus rain jacket", "Cove desk lamp", "Pebble earbuds",
        "Alder cutting board", "Summit water bottle", "Fern yoga mat", "Drift hoodie", "Quill notebook set",
        "Harbor duffel bag", "Lumen bike light", "Juniper candle", "Basalt skillet", "Willow throw blanket",
    ],
    "amount": [
        "$12.99", "$24.50", "$49.99", "$89", "$129.00", "€19.90", "€45", "£32.00", "$7.49", "$210",
    ],
    "device": ["iPhone", "iPhone 13", "Android", "Pixel 7", "Samsung phone", "iPad", "tablet", "Galaxy S22"],
    "screen": ["checkout", "my cart", "the order history page", "login", "the search screen",
               "product photos", "the wishlist", "payment", "the home screen"],
    "days": ["3 days", "5 days", "a week", "10 days", "two weeks", "almost a month", "12 days"],
    "carrier": ["UPS", "FedEx", "DHL", "USPS", "the courier", "Royal Mail"],
    "name": ["Maria", "Tom", "Priya", "Jonas", "Aiko", "Sam", "Leila", "Chris", "Dana", "Omar"],
}


def order_no(rng: random.Random) -> str:
    return f"#BR-{rng.randint(10000, 99999)}"


# Each label: templates with {slots}. The house conventions a base model would not guess are
# encoded here and written up in README.md.
TEMPLATES: dict[str, list[str]] = {
    "BILL-REFUND": [
        "I returned the {product} {days} ago and still have not got my {amount} back.",
        "Please refund order {order}, I changed my mind about the {product}.",
        "Can I get my money back for the {product}? It's not what I expected.",
        "I cancelled order {order} before it shipped, when will the {amount} be refunded?",
        "The {product} was cheaper the next day, can you refund the difference?",
        "How long do refunds take? I sent back order {order} last week.",
        "I want a refund for the {product}, it does not fit.",
        "Your return label says refund in 5 days but it has been {days}. Order {order}.",
        "You promised store credit for the {product} but I want the {amount} on my card instead.",
        "My subscription renewed yesterday and I didn't want it, please give me the {amount} back.",
        "I never used the premium plan, refund the {amount} please.",
        "Return for {order} was received by your warehouse, where is my refund?",
    ],
    "BILL-DOUBLECHARGE": [
        "I was charged twice for order {order}, {amount} two times on my statement.",
        "My card shows two identical payments of {amount} for the {product}.",
        "Why did you bill me {amount} again? I only placed one order ({order}).",
        "There is a duplicate charge on my account for the {product}.",
        "I cancelled my membership last month but you still charged me {amount} this month.",
        "The payment failed so I paid again, now both went through. Order {order}.",
        "Double charge!! {amount} x2 for one {product}.",
        "My bank app shows the same {amount} charge from you twice today.",
        "You charged me for the subscription after I cancelled it. {amount} taken again.",
        "Got billed two times for a single order {order}, please reverse one.",
        "I see a pending {amount} and a posted {amount} for the same order.",
    ],
    "ACCT-LOCKOUT": [
        "I can't log in to my account, it says my password is wrong.",
        "My account is locked after too many attempts, please unlock it.",
        "The password reset email never arrives, I checked spam too.",
        "I'm not getting the 2FA code by SMS so I can't sign in.",
        "Changed my phone number and now I can't get the verification code.",
        "The reset link says it has expired every time I click it.",
        "I forgot which email I used to sign up and can't get into my account.",
        "Login keeps saying 'account suspended', I didn't do anything wrong.",
        "I can't sign in on my {device}, it rejects my password even after a reset.",
        "Locked out of my account and I need to check order {order}.",
        "The verification code on my {device} is always invalid.",
        "Someone changed my password and I can't get into my account anymore.",
    ],
    "ACCT-DELETE": [
        "Please delete my account and all my data.",
        "I want to close my account permanently.",
        "Under GDPR I request erasure of all personal data you hold about me.",
        "How do I remove my account? I don't shop here anymore.",
        "Cancel my membership and close the account, I'm done.",
        "Unsubscribe me from everything and delete my profile.",
        "Remove my address and card details and then delete the account.",
        "I'd like my account and order history wiped, please confirm when done.",
        "Please deactivate my account, I'm moving to another store.",
        "Delete my customer profile, I don't want you storing my info.",
        "Stop the subscription and erase my account please.",
    ],
    "SHIP-LATE": [
        "My order {order} hasn't arrived yet, it's been {days}.",
        "Tracking for the {product} has been stuck at '{carrier} facility' for {days}.",
        "Where is my package? Order {order} was supposed to come {days} ago.",
        "The app says delivered but I never got the {product}.",
        "Tracking shows delivered but nothing was at my door. Order {order}.",
        "{carrier} says the parcel is delayed, when will my {product} get here?",
        "Still waiting on my {product}, no tracking updates for {days}.",
        "The estimated delivery date for {order} keeps moving back.",
        "My order shipped {days} ago and still hasn't shown up.",
        "I need the {product} by Friday, is order {order} going to arrive in time?",
        "No sign of my delivery, {carrier} tracking hasn't changed in {days}.",
    ],
    "SHIP-DAMAGED": [
        "The {product} arrived broken.",
        "My {product} came with a big crack in it. Order {order}.",
        "The box was crushed and the {product} inside is damaged.",
        "I ordered the {product} but received something completely different.",
        "Wrong item in my package, I got a {product} instead of what I ordered.",
        "The {product} is missing parts, the box was opened.",
        "Order {order}: the {product} arrived scratched and dented.",
        "You sent me the wrong size and the wrong colour. Order {order}.",
        "Half of my order {order} is missing from the box.",
        "The {product} was leaking when it arrived and ruined the other items.",
        "The seal on the {product} was broken and it looks used.",
        "Got someone else's order, this is not my {product}.",
    ],
    "TECH-APP-CRASH": [
        "The app crashes every time I open {screen}.",
        "Your app keeps closing on my {device} when I tap {screen}.",
        "The app freezes at checkout and I can't pay for my {product}.",
        "Since the last update the app won't even start on my {device}.",
        "I get a white screen when I go to {screen} in the app.",
        "The website shows 'Error 500' when I try to open {screen}.",
        "App crashed in the middle of paying for order {order}, did it go through?",
        "The {device} app is stuck on the loading spinner forever.",
        "Every time I add the {product} to my cart the app shuts down.",
        "The app is unusable on {device}, it crashes after a few seconds.",
        "Something went wrong error when opening {screen}, reinstalling didn't help.",
        "Payment page crashes the app on my {device}, I can't complete order {order}.",
    ],
    "OTHER-HUMAN": [
        "I want to speak to a real person, not a bot.",
        "Can I talk to a manager please?",
        "Do you have the {product} in blue?",
        "Is the {product} dishwasher safe?",
        "Do you ship to Canada?",
        "Just wanted to say the {product} is great, thanks!",
        "Do you have any discount codes for students?",
        "Are you hiring for the warehouse?",
        "I'd like to partner with your store for a collaboration.",
        # House rule: a legal or chargeback threat goes to a human, whatever the topic.
        "My order {order} is {days} late and I'm contacting my lawyer.",
        "I was charged twice and I will file a chargeback with my bank unless a human calls me.",
        "The {product} arrived broken, I'm reporting you to consumer protection.",
        "Refund me the {amount} or I'm taking legal action.",
        "I can't log in and I want a human to call me right now.",
        "Your app crashed and lost my order, get me a supervisor.",
        "Stop sending me bots, I need a person to handle order {order}.",
        "I'm disputing the {amount} with my credit card company and my lawyer is involved.",
    ],
}

GREETINGS = ["", "", "", "Hi, ", "Hello, ", "Hey, ", "Hi team, ", "Good morning, ", "Hello support, "]
CLOSINGS = ["", "", "", " Thanks.", " Thank you!", " Please help.", " This is ridiculous.",
            " Fix this asap!!", " Thanks, {name}", " - {name}", " Any update would be appreciated.",
            " Really disappointed."]


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 2)
    kind = rng.choice(["swap", "drop", "double"])
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if kind == "drop":
        return word[:i] + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def noisy(text: str, rng: random.Random) -> str:
    """Typos, casing and punctuation the way real tickets arrive."""
    words = text.split(" ")
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
        j = rng.randrange(len(words))
        if len(words[j]) > 4 and words[j].isalpha():
            words[j] = _typo(words[j], rng)
    text = " ".join(words)
    r = rng.random()
    if r < 0.12:
        text = text.lower()
    elif r < 0.17:
        text = text.rstrip(".") + "!!"
    elif r < 0.22:
        text = re.sub(r"[.,]", "", text)
    return text


def render(label: str, template: str, rng: random.Random) -> str:
    fill = {k: rng.choice(v) for k, v in SLOTS.items()}
    fill["order"] = order_no(rng)
    body = template.format(**fill)
    greeting = rng.choice(GREETINGS)
    if greeting and body[0].isupper() and body[1:2].islower():
        body = body[0].lower() + body[1:]
    closing = rng.choice(CLOSINGS).format(name=fill["name"])
    return noisy(greeting + body + closing, rng)


def norm(text: str) -> str:
    return re.sub(r"[^a-z]+", " ", text.lower()).strip()


def generate(seed: int = SEED) -> dict[str, list[dict]]:
    rng = random.Random(seed)
    total = sum(SIZES.values())
    per_label = -(-total // len(LABELS)) + 4
    seen: set[str] = set()
    pool: dict[str, list[dict]] = {}
    for label in LABELS:
        items = []
        templates = TEMPLATES[label]
        attempts = 0
        while len(items) < per_label and attempts < 20000:
            attempts += 1
            # Cycle through templates so every phrasing appears in every split.
            template = templates[len(items) % len(templates)] if rng.random() < 0.7 else rng.choice(templates)
            text = render(label, template, rng)
            key = norm(text)
            if key in seen:
                continue
            seen.add(key)
            items.append({"input": text, "output": label})
        pool[label] = items

    # Deal each split round-robin over labels so all splits are balanced.
    splits: dict[str, list[dict]] = {}
    cursor = {label: 0 for label in LABELS}
    for split in ["gold", "inputs", "records", "train"]:
        rows = []
        k = 0
        while len(rows) < SIZES[split]:
            label = LABELS[k % len(LABELS)]
            k += 1
            if cursor[label] < len(pool[label]):
                rows.append(pool[label][cursor[label]])
                cursor[label] += 1
        rng.shuffle(rows)
        splits[split] = rows
    splits["inputs"] = splits["inputs"] + more_history(HISTORY - len(splits["inputs"]), seen, seed)
    return splits


def more_history(n: int, seen: set[str], seed: int) -> list[dict]:
    """n more tickets, balanced over labels, none equal (normalised) to any text already in `seen`."""
    rng = random.Random(seed + 1)
    rows: list[dict] = []
    k = 0
    while len(rows) < n:
        label = LABELS[k % len(LABELS)]
        text = render(label, rng.choice(TEMPLATES[label]), rng)
        if norm(text) in seen:
            continue
        seen.add(norm(text))
        rows.append({"input": text, "output": label})
        k += 1
    rng.shuffle(rows)
    return rows


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
    records = splits["records"]
    old = DATA / "records.jsonl"
    if old.exists():
        # Keep the teacher's recorded answers when the inputs did not change.
        recorded = [json.loads(line) for line in old.read_text(encoding="utf-8").splitlines() if line]
        if [r["input"] for r in recorded] == [r["input"] for r in records]:
            records = recorded
    write_jsonl(DATA / "records.jsonl", records)
    for name, rows in splits.items():
        print(f"{name}: {len(rows)}")


if __name__ == "__main__":
    main()
