"""Regenerate reviews.csv, the demo data set (short product and service reviews, written from
phrase lists below, so it carries no third-party text), and unlabelled.csv, 400 other reviews without
their labels (for self-training: examples/self-training-demo.yaml). Run: python examples/demo/make_reviews.py"""
import csv
import random
from pathlib import Path

SUBJECTS = ["The battery", "This blender", "The hotel room", "Our waiter", "The delivery", "This laptop",
            "The sequel", "The headphones", "Customer support", "The pasta", "This jacket", "The app",
            "The checkout process", "The camera", "The tour guide", "The mattress", "This coffee maker",
            "The concert", "The rental car", "The novel"]
POSITIVE = ["works perfectly", "exceeded my expectations", "was a pleasant surprise", "is worth every penny",
            "made my week", "was friendly and quick", "is sturdy and well made", "arrived early and intact",
            "sounds fantastic", "is a joy to use", "was delicious", "kept me hooked until the end",
            "solved my problem in minutes", "feels premium", "is reliable day after day"]
NEGATIVE = ["stopped working after two days", "was a complete waste of money", "broke on the first use",
            "is painfully slow", "arrived damaged", "was rude and dismissive", "feels cheap and flimsy",
            "never showed up", "sounds tinny and harsh", "is frustrating to use", "was cold and bland",
            "dragged on forever", "ignored my emails for weeks", "overheats constantly",
            "fails more often than it works"]
POS_TAILS = ["", " Highly recommended.", " I would buy it again.", " Five stars.", " Love it!",
             " My whole family agrees."]
NEG_TAILS = ["", " Avoid it.", " I want a refund.", " One star.", " Never again.", " Very disappointed."]


def reviews(rng: random.Random, n: int, taken: set) -> list[tuple[str, str]]:
    """n distinct (text, label) rows whose texts are not in `taken`, shuffled."""
    rows = set()
    while len(rows) < n:
        label = rng.choice(["positive", "negative"])
        phrases, tails = (POSITIVE, POS_TAILS) if label == "positive" else (NEGATIVE, NEG_TAILS)
        text = f"{rng.choice(SUBJECTS)} {rng.choice(phrases)}.{rng.choice(tails)}"
        if text not in taken:
            rows.add((text, label))
    rows = sorted(rows)
    rng.shuffle(rows)
    return rows


def write(name: str, header: list[str], rows: list[tuple]) -> None:
    with open(Path(__file__).with_name(name), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def main() -> None:
    rng = random.Random(7)
    labelled = reviews(rng, 400, set())
    write("reviews.csv", ["text", "label"], labelled)
    write("unlabelled.csv", ["text"], [(text,) for text, _ in reviews(rng, 400, {t for t, _ in labelled})])


if __name__ == "__main__":
    main()
