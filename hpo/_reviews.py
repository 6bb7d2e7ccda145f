"""The builtin ``builtin:reviews`` dataset: seeded, generated English reviews.

The reviews are written from templates and vocabularies kept in this file (no downloads),
over several domains (movies, electronics, restaurants, books, hotels). They are built so
that word counts alone do not decide the label:

- negation flips a sentiment word ("the plot wasn't bad at all" is positive),
- contrast clauses put both polarities in one sentence and the label follows the main
  clause ("the acting was superb, but the plot made no sense" is negative),
- mixed reviews state a counterpoint before the verdict,
- sarcasm-lite pairs praise words with a complaint ("Oh great, it broke after a week."),
- neutral filler sentences, hedges and intensifiers add words that carry no label,
- a small share of labels is flipped (noise).

A bag-of-words logistic regression reaches roughly 80% on held-out reviews; a fine-tuned
transformer can read the constructions and do better, so the task separates strategies.
Labels: 0 negative, 1 positive.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

LABEL_NAMES = ["negative", "positive"]
"""Label names of the generated reviews; index = integer label."""


@dataclass(frozen=True)
class _Domain:
    """Vocabulary of one review domain.

    Attributes:
        items: What is reviewed ("movie", "film").
        aspects: (noun phrase, is plural) pairs that take an adjective.
        good: Domain clauses that praise, present tense, no final period.
        bad: Domain clauses that complain, present tense, no final period.
        filler: Neutral sentences that carry no sentiment.
    """

    items: tuple[str, ...]
    aspects: tuple[tuple[str, bool], ...]
    good: tuple[str, ...]
    bad: tuple[str, ...]
    filler: tuple[str, ...]


_DOMAINS: dict[str, _Domain] = {
    "movies": _Domain(
        items=("movie", "film", "picture", "sequel", "documentary"),
        aspects=(
            ("acting", False),
            ("plot", False),
            ("soundtrack", False),
            ("dialogue", False),
            ("pacing", False),
            ("ending", False),
            ("cinematography", False),
            ("characters", True),
            ("special effects", True),
            ("script", False),
            ("lead actor", False),
            ("supporting cast", False),
            ("score", False),
        ),
        good=(
            "the story kept me hooked until the last scene",
            "the final act is genuinely moving",
            "every scene earns its place",
            "the jokes land and the cast clearly had fun",
            "the twist caught me completely off guard",
        ),
        bad=(
            "the plot makes no sense",
            "I checked my watch every ten minutes",
            "the twist is obvious from the first scene",
            "half the audience walked out",
            "the jokes fall flat",
        ),
        filler=(
            "I watched it with my family last weekend.",
            "We caught a late showing on a Friday.",
            "It runs a little over two hours.",
            "I had read the book before seeing it.",
            "A friend recommended it to me.",
            "It is the director's third feature.",
            "I streamed it at home.",
        ),
    ),
    "electronics": _Domain(
        items=("phone", "laptop", "headset", "speaker", "tablet", "camera", "charger"),
        aspects=(
            ("battery", False),
            ("screen", False),
            ("build quality", False),
            ("sound", False),
            ("software", False),
            ("keyboard", False),
            ("buttons", True),
            ("setup", False),
            ("camera", False),
            ("speakers", True),
            ("touchpad", False),
            ("price", False),
        ),
        good=(
            "the battery lasts all day",
            "it paired with my laptop in seconds",
            "it feels solid and well made",
            "the sound is crisp even at full volume",
            "setup took less than five minutes",
        ),
        bad=(
            "it stopped working after a week",
            "the battery dies by lunchtime",
            "it keeps disconnecting",
            "the case cracked on the first drop",
            "it overheats after an hour",
        ),
        filler=(
            "I bought it during a sale.",
            "It arrived on a Tuesday.",
            "This is my second device from this brand.",
            "I mostly use it for work calls.",
            "It comes in three colors.",
            "I got it as a birthday present.",
            "The box includes a cable and a manual.",
        ),
    ),
    "restaurants": _Domain(
        items=("restaurant", "bistro", "diner", "cafe", "pizzeria", "place"),
        aspects=(
            ("food", False),
            ("service", False),
            ("pasta", False),
            ("dessert", False),
            ("staff", True),
            ("atmosphere", False),
            ("prices", True),
            ("portions", True),
            ("wine list", False),
            ("waiter", False),
            ("soup", False),
            ("steak", False),
        ),
        good=(
            "the food comes out hot and fresh",
            "the waiter remembers our order from last time",
            "every dish is full of flavor",
            "the portions are generous",
            "we were seated right away",
        ),
        bad=(
            "the food arrives cold",
            "we waited an hour for a table",
            "the waiter forgot our order twice",
            "the bill had charges we never ordered",
            "the fish tastes like it sat out all day",
        ),
        filler=(
            "We went there on a Friday night.",
            "We booked a table for four.",
            "It is a short walk from the station.",
            "I ordered the daily special.",
            "We celebrated a birthday there.",
            "They have a small terrace.",
            "It opened last spring.",
        ),
    ),
    "books": _Domain(
        items=("book", "novel", "memoir", "thriller", "biography", "collection"),
        aspects=(
            ("writing", False),
            ("plot", False),
            ("characters", True),
            ("prose", False),
            ("ending", False),
            ("dialogue", False),
            ("pacing", False),
            ("translation", False),
            ("chapters", True),
            ("world-building", False),
            ("narrator", False),
            ("middle section", False),
        ),
        good=(
            "I could not put it down",
            "the characters feel like real people",
            "the last chapter stays with you",
            "every page is a pleasure to read",
            "I finished it in one sitting",
        ),
        bad=(
            "I gave up halfway through",
            "the characters are paper thin",
            "the ending comes out of nowhere",
            "it reads like a first draft",
            "the same idea is repeated for three hundred pages",
        ),
        filler=(
            "I read it on a long flight.",
            "It is the second book in a series.",
            "My book club picked it this month.",
            "I listened to the audiobook version.",
            "The author has written four novels.",
            "It is about three hundred pages long.",
            "I borrowed it from the library.",
        ),
    ),
    "hotels": _Domain(
        items=("hotel", "resort", "inn", "hostel", "apartment"),
        aspects=(
            ("room", False),
            ("bed", False),
            ("staff", True),
            ("breakfast", False),
            ("location", False),
            ("view", False),
            ("bathroom", False),
            ("wifi", False),
            ("pool", False),
            ("check-in", False),
            ("lobby", False),
            ("sheets", True),
        ),
        good=(
            "the room was spotless when we arrived",
            "the staff upgraded us without asking",
            "we slept like babies",
            "the breakfast has something for everyone",
            "it is a short walk from everything",
        ),
        bad=(
            "the room smells of smoke",
            "the air conditioning rattles all night",
            "there was hair in the shower",
            "the front desk lost our booking",
            "the walls are paper thin",
        ),
        filler=(
            "We stayed for three nights.",
            "We booked it through an agency.",
            "It is near the old town.",
            "We traveled there in August.",
            "Parking costs extra.",
            "It has about fifty rooms.",
            "We were there for a wedding.",
        ),
    ),
}

# Shared sentiment vocabularies; index 0 = negative, 1 = positive.
_ADJ_STRONG = (
    ("terrible", "awful", "dreadful", "horrible", "atrocious", "lousy", "abysmal", "dismal"),
    ("excellent", "wonderful", "fantastic", "superb", "brilliant", "outstanding", "terrific", "delightful"),
)
_ADJ_MILD = (
    (
        "disappointing",
        "mediocre",
        "weak",
        "bland",
        "sloppy",
        "dull",
        "underwhelming",
        "poor",
        "forgettable",
        "frustrating",
    ),
    (
        "good",
        "great",
        "nice",
        "solid",
        "pleasant",
        "impressive",
        "enjoyable",
        "lovely",
        "charming",
        "polished",
    ),
)
# "not bad" reads as praise and "not great" as a complaint; these are the adjectives that
# negation flips most naturally.
_ADJ_NEGATABLE = (
    ("good", "great", "impressive", "worth it", "special", "anything to write home about"),
    ("bad", "terrible", "awful", "a disappointment", "as bad as people say", "boring"),
)
_INTENSIFIERS = (
    "really",
    "truly",
    "absolutely",
    "incredibly",
    "remarkably",
    "genuinely",
    "so",
    "very",
    "just",
)
_HEDGES = ("somewhat", "a bit", "kind of", "fairly", "rather", "mostly", "more or less")
_VERBS = (
    ("hated", "regretted buying", "could not stand", "was let down by", "gave up on"),
    ("loved", "enjoyed", "adored", "was impressed by", "fell for"),
)
_VERDICTS = (
    (
        "I would not recommend it",
        "save your money",
        "a complete waste of money",
        "I want my money back",
        "avoid it",
        "I will not be going back",
        "two stars at most",
        "I expected much more",
        "never again",
        "I regret it",
    ),
    (
        "I would recommend it",
        "worth every penny",
        "money well spent",
        "I will be back",
        "five stars",
        "highly recommended",
        "I would buy it again",
        "it exceeded my expectations",
        "a real gem",
        "I am glad I tried it",
    ),
)
_SUMMARY_LEADS = ("Overall,", "All in all,", "In the end,", "Bottom line:", "On balance,", "To sum up,")
# Leads that turn against what came before; only used after a counterpoint.
_TURN_LEADS = ("Still,", "That said,", "Even so,", "But overall,")
# Praise words around a complaint: the words are positive, the sentence is not.
_SARCASM = (
    "Oh great, {bad}.",
    "Just what I wanted: {bad}.",
    "Wow, {bad}. Brilliant.",
    "Fantastic, {bad}. Love that.",
    "Perfect, {bad}. Exactly what I paid for.",
    "What a treat: {bad}.",
)
# The same openers used in earnest, so they are not a cue for the negative class by themselves.
_EARNEST = (
    "Oh wow, {good}.",
    "Just what I wanted: {good}.",
    "Honestly, {good}.",
    "Believe it or not, {good}.",
    "What a treat: {good}.",
)
_GENERIC_FILLER = (
    "I have been meaning to write this review for a while.",
    "Here are my thoughts.",
    "I read a lot of reviews before deciding.",
    "This is my honest opinion.",
    "Let me explain.",
    "I was curious after all the buzz.",
)


class _Writer:
    """Writes the sentences of one review for one label.

    Args:
        rng: The generator's random source (the only one used).
        domain: The domain's vocabulary.
        present: Use present tense for aspects ("is") instead of past ("was").
    """

    def __init__(self, rng: random.Random, domain: _Domain, present: bool) -> None:
        self.rng = rng
        self.d = domain
        self.present = present
        self.item = rng.choice(domain.items)
        self.used: set[str] = set()  # aspects already talked about in this review

    def _be(self, plural: bool, negated: bool = False) -> str:
        if self.present:
            verb = "are" if plural else "is"
        else:
            verb = "were" if plural else "was"
        if not negated:
            return verb
        return self.rng.choice((verb + " not", verb + "n't"))

    def _aspect(self) -> tuple[str, bool]:
        # A fresh aspect each time, so one review does not call the same thing good and bad.
        choices = [a for a in self.d.aspects if a[0] not in self.used] or list(self.d.aspects)
        aspect = self.rng.choice(choices)
        self.used.add(aspect[0])
        return aspect

    def _adj(self, y: int) -> str:
        r = self.rng.random()
        if r < 0.35:
            return self.rng.choice(_ADJ_STRONG[y])
        if r < 0.55:
            return f"{self.rng.choice(_INTENSIFIERS)} {self.rng.choice(_ADJ_MILD[y])}"
        if r < 0.70:
            return f"{self.rng.choice(_HEDGES)} {self.rng.choice(_ADJ_MILD[y])}"
        return self.rng.choice(_ADJ_MILD[y])

    def clause(self, y: int) -> str:
        """One clause with sentiment ``y`` and no final punctuation."""
        r = self.rng.random()
        if r < 0.55:
            noun, plural = self._aspect()
            return f"the {noun} {self._be(plural)} {self._adj(y)}"
        if r < 0.75:
            return f"the {self.item} {self._be(False)} {self._adj(y)}"
        return self.rng.choice(self.d.good if y else self.d.bad)

    def direct(self, y: int, verdicts: bool = True) -> str:
        """A plain statement of sentiment ``y``; a bare verdict too when ``verdicts``."""
        r = self.rng.random()
        if r < 0.7:
            return _sentence(self.clause(y))
        if r < 0.85 or not verdicts:
            return _sentence(f"I {self.rng.choice(_VERBS[y])} this {self.item}")
        return _sentence(self.rng.choice(_VERDICTS[y]))

    def negated(self, y: int) -> str:
        """Sentiment ``y`` said by negating the opposite ("not bad at all")."""
        noun, plural = self._aspect()
        adj = self.rng.choice(_ADJ_NEGATABLE[y])
        tail = self.rng.choice(("", "", " at all", ", honestly", ", to be fair"))
        forms: tuple[str, ...] = (
            f"the {noun} {self._be(plural, negated=True)} {adj}{tail}",
            f"the {self.item} {self._be(False, negated=True)} {adj}{tail}",
            f"I would not call the {noun} {adj}",
            f"I can't say the {noun} {self._be(plural)} {adj}",
        )
        if y == 1:
            forms += (
                f"nothing about the {noun} {self._be(plural)} {self.rng.choice(_ADJ_MILD[0])}",
                f"I didn't {self.rng.choice(('hate', 'regret', 'mind'))} it one bit",
            )
        else:
            forms += (
                f"I didn't {self.rng.choice(('love', 'enjoy', 'like'))} it",
                f"the {noun} {self._be(plural, negated=True)} "
                f"{self.rng.choice(('exactly', 'really', 'remotely'))} "
                f"{self.rng.choice(_ADJ_MILD[1])}",
            )
        return _sentence(self.rng.choice(forms))

    def contrast(self, y: int) -> str:
        """Both polarities in one sentence; the main clause carries ``y``."""
        noun1, plural1 = self._aspect()
        noun2, plural2 = self._aspect()
        other = f"the {noun1} {self._be(plural1)} {self._adj(1 - y)}"
        main = f"the {noun2} {self._be(plural2)} {self._adj(y)}"
        r = self.rng.random()
        if r < 0.35:
            return _sentence(f"{other}, but {self.clause(y) if r < 0.1 else main}")
        if r < 0.55:
            return _sentence(f"although {other}, {main}")
        if r < 0.7:
            return _sentence(f"{main}, even if {other}")
        if r < 0.85:
            return _sentence(f"{other}; however, {main}")
        return _sentence(f"sure, {other}, yet {main}")

    def sarcasm(self, y: int) -> str:
        """Praise words around a complaint when ``y`` is 0; earnest praise when 1."""
        if y == 0:
            return self.rng.choice(_SARCASM).format(bad=self.rng.choice(self.d.bad))
        return self.rng.choice(_EARNEST).format(good=self.rng.choice(self.d.good))

    def verdict(self, y: int, turn: bool = False) -> str:
        """A closing verdict led by "Overall," or, when ``turn``, also by "Still," and kin."""
        lead = self.rng.choice(_SUMMARY_LEADS + _TURN_LEADS if turn else _SUMMARY_LEADS)
        return f"{lead} {self.rng.choice(_VERDICTS[y])}."

    def filler(self) -> str:
        """A sentence with no sentiment."""
        if self.rng.random() < 0.75:
            return self.rng.choice(self.d.filler)
        return self.rng.choice(_GENERIC_FILLER)


def _sentence(clause: str) -> str:
    return clause[0].upper() + clause[1:] + "."


def _review(rng: random.Random, y: int) -> str:
    """One review whose sentiment, read as a whole, is ``y``."""
    domain = _DOMAINS[rng.choice(sorted(_DOMAINS))]
    w = _Writer(rng, domain, present=rng.random() < 0.3)
    n_sentences = rng.choices((1, 2, 3, 4), weights=(0.25, 0.35, 0.25, 0.15))[0]
    # The key sentence decides the label; its kind sets how hard the review is for a model
    # that only counts words (direct: easy; negated, contrast, sarcasm: the words mislead).
    kinds: tuple[Callable[[int], str], ...] = (
        w.direct,
        w.negated,
        w.contrast,
        w.sarcasm,
        w.verdict,
    )
    key_kind = rng.choices(kinds, weights=(0.22, 0.28, 0.28, 0.12, 0.10))[0]
    key = key_kind(y)
    if n_sentences == 1:
        return key
    others: list[str] = []
    mixed = False
    for _ in range(n_sentences - 1):
        r = rng.random()
        if r < 0.45:
            filler = w.filler()
            while filler in others:
                filler = w.filler()
            others.append(filler)
        elif r < 0.70:
            # A counterpoint makes the review mixed; a verdict then closes it.
            others.append(w.direct(1 - y, verdicts=False))
            mixed = True
        else:
            others.append(rng.choice((w.negated, w.contrast, w.direct))(y))
    rng.shuffle(others)
    # Filler may open the review; the key sentence comes after any counterpoint so that a
    # reader (and a model that reads order) can tell which side wins.
    sentences = others + [key]
    if mixed and key_kind != w.verdict:
        # Two opposite statements alone would leave the label to a guess; a verdict
        # ("Overall, ...") settles it.
        sentences.append(w.verdict(y, turn=True))
    return " ".join(sentences)


def generate_reviews(n: int, seed: int, noise: float = 0.03) -> pd.DataFrame:
    """Generates ``n`` labelled reviews, the same ones for the same arguments.

    Classes are balanced (``n // 2`` negative, the rest positive) and texts are unique while
    the templates allow it. Label noise flips the same number of labels in each class, so
    the balance holds after noise too.

    Args:
        n: Number of reviews.
        seed: Seed of the private random source (global random state is never touched).
        noise: Fraction of labels flipped, 0 <= noise < 0.5.

    Returns:
        A frame with columns ``text`` (str) and ``label`` (int: 0 negative, 1 positive),
        rows in random order.

    Raises:
        ValueError: If ``n`` is negative or ``noise`` is out of range.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= noise < 0.5:
        raise ValueError(f"noise must be in [0, 0.5), got {noise}")
    rng = random.Random(seed)
    labels = [0] * (n // 2) + [1] * (n - n // 2)
    rng.shuffle(labels)
    seen: set[str] = set()
    texts: list[str] = []
    for y in labels:
        # Retry duplicates so that splits cut from one call share no text; give up after a
        # few tries, which only happens when n approaches the number of distinct reviews.
        for _ in range(20):
            text = _review(rng, y)
            if text not in seen:
                break
        seen.add(text)
        texts.append(text)
    flips_per_class = round(noise * n / 2)
    by_class = [[i for i, y in enumerate(labels) if y == cls] for cls in (0, 1)]
    for cls, idx in enumerate(by_class):
        for i in rng.sample(idx, min(flips_per_class, len(idx))):
            labels[i] = 1 - cls
    return pd.DataFrame({"text": texts, "label": pd.Series(labels, dtype="int64")})
