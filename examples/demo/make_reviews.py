"""Regenerate reviews.csv, the demo data set (short product and service reviews, written from
phrase lists below, so it carries no third-party text). Run: python examples/demo/make_reviews.py"""
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


def main() -> None:
    rng = random.Random(7)
    rows = set()
    while len(rows) < 400:
        label = rng.choice(["positive", "negative"])
        phrases, tails = (POSITIVE, POS_TAILS) if label == "positive" else (NEGATIVE, NEG_TAILS)
        rows.add((f"{rng.choice(SUBJECTS)} {rng.choice(phrases)}.{rng.choice(tails)}", label))
    rows = sorted(rows)
    rng.shuffle(rows)
    with open(Path(__file__).with_name("reviews.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


if __name__ == "__main__":
    main()
