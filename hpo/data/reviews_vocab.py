"""Vocabulary of the builtin ``builtin:reviews`` dataset: review domains and sentiment words.

Data only; :mod:`hpo.data.reviews` writes reviews from it. Tuples of two are indexed by label
(0 negative, 1 positive).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
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


DOMAINS: dict[str, Domain] = {
    "movies": Domain(
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
    "electronics": Domain(
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
    "restaurants": Domain(
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
    "books": Domain(
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
    "hotels": Domain(
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
ADJ_STRONG = (
    ("terrible", "awful", "dreadful", "horrible", "atrocious", "lousy", "abysmal", "dismal"),
    ("excellent", "wonderful", "fantastic", "superb", "brilliant", "outstanding", "terrific", "delightful"),
)
ADJ_MILD = (
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
ADJ_NEGATABLE = (
    ("good", "great", "impressive", "worth it", "special", "anything to write home about"),
    ("bad", "terrible", "awful", "a disappointment", "as bad as people say", "boring"),
)
INTENSIFIERS = (
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
HEDGES = ("somewhat", "a bit", "kind of", "fairly", "rather", "mostly", "more or less")
VERBS = (
    ("hated", "regretted buying", "could not stand", "was let down by", "gave up on"),
    ("loved", "enjoyed", "adored", "was impressed by", "fell for"),
)
VERDICTS = (
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
SUMMARY_LEADS = ("Overall,", "All in all,", "In the end,", "Bottom line:", "On balance,", "To sum up,")
# Leads that turn against what came before; only used after a counterpoint.
TURN_LEADS = ("Still,", "That said,", "Even so,", "But overall,")
# Praise words around a complaint: the words are positive, the sentence is not.
SARCASM = (
    "Oh great, {bad}.",
    "Just what I wanted: {bad}.",
    "Wow, {bad}. Brilliant.",
    "Fantastic, {bad}. Love that.",
    "Perfect, {bad}. Exactly what I paid for.",
    "What a treat: {bad}.",
)
# The same openers used in earnest, so they are not a cue for the negative class by themselves.
EARNEST = (
    "Oh wow, {good}.",
    "Just what I wanted: {good}.",
    "Honestly, {good}.",
    "Believe it or not, {good}.",
    "What a treat: {good}.",
)
GENERIC_FILLER = (
    "I have been meaning to write this review for a while.",
    "Here are my thoughts.",
    "I read a lot of reviews before deciding.",
    "This is my honest opinion.",
    "Let me explain.",
    "I was curious after all the buzz.",
)
