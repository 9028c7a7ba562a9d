"""The project's own text source: a small English grammar over a fixed vocabulary.

Sentences are generated deterministically from a seed, so the corpus needs no downloaded text.
`split_sentences` hashes each sentence into train, dev (validation) or test, so a held-out sentence
never occurs in training whatever the number of sentences asked for.
"""

from __future__ import annotations

import hashlib

import numpy as np

NAMES = (
    "anna ben carla david emma frank grace henry iris jack kate leo maria nick olga paul rosa sam tina victor".split()
)
NOUNS = (
    "report plan meeting budget server garden window letter ticket camera kettle bottle engine "
    "bridge river market station office printer laptop bicycle jacket wallet basket pencil "
    "picture story song table chair door phone train coffee lunch dinner breakfast project "
    "contract invoice schedule package airport hotel kitchen library museum school doctor "
    "teacher driver farmer lawyer manager student neighbour customer"
).split()
ADJECTIVES = (
    "red blue green yellow black white small large heavy quiet noisy empty full broken new old "
    "early late cheap expensive simple strange bright dark warm cold"
).split()
VERBS_BASE = (
    "open close bring send check fix paint move clean carry find sell order cancel finish start "
    "visit call watch print read write share book borrow return"
).split()
VERBS_PAST = (
    "opened closed brought sent checked fixed painted moved cleaned carried found sold ordered "
    "cancelled finished started visited called watched printed read wrote shared booked borrowed returned"
).split()
PLACES = (
    "in the morning|after lunch|before noon|on monday|on friday|next week|this evening|"
    "at the station|near the river|in the office|by the window|at home|tomorrow|tonight"
).split("|")
NUMBERS = "two three four five six seven eight nine ten twelve twenty thirty".split()
PREPOSITIONS = "behind under near beside inside".split()


def plural(noun: str) -> str:
    if noun.endswith(("ch", "sh", "s", "x")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def _pick(rng: np.random.Generator, words: list[str]) -> str:
    return words[int(rng.integers(len(words)))]


def sentence(rng: np.random.Generator) -> str:
    """One sentence of 4 to 12 words from a handful of templates."""
    name, noun, noun2 = _pick(rng, NAMES), _pick(rng, NOUNS), _pick(rng, NOUNS)
    adj, base, past = _pick(rng, ADJECTIVES), _pick(rng, VERBS_BASE), _pick(rng, VERBS_PAST)
    place, number, prep = _pick(rng, PLACES), _pick(rng, NUMBERS), _pick(rng, PREPOSITIONS)
    templates = (
        f"{name} {past} the {adj} {noun} {place}",
        f"please {base} the {noun} {place}",
        f"can you {base} the {adj} {noun} for {name}",
        f"the {noun} is {prep} the {adj} {noun2}",
        f"we need {number} new {plural(noun)} {place}",
        f"{name} and {_pick(rng, NAMES)} will {base} the {noun} {place}",
        f"did you {base} the {noun} {prep} the {noun2}",
        f"i think the {adj} {noun} is too {_pick(rng, ADJECTIVES)}",
        f"{name} said the {noun} was {adj} {place}",
        f"let us {base} {number} {plural(noun)} and {base} the {noun2}",
    )
    return _pick(rng, list(templates))


def vocabulary() -> set[str]:
    """Every word the grammar can produce (plural nouns included)."""
    words = set(NAMES + NOUNS + ADJECTIVES + VERBS_BASE + VERBS_PAST + NUMBERS + PREPOSITIONS)
    words |= {plural(n) for n in NOUNS}
    words |= {w for p in PLACES for w in p.split()}
    words |= set("please can you the for is we need new and will did i think too said was let us".split())
    return words


TEST_FRACTION = 0.1  # share of all sentences held out for evaluation
DEV_FRACTION = 0.05  # share held out for validation (checkpoint selection), disjoint from both others


def _hash_position(text: str) -> float:
    """Where `text` falls in [0, 1): stable across runs, counts and seeds."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:4], "big") / 2**32


def is_test_sentence(text: str, test_fraction: float = TEST_FRACTION) -> bool:
    """Whether `text` belongs to the held-out evaluation side (by its hash)."""
    return _hash_position(text) < test_fraction


def sentence_side(text: str) -> str:
    """ "test", "dev" or "train", by the sentence's hash: a sentence is on one side whatever else is drawn."""
    position = _hash_position(text)
    if position < TEST_FRACTION:
        return "test"
    return "dev" if position < TEST_FRACTION + DEV_FRACTION else "train"


def split_sentences(n_train: int, n_test: int, seed: int = 0, n_dev: int = 0) -> tuple[list, list, list]:
    """`n_train`, `n_test` and `n_dev` distinct sentences, disjoint by construction, in a seeded order."""
    rng = np.random.default_rng(seed)
    wanted = {"train": n_train, "test": n_test, "dev": n_dev}
    sides: dict[str, dict[str, None]] = {name: {} for name in wanted}
    for _ in range(200 * sum(wanted.values()) + 1000):
        text = sentence(rng)
        side = sides[sentence_side(text)]
        if len(side) < wanted[sentence_side(text)]:
            side[text] = None
        if all(len(sides[name]) == n for name, n in wanted.items()):
            return list(sides["train"]), list(sides["test"]), list(sides["dev"])
    raise ValueError(f"the grammar cannot give {n_train} train, {n_dev} dev and {n_test} test sentences")
