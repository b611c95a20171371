"""Corpora for retrieval quality: exact terms among ordinary sentences, paraphrased questions, and
long documents whose answer lies past the model's 256-token window. Deterministic (seeded).

    exact_term_corpus(n)  -> docs, [(query term, doc id)]      part codes, people, error strings
    paraphrase_pairs()    -> docs, [(question, doc id)]        questions that share few words
    long_documents()      -> docs, [(question, doc id, answer)] the answer sentence comes late
"""

from __future__ import annotations

import random
from typing import Any

_PARTS = ["filter cartridge", "drive belt", "hinge kit", "pressure valve", "fan motor", "seal ring", "control board",
          "heating element", "door gasket", "water pump", "thermostat", "bearing set"]
_PRODUCTS = ["dishwasher", "dryer", "espresso machine", "air purifier", "boiler", "freezer", "heat pump", "range hood"]
_FIRST = ["Alice", "Bruno", "Chiara", "Dmitri", "Elena", "Farid", "Greta", "Hiroshi", "Ines", "Jonas", "Kalinda",
          "Lorenzo", "Mei", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Soren", "Tamsin"]
_LAST = ["Okonkwo", "Lindqvist", "Barros", "Tanaka", "Moreau", "Kowalczyk", "Haddad", "Fitzgerald", "Novak", "Ibarra",
         "Castellano", "Petrov", "Adeyemi", "Van der Berg", "Sorensen", "Nakamura", "Oyelaran", "Whitcombe"]
_ERRORS = ["ECONNREFUSED", "ETIMEDOUT", "ENOSPC", "EACCES", "SIGSEGV", "OOMKilled", "ERR_SSL_PROTOCOL",
           "HTTP 503", "NullPointerException", "DeadlineExceeded"]
_ORDINARY = [
    "Our support team answers most questions within one business day.",
    "Regular cleaning keeps the appliance quiet and efficient.",
    "Customers often ask how to reset the device after a power cut.",
    "The warranty covers manufacturing defects for two years.",
    "Shipping is free for orders above fifty euros.",
    "Read the safety instructions before the first use.",
    "Most problems disappear after a simple restart.",
    "Spare parts can be ordered through the online shop.",
]


def exact_term_corpus(n: int = 300, seed: int = 11) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """n documents, each naming one unique exact term (a part code, a person or an error string)
    inside an ordinary sentence, plus filler documents with no term; queries are the terms alone."""
    rng = random.Random(seed)
    numbers = rng.sample(range(1000, 9999), n)
    people = rng.sample([(f, l) for f in _FIRST for l in _LAST], n)
    docs: list[dict[str, Any]] = []
    queries: list[tuple[str, str]] = []
    for i in range(n):
        kind = ("part", "person", "error")[i % 3]
        doc_id = f"t{i:04d}"
        if kind == "part":
            term = f"{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}{rng.choice('ABCDEFGHJKLMNPQRSTUVWXYZ')}-{numbers[i]}-{rng.choice('ABCDEFGH')}"
            text = f"The {rng.choice(_PARTS)} {term} fits every {rng.choice(_PRODUCTS)} built after 2019."
        elif kind == "person":
            term = f"{people[i][0]} {people[i][1]}"
            text = f"{term} handled the {rng.choice(_PRODUCTS)} return and confirmed the refund by email."
        else:
            term = f"{rng.choice(_ERRORS)} code {numbers[i]}"
            text = f"When the {rng.choice(_PRODUCTS)} app logs {term}, restart the gateway and try again."
        docs.append({"id": doc_id, "text": text, "metadata": {"kind": kind, "group": i % 4}})
        queries.append((term, doc_id))
    for i, sentence in enumerate(_ORDINARY):
        docs.append({"id": f"f{i:02d}", "text": sentence, "metadata": {"kind": "filler", "group": i % 4}})
    return docs, queries


_PARAPHRASES = [
    ("The bakery on Elm Street sells sourdough loaves every morning.", "where can I buy fresh bread early in the day"),
    ("Our cat sleeps on the warm radiator all winter.", "a pet that naps near the heater during the cold season"),
    ("The city council approved a new bicycle lane downtown.", "local government agreed to build a cycling path in the centre"),
    ("Heavy rain flooded the basement of the old library.", "water damage in the cellar of a historic book building after a storm"),
    ("The violinist practised scales for three hours before the concert.", "a musician rehearsing for a long time ahead of a performance"),
    ("Doctors recommend drinking water regularly during hot weather.", "staying hydrated in a heatwave is medical advice"),
    ("The startup raised ten million dollars from investors.", "a young company received a large funding round"),
    ("Our flight was delayed because of fog at the airport.", "poor visibility made the plane leave late"),
    ("The children built a sandcastle at the beach.", "kids making a structure out of sand by the sea"),
    ("The museum exhibits paintings by Dutch masters.", "a gallery showing art from the Netherlands golden age"),
    ("He repaired the leaking kitchen faucet with a new washer.", "fixing a dripping tap in the kitchen"),
    ("The team won the championship after a penalty shootout.", "a sports club took the title on penalties"),
    ("Volcanic ash forced the closure of several airports.", "eruption dust shut down air travel"),
    ("The chef seasoned the soup with fresh thyme and pepper.", "a cook adding herbs and spice to a broth"),
    ("Students protested against higher tuition fees.", "university pupils demonstrating over the cost of studying"),
    ("The new phone has a battery that lasts two days.", "a smartphone whose charge holds for forty-eight hours"),
    ("Wolves have returned to the forests of central Europe.", "wild canines are back in European woodland"),
    ("The train to Vienna leaves from platform nine.", "which track does the railway service to Austria's capital depart from"),
    ("She planted tulips and daffodils in the front garden.", "putting spring bulbs in the yard by the house"),
    ("The bank raised interest rates by half a percent.", "lenders increased the cost of borrowing slightly"),
    ("Astronomers discovered a planet orbiting a distant star.", "scientists found a new world around another sun"),
    ("The bridge was closed for repairs over the weekend.", "a crossing shut for maintenance on Saturday and Sunday"),
    ("Our neighbour's dog barks whenever the postman arrives.", "a hound that makes noise when the mail is delivered"),
    ("The novel tells the story of a sailor lost at sea.", "a book about a mariner who went missing on the ocean"),
    ("Farmers harvested the wheat before the storm arrived.", "crops were gathered ahead of the bad weather"),
    ("The hotel offers free breakfast to all guests.", "complimentary morning meal at the inn"),
    ("The marathon runner collapsed near the finish line.", "an athlete fainted at the end of the long race"),
    ("Engineers tested the rocket engine in the desert.", "a propulsion trial in an arid location"),
    ("The printer ran out of ink in the middle of the report.", "the copier's cartridge emptied while printing a document"),
    ("Snow covered the mountain village overnight.", "a hamlet in the hills woke up under white flakes"),
    ("The orchestra performed Beethoven's ninth symphony.", "a classical ensemble played a famous choral work"),
    ("A power outage left thousands of homes in darkness.", "many houses lost electricity"),
    ("The gardener pruned the roses in early spring.", "trimming flowering shrubs at the start of the growing season"),
    ("The detective found fingerprints on the broken window.", "an investigator discovered prints on shattered glass"),
    ("Tourists crowded the square to watch the fireworks.", "visitors gathered to see the pyrotechnic show"),
    ("The software update fixed a security vulnerability.", "a patch closed a hole attackers could exploit"),
    ("Our grandmother knits scarves for the whole family.", "an elderly relative making woollen neckwear for everyone"),
    ("The ferry crosses the lake every thirty minutes.", "a boat service over the water runs twice an hour"),
    ("The restaurant was fined for health code violations.", "an eatery penalised for breaking hygiene rules"),
    ("Scientists measured record temperatures in the Arctic.", "researchers recorded unprecedented heat near the North Pole"),
]


def paraphrase_pairs() -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    docs = [{"id": f"p{i:02d}", "text": text, "metadata": {"kind": "plain"}} for i, (text, _) in enumerate(_PARAPHRASES)]
    return docs, [(question, f"p{i:02d}") for i, (_, question) in enumerate(_PARAPHRASES)]


_FACTS = [
    ("The lighthouse keeper's cat is called Biscuit.", "What is the name of the lighthouse keeper's cat?", "Biscuit"),
    ("The observatory's main telescope mirror is 4.2 metres wide.", "How wide is the observatory telescope mirror?", "4.2 metres"),
    ("The bakery's secret ingredient is smoked cardamom.", "What secret ingredient does the bakery use?", "smoked cardamom"),
    ("The expedition reached the summit on the ninth of August.", "On which date did the expedition reach the summit?", "ninth of August"),
    ("The museum's oldest coin was minted in Lydia.", "Where was the museum's oldest coin minted?", "Lydia"),
    ("The ferry's captain once served on an icebreaker called Polaris.", "What was the icebreaker the ferry captain served on?", "Polaris"),
    ("The vineyard's best vintage came from the rainy year 1997.", "Which year produced the vineyard's best vintage?", "1997"),
    ("The library's rarest book is a herbal printed in Venice.", "Where was the library's rarest book printed?", "Venice"),
    ("The orchestra's conductor learned music from her grandfather, a church organist.", "Who taught the conductor music?", "grandfather"),
    ("The castle well is exactly sixty-three metres deep.", "How deep is the castle well?", "sixty-three metres"),
    ("The zoo's oldest tortoise is named Archibald and is 112 years old.", "What is the name of the zoo's oldest tortoise?", "Archibald"),
    ("The bridge was painted international orange to stand out in fog.", "Why was the bridge painted orange?", "fog"),
    ("The school's founder was a retired sea captain named Hollis.", "Who founded the school?", "Hollis"),
    ("The mine closed after a flood in the lower galleries in 1962.", "Why did the mine close?", "flood"),
    ("The garden's tallest tree is a sequoia planted in 1871.", "What kind of tree is the tallest in the garden?", "sequoia"),
    ("The brewery filters its beer through volcanic rock from Iceland.", "What does the brewery filter its beer through?", "volcanic rock"),
    ("The railway tunnel took eleven years to dig.", "How long did it take to dig the railway tunnel?", "eleven years"),
    ("The theatre's ghost is said to be a stagehand called Morris.", "What is the theatre ghost's name?", "Morris"),
    ("The island's only doctor arrives by seaplane on Tuesdays.", "How does the island's doctor arrive?", "seaplane"),
    ("The festival's giant puppet is carried by forty volunteers.", "How many volunteers carry the festival's giant puppet?", "forty"),
]
_PLACES = ["harbour town", "mountain valley", "river city", "coastal village", "university town", "market town",
           "lake district", "old quarter", "island community", "border town"]
_FILLER = [
    "The {p} has a long history of trade and travel.",
    "Visitors often arrive in summer when the weather is mild.",
    "Local families have lived here for many generations.",
    "The main square hosts a weekly market with fruit, cheese and bread.",
    "Narrow streets wind between houses painted in bright colours.",
    "In winter the days are short and the evenings quiet.",
    "The council maintains the parks and the public gardens carefully.",
    "A small museum tells the story of the region's crafts.",
    "Buses connect the centre with the surrounding farms twice an hour.",
    "Many residents work in tourism, fishing or small workshops.",
    "The old church bell still rings every hour of the day.",
    "Cafés along the waterfront serve coffee and pastries from early morning.",
    "Every spring a cleaning day brings neighbours together.",
    "The local newspaper has been printed here since the last century.",
    "Children walk to the primary school along a tree-lined path.",
    "Artists rent studios in the former warehouses near the station.",
    "A cycling route follows the old railway line out of the {p}.",
    "Storms sometimes close the coastal road for a day or two.",
    "The tourist office lends maps and umbrellas to visitors.",
    "Evening concerts take place in the courtyard during July.",
    "The hospital in the next town serves the whole district.",
    "Historians have written several books about the {p}.",
    "The weekly football match draws a loyal crowd.",
    "Farmers bring honey and apples to the autumn fair.",
    "Street lamps were converted to low-energy bulbs a few years ago.",
    "A volunteer group restores the stone walls around the fields.",
    "The community hall hosts dances, lectures and film nights.",
    "Fishing boats return to the quay before sunrise.",
    "A new bakery opened last year beside the post office.",
    "The view from the hill at sunset attracts many photographers.",
    "The town archive keeps letters, maps and old photographs.",
    "Bird watchers come in autumn to see migrating geese.",
    "The bus station was rebuilt after a fire in the eighties.",
    "Shops close early on Sundays and public holidays.",
    "Residents debate every plan for new buildings at length.",
    "The swimming pool opens from June until the end of September.",
    "Old mills along the stream have been turned into flats.",
    "A footpath leads from the centre to the ruins of a watchtower.",
    "The annual parade celebrates the founding of the {p}.",
    "Guided walks explain the architecture of the older houses.",
]


def long_documents(seed: int = 5) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """20 documents of roughly 550 model tokens: shared-style filler about a place, with the one
    sentence that answers the document's question placed after the first ~330 tokens."""
    rng = random.Random(seed)
    docs: list[dict[str, Any]] = []
    questions: list[tuple[str, str, str]] = []
    for i, (fact, question, answer) in enumerate(_FACTS):
        place = _PLACES[i % len(_PLACES)]
        sentences = [s.format(p=place) for s in rng.sample(_FILLER, 34)]
        sentences.insert(24, fact)  # ~24 filler sentences (~330 tokens) come first
        docs.append({"id": f"L{i:02d}", "text": f"About the {place}. " + " ".join(sentences), "metadata": {"kind": "long"}})
        questions.append((question, f"L{i:02d}", answer))
    return docs, questions
