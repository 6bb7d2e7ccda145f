"""Small generated data for the NER and QA tests: CoNLL files and SQuAD JSON, written to a folder.

Entities and answers follow templates, so a tiny model can learn something in a few steps and
every split has entities (NER) and answers that sit at their offsets (QA).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PEOPLE = ["Anna Berg", "Tom Reed", "Lena Hart", "Omar Said", "Ivy Chen", "Raul Costa", "Mia Holt", "Ken Ito"]
PLACES = ["Oslo", "Lima", "Cairo", "Perth", "Quito", "Dakar", "Riga", "Hanoi"]
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay"]
FILLER = ["today", "again", "with friends", "after work", "for a week", "this summer"]


def ner_sentence(rng: random.Random) -> list[tuple[str, str]]:
    """One sentence as (word, tag) pairs: a person, a place, sometimes a company, or none."""
    kind = rng.randrange(4)
    person = PEOPLE[rng.randrange(len(PEOPLE))].split()
    place = PLACES[rng.randrange(len(PLACES))]
    tail = [(w, "O") for w in rng.choice(FILLER).split()]
    per = [(person[0], "B-person"), (person[1], "I-person")]
    if kind == 0:
        return [*per, ("flew", "O"), ("to", "O"), (place, "B-location"), *tail, (".", "O")]
    if kind == 1:
        company = COMPANIES[rng.randrange(len(COMPANIES))]
        return [
            *per,
            ("works", "O"),
            ("at", "O"),
            (company, "B-corporation"),
            ("in", "O"),
            (place, "B-location"),
        ]
    if kind == 2:
        return [("we", "O"), ("met", "O"), *per, *tail]
    return [("nothing", "O"), ("to", "O"), ("see", "O"), *tail]


def write_ner_folder(folder: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """``train.conll``, ``dev.conll``, ``test.conll`` with ``sizes[split]`` sentences each."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = {"train": "train.conll", "validation": "dev.conll", "test": "test.conll"}
    for split, n in sizes.items():
        blocks = ["\n".join(f"{w}\t{t}" for w, t in ner_sentence(rng)) for _ in range(n)]
        (folder / names[split]).write_text("\n\n".join(blocks) + "\n", encoding="utf-8")
    return folder


def squad_article(rng: random.Random, index: int, n_questions: int) -> dict[str, object]:
    """One article: a context of six facts (about 90 tokens: two or three 64-token windows)
    and questions on some of them, each answer at its offset."""
    city = f"Town{index}"
    facts: list[tuple[str, str, str]] = []  # (sentence, question, answer)
    for k in range(6):
        year = str(1700 + rng.randrange(300))
        person = PEOPLE[rng.randrange(len(PEOPLE))]
        place = PLACES[(index + k) % len(PLACES)]
        kind = k % 3
        if kind == 0:
            facts.append(
                (
                    f"The bridge {k} of {city} was built in {year}.",
                    f"When was bridge {k} of {city} built?",
                    year,
                )
            )
        elif kind == 1:
            facts.append(
                (f"Its school {k} was founded by {person}.", f"Who founded school {k} of {city}?", person)
            )
        else:
            facts.append(
                (
                    f"Road {k} of {city} leads to {place} across the hills.",
                    f"Where does road {k} of {city} lead?",
                    place,
                )
            )
    context = " ".join(sentence for sentence, _, _ in facts)
    qas = []
    for q, k in enumerate(rng.sample(range(len(facts)), n_questions)):
        sentence, question, answer = facts[k]
        start = context.index(sentence) + sentence.index(answer)
        answers = [{"text": answer, "answer_start": start}]
        if q % 2 == 0:  # a second reference, as SQuAD dev has: the answer with its sentence end
            answers.append({"text": context[start : start + len(answer) + 1], "answer_start": start})
        qas.append({"id": f"a{index}q{q}", "question": question, "answers": answers})
    return {"title": city, "paragraphs": [{"context": context, "qas": qas}]}


def write_squad_folder(folder: Path, articles: dict[str, tuple[int, int]], seed: int = 0) -> Path:
    """``train.json``, ``validation.json``, ``test.json`` in the official SQuAD layout;
    ``articles[split] = (articles, questions per article)``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, (n_articles, per_article) in articles.items():
        data = [squad_article(rng, start + i, per_article) for i in range(n_articles)]
        start += n_articles
        (folder / f"{split}.json").write_text(json.dumps({"version": "1.1", "data": data}), encoding="utf-8")
    return folder
