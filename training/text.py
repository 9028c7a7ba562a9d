"""The project's own text source: a small English grammar over a fixed vocabulary.

Sentences are generated deterministically from a seed, so the corpus needs no downloaded text.
`split_sentences` hashes each sentence into train or test, so a test sentence never occurs in
training whatever the number of sentences asked for.
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


def is_test_sentence(text: str, test_fraction: float) -> bool:
    """Whether `text` belongs to the held-out side (by its hash: stable across runs and counts)."""
    digest = hashlib.sha1(text.encode()).digest()
    return int.from_bytes(digest[:4], "big") < test_fraction * 2**32


def split_sentences(n_train: int, n_test: int, seed: int = 0, test_fraction: float = 0.1) -> tuple[list, list]:
    """`n_train` and `n_test` distinct sentences, disjoint by construction, in a seeded order."""
    rng = np.random.default_rng(seed)
    train: dict[str, None] = {}
    test: dict[str, None] = {}
    for _ in range(200 * (n_train + n_test) + 1000):
        text = sentence(rng)
        side = test if is_test_sentence(text, test_fraction) else train
        limit = n_test if side is test else n_train
        if len(side) < limit:
            side[text] = None
        if len(train) == n_train and len(test) == n_test:
            return list(train), list(test)
    raise ValueError(f"the grammar cannot give {n_train} train and {n_test} test sentences")
