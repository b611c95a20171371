"""A deterministic corpus of short, varied sentences, each with a topic and an integer."""

from __future__ import annotations

import random
from dataclasses import dataclass

TOPICS: dict[str, list[str]] = {
    "cooking": [
        "a mushroom risotto",
        "the sourdough starter",
        "a pot of lentil soup",
        "fresh pasta dough",
        "a lemon tart",
        "the spice rack",
        "a cast iron skillet",
        "roasted vegetables",
    ],
    "astronomy": [
        "the Andromeda galaxy",
        "a distant quasar",
        "the rings of Saturn",
        "a meteor shower",
        "the new telescope",
        "a red dwarf star",
        "the lunar eclipse",
        "an exoplanet transit",
    ],
    "finance": [
        "the quarterly budget",
        "a mortgage rate",
        "the index fund",
        "an invoice backlog",
        "the pension plan",
        "a currency swap",
        "the tax return",
        "a startup valuation",
    ],
    "gardening": [
        "the tomato seedlings",
        "a compost heap",
        "the rose bushes",
        "a raised vegetable bed",
        "the apple orchard",
        "a greenhouse",
        "the herb garden",
        "a row of sunflowers",
    ],
    "software": [
        "the database migration",
        "a memory leak",
        "the build pipeline",
        "a flaky unit test",
        "the API gateway",
        "a race condition",
        "the deployment script",
        "a code review",
    ],
    "music": [
        "a jazz quartet",
        "the violin concerto",
        "a vinyl record",
        "the drum solo",
        "a choir rehearsal",
        "the piano sonata",
        "an open-air festival",
        "a guitar riff",
    ],
    "sports": [
        "the marathon route",
        "a penalty kick",
        "the cycling team",
        "a tennis final",
        "the swimming relay",
        "a basketball playoff",
        "the climbing wall",
        "a rowing regatta",
    ],
    "medicine": [
        "the vaccine trial",
        "a blood pressure reading",
        "the surgical team",
        "an allergy test",
        "the physiotherapy plan",
        "a hospital ward",
        "the new antibiotic",
        "a sleep study",
    ],
    "travel": [
        "the night train",
        "a mountain hostel",
        "the airport lounge",
        "a ferry crossing",
        "the old town square",
        "a road trip",
        "the coastal path",
        "a hotel booking",
    ],
    "history": [
        "the Roman aqueduct",
        "a medieval manuscript",
        "the industrial revolution",
        "an ancient map",
        "the castle ruins",
        "a war diary",
        "the printing press",
        "a bronze age hoard",
    ],
    "weather": [
        "the autumn storm",
        "a heat wave",
        "the morning fog",
        "a hailstorm",
        "the monsoon season",
        "a cold front",
        "the snow forecast",
        "a rainbow",
    ],
    "pets": [
        "the old sheepdog",
        "a tabby cat",
        "the goldfish tank",
        "a parrot",
        "the rescue puppy",
        "a pair of rabbits",
        "the hamster wheel",
        "a stray kitten",
    ],
}
_SUBJECTS = ["My neighbour", "The committee", "A student", "Our team", "The reporter", "Grandma", "The engineer",
             "A tourist", "The teacher", "Nobody", "Everyone", "The manager", "A child", "The doctor", "My friend",
             "The volunteer", "A stranger", "The chef", "The pilot", "The author"]  # fmt: skip
_VERBS = ["talked about", "worried about", "photographed", "wrote a note on", "could not stop thinking about",
          "asked a question about", "was surprised by", "checked", "recommended", "complained about",
          "laughed at", "studied", "described", "ignored", "argued over", "celebrated"]  # fmt: skip
_TAILS = ["yesterday", "this morning", "after lunch", "late at night", "during the meeting", "on the radio",
          "for the third time", "with great care", "in a hurry", "before the holidays", "in the newsletter",
          "while waiting", "last weekend", "at the market", "on a postcard", "again"]  # fmt: skip
_ADJECTIVES = [
    "quietly",
    "loudly",
    "happily",
    "nervously",
    "briefly",
    "carefully",
    "openly",
    "secretly",
]


@dataclass(frozen=True)
class CorpusItem:
    text: str
    topic: str
    n: int


def corpus(count: int, seed: int = 7) -> list[CorpusItem]:
    """`count` distinct short sentences (about 8 to 19 words) with a topic and an integer.

    Same arguments, same corpus. Callers needing disjoint sets (texts the cache has never seen)
    slice one corpus rather than asking twice: two seeds may share a sentence.
    """
    rng = random.Random(seed)
    topics = list(TOPICS)
    seen: set[str] = set()
    items: list[CorpusItem] = []
    while len(items) < count:
        topic = topics[len(items) % len(topics)] if rng.random() < 0.5 else rng.choice(topics)
        text = " ".join(
            [
                rng.choice(_SUBJECTS),
                rng.choice(_ADJECTIVES),
                rng.choice(_VERBS),
                rng.choice(TOPICS[topic]),
                rng.choice(_TAILS),
            ]
        )
        n = rng.randrange(0, 1000)
        if rng.random() < 0.5:
            text = f"{text}, said item {n}" if rng.random() < 0.5 else f"{text} (note {len(items)})"
        text += "."
        if text in seen:
            continue
        seen.add(text)
        items.append(CorpusItem(text=text, topic=topic, n=n))
    return items
