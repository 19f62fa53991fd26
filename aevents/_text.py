"""Words in messages: counted nouns ("1 delivery", "2 deliveries") and articles ("an int")."""

from __future__ import annotations

__all__ = ["counted", "plural", "with_article"]

_SIBILANT_ENDINGS = ("s", "x", "z", "ch", "sh")
_VOWELS = frozenset("aeiou")
# Words that start with a vowel letter but not a vowel sound ("a UUID", "a union").
_CONSONANT_SOUNDS = ("uni", "use", "usu", "uu", "one", "eu")


def plural(noun: str) -> str:
    """The plural of an English noun (or noun phrase: its last word changes)."""
    if noun.endswith("y") and len(noun) > 1 and noun[-2] not in _VOWELS:
        return noun[:-1] + "ies"
    if noun.endswith(_SIBILANT_ENDINGS):
        return noun + "es"
    return noun + "s"


def counted(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless the count is one: "1 delivery", "0 events"."""
    return f"{count} {noun if count == 1 else plural(noun)}"


def with_article(word: str) -> str:
    """``word`` after "a" or "an", by how it is likely said: "an int", "a str", "a UUID"."""
    lowered = word.lower()
    vowel_sound = lowered[:1] in _VOWELS and not lowered.startswith(_CONSONANT_SOUNDS)
    return f"{'an' if vowel_sound else 'a'} {word}"
