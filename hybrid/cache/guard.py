"""The semantic guard: a similar-looking cached entry is rejected when the two texts disagree on what matters.

Embeddings place "enable 2FA" next to "disable 2FA" and "15% of 200" next to "25% of 200"; a wrong hit gives a
user someone else's answer to a different question, so before a semantic hit is served both texts must agree on
numbers, negation, polarity words (enable/disable, increase/decrease, ...), named entities, units and language.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

_WORD = re.compile(r"[^\W_]+(?:[-'][^\W_]+)*", re.UNICODE)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:\.\d+)?")
_SENTENCE_START = re.compile(r"(?:^|[.!?:\n]\s*)([^\W\d_][\w'-]*)")

NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1000000", "billion": "1000000000", "half": "0.5",
    "double": "x2", "twice": "x2", "triple": "x3", "quarter": "0.25", "dozen": "12",
}
NEGATIONS = {
    "not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot", "cant", "can't",
    "don't", "dont", "doesn't", "doesnt", "didn't", "didnt", "isn't", "isnt", "aren't", "arent", "wasn't",
    "weren't", "won't", "wont", "wouldn't", "shouldn't", "couldn't", "haven't", "hasn't", "hadn't", "mustn't",
    "n't", "nicht", "kein", "keine", "pas", "jamais", "nunca", "nada", "sin", "non", "nie",
}
# antonym pairs: a hit is refused when one text has one side and the other text the other side
_ANTONYM_PAIRS = (
        "enable disable", "enabled disabled", "activate deactivate", "on off", "increase decrease", "add remove",
        "install uninstall", "allow deny", "allow block", "block unblock", "encrypt decrypt", "encode decode",
        "import export", "upload download", "buy sell", "start stop", "open close", "lock unlock", "show hide",
        "max min", "maximum minimum", "before after", "above below", "more less", "higher lower", "largest smallest",
        "biggest smallest", "best worst", "first last", "positive negative", "true false", "accept reject",
        "include exclude", "subscribe unsubscribe", "connect disconnect", "mount unmount", "compress decompress",
        "zip unzip", "push pull", "input output", "left right", "north south", "east west", "up down", "rise fall",
        "gain lose", "win lose", "hot cold", "fast slow", "cheap expensive", "cheapest expensive", "early late",
        "earliest latest", "oldest newest", "old new", "forward backward", "inside outside", "sum difference",
        "multiply divide", "plus minus", "credit debit", "inbound outbound", "ascending descending", "asc desc",
        "upgrade downgrade", "join leave", "login logout", "sign-in sign-out", "merge split", "create delete",
        "insert delete", "freeze unfreeze", "mute unmute", "follow unfollow", "pause resume", "hire fire",
        "import export", "synchronous asynchronous", "sync async", "public private", "internal external",
)
ANTONYMS: dict[str, set[str]] = {}
for _pair in _ANTONYM_PAIRS:
    _a, _b = _pair.split()
    ANTONYMS.setdefault(_a, set()).add(_b)
    ANTONYMS.setdefault(_b, set()).add(_a)
UNITS = {
    "km": "km", "kilometer": "km", "kilometers": "km", "kilometre": "km", "kilometres": "km", "mile": "mi",
    "miles": "mi", "mi": "mi", "m": "m", "meter": "m", "meters": "m", "metre": "m", "metres": "m", "cm": "cm",
    "mm": "mm", "inch": "in", "inches": "in", "foot": "ft", "feet": "ft", "ft": "ft", "yard": "yd", "yards": "yd",
    "kg": "kg", "kilogram": "kg", "kilograms": "kg", "g": "g", "gram": "g", "grams": "g", "lb": "lb",
    "lbs": "lb", "pound": "lb", "pounds": "lb", "ounce": "oz", "ounces": "oz", "oz": "oz", "celsius": "C",
    "centigrade": "C", "fahrenheit": "F", "kelvin": "K", "liter": "l", "liters": "l", "litre": "l",
    "litres": "l", "gallon": "gal", "gallons": "gal", "ml": "ml", "usd": "usd", "dollar": "usd", "dollars": "usd",
    "eur": "eur", "euro": "eur", "euros": "eur", "gbp": "gbp", "yen": "jpy", "jpy": "jpy", "bitcoin": "btc",
    "byte": "B", "bytes": "B", "kb": "kB", "mb": "MB", "gb": "GB", "tb": "TB", "kib": "KiB", "mib": "MiB",
    "gib": "GiB", "second": "s", "seconds": "s", "sec": "s", "minute": "min", "minutes": "min", "hour": "h",
    "hours": "h", "day": "d", "days": "d", "week": "wk", "weeks": "wk", "month": "mo", "months": "mo",
    "year": "yr", "years": "yr", "percent": "%", "%": "%", "mph": "mph", "kmh": "kmh", "watt": "W", "watts": "W",
    "kwh": "kWh", "hz": "Hz", "ghz": "GHz", "mhz": "MHz", "°c": "C", "°f": "F", "$": "usd", "€": "eur", "£": "gbp",
}
STOPWORDS = {
    "en": {"the", "is", "are", "what", "how", "do", "does", "i", "my", "to", "of", "and", "in", "a", "an", "for",
           "can", "you", "with", "on", "this", "that", "it", "why", "which", "be", "should", "me", "your"},
    "es": {"el", "la", "los", "las", "es", "qué", "que", "cómo", "como", "de", "y", "en", "un", "una", "para",
           "por", "mi", "puedo", "se", "con", "del", "al", "cuál", "son", "está"},
    "fr": {"le", "la", "les", "est", "quel", "quelle", "comment", "de", "et", "en", "un", "une", "pour", "mon",
           "ma", "je", "des", "du", "avec", "sur", "qui", "que", "sont", "puis", "ce"},
    "de": {"der", "die", "das", "ist", "wie", "was", "und", "ein", "eine", "für", "mein", "meine", "ich", "mit",
           "auf", "zu", "den", "dem", "von", "kann", "sind", "nicht", "welche", "warum"},
    "it": {"il", "lo", "la", "gli", "le", "è", "come", "che", "cosa", "di", "e", "un", "una", "per", "mio", "mia",
           "posso", "con", "del", "della", "sono", "qual", "quale"},
    "pt": {"o", "a", "os", "as", "é", "como", "que", "de", "e", "um", "uma", "para", "meu", "minha", "posso",
           "com", "do", "da", "são", "qual", "não", "em"},
    "nl": {"de", "het", "is", "hoe", "wat", "en", "een", "voor", "mijn", "ik", "met", "op", "van", "kan", "zijn",
           "niet", "welke", "waarom"},
}
# capitalised words that start sentences without naming anything
COMMON = {
    "what", "how", "why", "when", "where", "which", "who", "whom", "whose", "is", "are", "was", "were", "do",
    "does", "did", "can", "could", "should", "would", "will", "may", "might", "must", "shall", "i", "i'm", "i've",
    "my", "me", "we", "our", "you", "your", "it", "its", "this", "that", "these", "those", "there", "the", "a",
    "an", "please", "explain", "write", "tell", "give", "list", "describe", "summarize", "summarise", "translate",
    "show", "make", "create", "find", "compare", "convert", "calculate", "help", "hi", "hello", "hey", "thanks",
    "thank", "user", "assistant", "system", "if", "in", "on", "for", "to", "of", "and", "or", "but", "with",
    "any", "some", "ok", "okay", "yes", "no", "not", "let", "let's", "define", "name", "suggest", "recommend",
    "generate", "draft", "fix", "debug", "check", "get", "set", "turn", "use", "using", "steps", "step", "best",
    "good", "quick", "simple", "short", "brief", "whats", "what's", "hows", "how's", "im", "am",
}


@dataclass(frozen=True)
class Facts:
    numbers: frozenset[str]
    negated: bool
    polarity: frozenset[str]
    entities: frozenset[str]
    units: frozenset[str]
    unit_order: tuple[str, ...]  # "10 km to miles" is not "10 miles to km"
    language: str
    words: frozenset[str]


def _script(text: str) -> str:
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            script = name.split(" ")[0] if name else "?"
            counts[script] = counts.get(script, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else ""


def _language(words: list[str], text: str) -> str:
    script = _script(text)
    if script and script != "LATIN":
        return script.lower()
    scores = {lang: sum(1 for w in words if w in sw) for lang, sw in STOPWORDS.items()}
    best = max(scores, key=scores.__getitem__)
    return best if scores[best] > 0 else ""


@functools.lru_cache(maxsize=8192)
def facts(text: str) -> Facts:
    """What the guard compares, for one text (cached: stored entries come back as candidates again and again)."""
    text = unicodedata.normalize("NFKC", text)
    raw_words = _WORD.findall(text)
    words = [w.lower() for w in raw_words]
    word_set = frozenset(words)
    numbers = {n.replace(",", "") for n in _NUMBER.findall(text)}
    numbers |= {NUMBER_WORDS[w] for w in words if w in NUMBER_WORDS}
    negations = sum(1 for w in words if w in NEGATIONS or w.endswith("n't"))
    starts = {m.group(1) for m in _SENTENCE_START.finditer(text)}
    entities = set()
    for raw in raw_words:
        low = raw.lower()
        inner_caps = any(c.isupper() for c in raw[1:]) or any(c.isdigit() for c in raw)
        if raw[:1].isupper() and low not in COMMON and (raw not in starts or inner_caps or low not in COMMON):
            if raw in starts and not inner_caps and low in STOPWORDS["en"]:
                continue
            entities.add(low)
        elif inner_caps and any(c.isalpha() for c in raw):
            entities.add(low)
    unit_order = tuple(dict.fromkeys(UNITS[w] for w in words if w in UNITS))
    units = set(unit_order) | {UNITS[s] for s in ("°c", "°f", "$", "€", "£", "%") if s in text.lower()}
    return Facts(
        numbers=frozenset(numbers),
        negated=negations % 2 == 1,
        polarity=frozenset(w for w in words if w in ANTONYMS),
        entities=frozenset(entities),
        units=frozenset(units),
        unit_order=unit_order,
        language=_language(words, text),
        words=word_set,
    )


def _opposed(fa: Facts, fb: Facts) -> bool:
    """A word only ``fa`` has, whose antonym only ``fb`` has ("enable" here, "disable" there)."""
    for w in fa.polarity - fb.polarity:
        if any(o in fb.polarity and o not in fa.polarity for o in ANTONYMS[w]):
            return True
    return False


def disagreement(a: str, b: str) -> str | None:
    """Why two texts must not share an answer, or ``None`` when the guard lets the hit through."""
    fa, fb = facts(a), facts(b)
    if fa.language and fb.language and fa.language != fb.language:
        return "language"
    if fa.numbers != fb.numbers:
        return "numbers"
    if fa.negated != fb.negated:
        return "negation"
    if _opposed(fa, fb) or _opposed(fb, fa):
        return "polarity"
    if fa.units != fb.units or fa.unit_order != fb.unit_order:
        return "units"
    # an entity of one text must appear, as a word, in the other (capitalisation may differ)
    if any(e not in fb.words for e in fa.entities) or any(e not in fa.words for e in fb.entities):
        return "entities"
    return None
