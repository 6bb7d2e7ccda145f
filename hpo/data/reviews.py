"""The builtin ``builtin:reviews`` dataset: seeded, generated English reviews.

The reviews are written from templates kept here and vocabularies kept in
:mod:`hpo.data.reviews_vocab` (no downloads), over several domains (movies, electronics,
restaurants, books, hotels). They are built so that word counts alone do not decide the label:

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

:func:`generate_reviews` writes any number of reviews; :func:`fixed_splits` are the splits of
``builtin:reviews`` (sizes :data:`SPLIT_SIZES`, seed :data:`SEED`), the same in every study.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pandas as pd

from hpo.data.reviews_vocab import (
    ADJ_MILD,
    ADJ_NEGATABLE,
    ADJ_STRONG,
    DOMAINS,
    EARNEST,
    GENERIC_FILLER,
    HEDGES,
    INTENSIFIERS,
    SARCASM,
    SUMMARY_LEADS,
    TURN_LEADS,
    VERBS,
    VERDICTS,
    Domain,
)

LABEL_NAMES = ["negative", "positive"]
"""Label names of the generated reviews; index = integer label."""

# Fixed split sizes (rows) and a fixed generator seed of the builtin dataset, so its rows and
# fingerprint are the same in every study; spec.seed only drives subsampling.
SPLIT_SIZES = {"train": 3000, "validation": 600, "test": 600}
"""Rows of each builtin split."""
SEED = 20240611
"""Seed of the builtin splits' generator."""


class _Writer:
    """Writes the sentences of one review for one label.

    Args:
        rng: The generator's random source (the only one used).
        domain: The domain's vocabulary.
        present: Use present tense for aspects ("is") instead of past ("was").
    """

    def __init__(self, rng: random.Random, domain: Domain, present: bool) -> None:
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
            return self.rng.choice(ADJ_STRONG[y])
        if r < 0.55:
            return f"{self.rng.choice(INTENSIFIERS)} {self.rng.choice(ADJ_MILD[y])}"
        if r < 0.70:
            return f"{self.rng.choice(HEDGES)} {self.rng.choice(ADJ_MILD[y])}"
        return self.rng.choice(ADJ_MILD[y])

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
            return _sentence(f"I {self.rng.choice(VERBS[y])} this {self.item}")
        return _sentence(self.rng.choice(VERDICTS[y]))

    def negated(self, y: int) -> str:
        """Sentiment ``y`` said by negating the opposite ("not bad at all")."""
        noun, plural = self._aspect()
        adj = self.rng.choice(ADJ_NEGATABLE[y])
        tail = self.rng.choice(("", "", " at all", ", honestly", ", to be fair"))
        forms: tuple[str, ...] = (
            f"the {noun} {self._be(plural, negated=True)} {adj}{tail}",
            f"the {self.item} {self._be(False, negated=True)} {adj}{tail}",
            f"I would not call the {noun} {adj}",
            f"I can't say the {noun} {self._be(plural)} {adj}",
        )
        if y == 1:
            forms += (
                f"nothing about the {noun} {self._be(plural)} {self.rng.choice(ADJ_MILD[0])}",
                f"I didn't {self.rng.choice(('hate', 'regret', 'mind'))} it one bit",
            )
        else:
            forms += (
                f"I didn't {self.rng.choice(('love', 'enjoy', 'like'))} it",
                f"the {noun} {self._be(plural, negated=True)} "
                f"{self.rng.choice(('exactly', 'really', 'remotely'))} "
                f"{self.rng.choice(ADJ_MILD[1])}",
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
            return self.rng.choice(SARCASM).format(bad=self.rng.choice(self.d.bad))
        return self.rng.choice(EARNEST).format(good=self.rng.choice(self.d.good))

    def verdict(self, y: int, turn: bool = False) -> str:
        """A closing verdict led by "Overall," or, when ``turn``, also by "Still," and kin."""
        lead = self.rng.choice(SUMMARY_LEADS + TURN_LEADS if turn else SUMMARY_LEADS)
        return f"{lead} {self.rng.choice(VERDICTS[y])}."

    def filler(self) -> str:
        """A sentence with no sentiment."""
        if self.rng.random() < 0.75:
            return self.rng.choice(self.d.filler)
        return self.rng.choice(GENERIC_FILLER)


def _sentence(clause: str) -> str:
    return clause[0].upper() + clause[1:] + "."


def _review(rng: random.Random, y: int) -> str:
    """One review whose sentiment, read as a whole, is ``y``."""
    domain = DOMAINS[rng.choice(sorted(DOMAINS))]
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


_SPLITS: dict[str, pd.DataFrame] = {}


def fixed_splits() -> dict[str, pd.DataFrame]:
    """The fixed builtin:reviews splits, generated once per process."""
    if not _SPLITS:
        sizes = SPLIT_SIZES
        df = generate_reviews(sum(sizes.values()), seed=SEED)
        # Cut the splits from one call: texts are unique within a call, so splits are
        # disjoint; the label order of generate_reviews is already random and balanced.
        start = 0
        for split, n in sizes.items():
            _SPLITS[split] = df.iloc[start : start + n].reset_index(drop=True)
            start += n
    return {k: v.copy() for k, v in _SPLITS.items()}
