"""Caption metrics: BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, equal to the COCO caption toolkit's.

Captions are compared as *words*, never as vocabulary ids: a metric on ids silently depends on
the vocabulary and cannot be compared with published numbers. Published numbers come from the COCO
caption toolkit (``pycocoevalcap``), so :func:`evaluate_captions` repeats it step by step:

1. every caption is tokenised as the toolkit's ``PTBTokenizer`` does (Stanford's Penn Treebank
   tokenizer, then lower case, then a fixed list of punctuation tokens removed), here in Python by
   :func:`ptb_tokenize`;
2. BLEU, ROUGE-L and CIDEr-D are computed by the plain-Python functions below, which repeat the
   toolkit's arithmetic (its smoothing constants, its choice of reference length, ...);
3. METEOR runs the official METEOR 1.5 jar that ``pycocoevalcap`` ships (it needs Java), and SPICE,
   on request only, the SPICE jar (it needs Java and Stanford CoreNLP).

The results equal the toolkit's to 1e-9 (the tests check it). No TensorFlow is imported.
"""
from __future__ import annotations

import atexit
import collections
import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import queue
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

#: The toolkit's names of the scores, in the order :func:`evaluate_captions` reports them.
METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
#: What :func:`evaluate_captions` computes when not told otherwise ("Bleu" is all four). SPICE is
#: slow and needs Stanford CoreNLP, so it is only computed on request.
DEFAULT_METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr")

JAVA_ADVICE = ("install Java with `apt-get install default-jre-headless` "
               "(or `conda install -c conda-forge openjdk`)")


class MetricUnavailableError(RuntimeError):
    """A metric cannot be computed here (no Java, no CoreNLP, ...); the message says what to do."""


class MetricUnavailableWarning(UserWarning):
    """:func:`evaluate_captions` left out a metric that cannot be computed here."""


# =================================================================================================
# Tokenisation: the toolkit's PTBTokenizer (Stanford CoreNLP 3.4.1) in Python
# =================================================================================================
#
# The Java tokenizer is a JFlex lexer: at each position every rule is tried, the longest match
# wins, and of equally long matches the earliest rule. Some rules only match when followed by
# certain text (JFlex "trailing context": "'s" only before a non-letter); that text counts for
# the length but is not consumed. The rules below are those of CoreNLP 3.4.1 that caption text
# can reach, in the lexer's order, checked against the jar on hundreds of thousands of generated
# strings. JFlex is told ``%caseless``, which makes literal text case-insensitive but leaves
# character classes such as ``[A]`` case-sensitive; :func:`_compile_rules` does the same.

# Character classes. Python's \w and \d stand in for Java's isLetter and isDigit. Characters
# outside the Basic Multilingual Plane reach the Java lexer as two surrogates that it cannot
# tokenise and drops, so no class here matches them either.
_NOT_BMP = "[\U00010000-\U0010FFFF]"
_NUMERIC_NOT_DIGIT = (r"[\u00B2\u00B3\u00B9\u00BC-\u00BE\u2070-\u209F\u2150-\u218F"
                      r"\u2460-\u24FF\u2776-\u2793]")
# Marks and modifiers that the lexer counts as parts of words although Java does not call them
# letters (combining accents, Indic vowel signs, ...), and the soft hyphen.
_WORD_MARKS = (r"[\u00AD\u0237-\u024F\u02C2-\u02C5\u02D2-\u02DF\u02E5-\u02FF\u0300-\u036F"
               r"\u0370-\u037D\u0384\u0385\u03CF\u03F6\u03FC-\u03FF\u0483-\u0487\u04CF"
               r"\u04F6-\u04FF\u0510-\u0525\u055A-\u055F\u0591-\u05BD\u05BF\u05C1\u05C2\u05C4"
               r"\u05C5\u05C7\u0615-\u061A\u063B-\u063F\u064B-\u065E\u0670\u06D6-\u06EF"
               r"\u06FA-\u06FF\u070F\u0711\u0730-\u074F\u0750-\u077F\u07A6-\u07B1\u07CA-\u07F5"
               r"\u07FA\u0900-\u0903\u093C\u093E-\u094E\u0951-\u0955\u0962-\u0963\u0981-\u0983"
               r"\u09BC-\u09C4\u09C7\u09C8\u09CB-\u09CD\u09D7\u09E2\u09E3\u0A01-\u0A03\u0A3C"
               r"\u0A3E-\u0A4F\u0A81-\u0A83\u0ABC-\u0ACF\u0B82\u0BBE-\u0BC2\u0BC6-\u0BC8"
               r"\u0BCA-\u0BCD\u0C01-\u0C03\u0C3E-\u0C56\u0D3E-\u0D44\u0D46-\u0D48\u0E30-\u0E3A"
               r"\u0E47-\u0E4E\u0EB1-\u0EBC\u0EC8-\u0ECD]")
_LETTER = rf"(?:(?!{_NUMERIC_NOT_DIGIT}|{_NOT_BMP})[^\W\d_])"
_DIGIT = rf"(?:(?!{_NOT_BMP})\d)"
_ALNUM = rf"(?:{_LETTER}|{_DIGIT})"
# Inside plain words (only there) marks and HTML-escaped accents count as letters too.
_WORD_LETTER = rf"(?:{_LETTER}|{_WORD_MARKS}|&[aeiouAEIOU](?:acute|grave|uml);)"
_SPACE = r"[ \t\u00A0\u2000-\u200A\u3000]"
_SPACE_OR_NEWLINE = r"[ \t\u00A0\u2000-\u200A\u3000\n\u0085]"
_IN_SENTENCE_PUNCTUATION = r"[,;:\u3001]"
_APOSTROPHE = r"(?:['\u0092\u2019]|&apos;)"
_ANY_APOSTROPHE = rf"(?:{_APOSTROPHE}|[`\u0091\u2018\u201B])"


# Java's [:uppercase:]: the upper-case letters of the BMP.
_UPPERCASE = "[" + "".join(re.escape(chr(c)) for c in range(0x10000) if chr(c).isupper()) + "]"


# Words and the pieces split off them: "it's" -> "it" "'s", "don't" -> "do" "n't".
_WORD_PART = rf"{_WORD_LETTER}(?:{_WORD_LETTER}|{_DIGIT})*"
_WORD = rf"{_WORD_PART}(?:[.!?]{_WORD_PART})*"  # "x.y" and "hello!world" are single words
_CLITIC = rf"{_APOSTROPHE}(?:[msdMSD]|re|ve|ll)"
_BEFORE_NOT = r"[A-Za-z\u00AD]*[A-MO-Za-mo-z]\u00AD*"
_NOT = rf"n{_ANY_APOSTROPHE}t"
_APOSTROPHE_WORD = (
    rf"{_APOSTROPHE}n{_APOSTROPHE}?|[lLdDjJ]{_APOSTROPHE}|dunkin{_APOSTROPHE}"
    rf"|somethin{_APOSTROPHE}|ol{_APOSTROPHE}|{_APOSTROPHE}em|diff{_ANY_APOSTROPHE}rent"
    rf"|[A-HJ-XZn]{_ANY_APOSTROPHE}{_LETTER}{{2}}{_LETTER}*|{_APOSTROPHE}[2-9]0s"
    rf"|{_APOSTROPHE}till?|{_LETTER}{_LETTER}*[aeiouyAEIOUY]{_ANY_APOSTROPHE}[aeiouA-Z]{_LETTER}*"
    rf"|{_APOSTROPHE}cause|cont'd\.?|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l"
    rf"|o{_ANY_APOSTROPHE}o")
# Hyphenated and slashed words stay whole: "t-shirt", "3-year-old", "and/or".
_HYPHEN = r"[-_\u058A\u2010\u2011]"
_PREFIXED = rf"[dDoOlL]{_ANY_APOSTROPHE}{_ALNUM}"
_THING = rf"(?:{_PREFIXED})?{_ALNUM}+(?:{_HYPHEN}(?:{_PREFIXED})?{_ALNUM}+)*"
_ACRONYM_LETTERS = r"[A-Za-z](?:\.[A-Za-z])*"
_HYPHENATED = (r"[A-Za-z0-9][A-Za-z0-9.,\u00AD]*"
               r"(?:-(?:[A-Za-z](?:\.[A-Za-z])+\.|[A-Za-z0-9\u00AD]+))+")
_SLASHED = r"[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"
_CAPITALS_AND = r"[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+"
# Numbers: "1,000", "3.5", "12:30", "1/2", "5 1/2" (one token, with a non-breaking space).
_NUM = rf"(?:{_DIGIT}*(?:[.:,\u00AD\u066B\u066C]{_DIGIT}+)+|{_DIGIT}+)"
_FRACTION = rf"(?:{_DIGIT}{{1,4}}[- \u00A0])?{_DIGIT}{{1,4}}(?:\\?/|\u2044){_DIGIT}{{1,4}}"
_SUPERSCRIPT = (r"[\u207A\u207B\u208A\u208B]?"
                r"(?:[\u2070\u00B9\u00B2\u00B3\u2074-\u2079]+|[\u2080-\u2089]+)")
_PHONE = (r"(?:\([0-9]{2,3}\)[ \u00A0]?|(?:\+\+?)?(?:[0-9]{2,4}[- \u00A0])?[0-9]{2,4}[- \u00A0])"
          r"[0-9]{3,4}[- \u00A0]?[0-9]{3,5}"
          r"|(?:(?:\+\+?)?[0-9]{2,4}\.)?[0-9]{2,4}\.[0-9]{3,4}\.[0-9]{3,5}")
_CURRENCY_SIGN = (r"[\u00A2\u00A3\u00A4\u00A5\u0080\u20A0\u20AC\u060B\u0E3F\u20A4"
                  r"\uFFE0\uFFE1\uFFE5\uFFE6]")
# Abbreviations keep their period. After the first group ("etc.", "Jan.", "Inc.") a capital
# starts a new sentence, so the period is also returned as a token of its own.
_ABBREVIATION_SENTENCE_END = (
    r"(?:jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|mon|tue|tues|wed|thu|thurs|fri"
    r"|ala|ariz|[A]z|[A]rk|calif|colo|conn|ct|dak|[D]el|fla|ga|[I]ll|ind|kans?|ky|[L]a|[M]ass"
    r"|md|mich|minn|[M]iss|mo|mont|neb|nev|okla|[O]re|[P]a|penn|tenn|[T]ex|va|vt|[W]ash|wisc?"
    r"|wyo|inc|cos?|corp|pp?t[ye]s?|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys|tel|est|ext|sq"
    r"|jr|sr|bros|(?:ed|ph)\.d|blvd|rd|esq|etc|al|seq|bldg)\.")
_ABBREVIATION_WORD = (
    rf"(?:mr|mrs|ms|[M]iss|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj"
    rf"|sgt|cpl|pvt|mt|capt|ste?|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|ft|adj|adv"
    rf"|asst|assoc|ens|insp|mlle|mme|msgr|sfc|vs|alex|wm|jos|cie|a\.k\.a|cf|treas|ph"
    rf"|{_ACRONYM_LETTERS}|invt|elec|natl|m[ft]g|dept)")
_ABBREVIATION_BEFORE_NUMBER = r"(?:ca|figs?|prop|nos?|art|bldg|pp|op)\."
# An acronym or a single letter before one of these capitalised words ends a sentence.
_SENTENCE_STARTS = (
    r"[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er"
    r"|[H]ere|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\.|[M]s\.|[N]ow|[O]nce|[O]ne"
    r"|[O]ther|[O]ur|[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here"
    r"|[T]hese|[T]hey|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et|[Y]ou")
_SGML = (r"<(?:[!?][A-Za-z-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.-]*"
         r"[ ]*=[ ]*(?:'[^'\r\n]*'|\"[^\"\r\n]*\")|[A-Za-z][A-Za-z0-9_:.-]*))*[ ]*/?"
         r"|/[A-Za-z][A-Za-z0-9_:.-]*)[ ]*>")
_SENTENCE_END = rf"{_SPACE_OR_NEWLINE}(?:{_SPACE_OR_NEWLINE}|{_UPPERCASE}|{_SGML})"
_URL = r"https?://[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-]"
_WEB_ADDRESS = (r"(?:(?:www\.(?:[^ \t\n\f\r\"<>|.!?(){},]+\.)+[a-zA-Z]{2,4})"
                r"|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\.)+(?:com|net|org|edu)))"
                r"(?:/[^ \t\n\f\r\"<>|()]+[^ \t\n\f\r\"<>|.!?(){},-])?")
_EMAIL = (r"(?:&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r\"<>|(){}\u00A0]*@"
          r"(?:[^ \t\n\f\r\"<>|(){}.\u00A0]+\.)*[^ \t\n\f\r\"<>|(){}.\u00A0]+(?:&gt;|>)?")
_TREEBANK_SPECIAL = (rf"-(?:RRB|LRB|RCB|LCB|RSB|LSB)-|C\.D\.s|pro-|anti-|S(?:&|&amp;)P-500"
                     rf"|S(?:&|&amp;)Ls|Cap{_APOSTROPHE}n|c{_APOSTROPHE}est")
_QUOTES = (rf"{_APOSTROPHE}|''|[`\u2018\u2019\u201A\u201B\u201C\u201D\u0091\u0092\u0093\u0094"
           r"\u201E\u201F\u2039\u203A\u00AB\u00BB]{1,2}")
_FILE_NAME = (rf"{_ALNUM}+(?:\.{_ALNUM}+)*\.(?:bat|bmp|bz2|c|class|cgi|cpp|dll|doc|docx|exe|gif"
              r"|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps|py|sql|tar|txt"
              r"|wav|x|xml|zip)")
_SMILEY = r"[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]]"
_ASIAN_SMILEY = (r"[-^x=~<>']_[-^x=~<>']|\([-^x=~<>'][_.]?[-^x=~<>']\)"
                 r"|\([\^x=~<>']-[\^x=~<>'`]\)")
_SYMBOL = (r"[+%&~^|\\¦\u00A7¨\u00A9\u00AC\u00AE¯\u00B0-\u00B3\u00B4-\u00BA\u00D7\u00F7\u0387"
           r"\u05BE\u05C0\u05C3\u05C6\u05F3\u05F4\u0600-\u0603\u0606-\u060A\u060C\u0614\u061B"
           r"\u061E\u066A\u066D\u0703-\u070D\u07F6\u07F7\u07F8\u0964\u0965\u0E4F\u1FBD\u2016"
           r"\u2017\u2020-\u2023\u2030-\u2038\u203B\u203E-\u2042\u2044\u207A-\u207F\u208A-\u208E"
           r"\u2100-\u214F\u2190-\u21FF\u2200-\u2BFF\u3012\u30FB\uFF01-\uFF0F\uFF1A-\uFF20"
           r"\uFF3B-\uFF40\uFF5B-\uFF65]")

_CURRENCY = {"\u00A2": "cents", "\u00A3": "#", "\u0080": "$", "\u00A4": "$", "\u20A0": "$",
             "\u20AC": "$"}
_FRACTION_CHARACTERS = {"\u00BC": "1/4", "\u00BD": "1/2", "\u00BE": "3/4", "\u2153": "1/3",
                        "\u2154": "2/3"}
_BRACKETS = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}

# A rule's action turns the matched text into (token or None, number of characters consumed).
_Action = Callable[[str], "tuple[str | None, int]"]


def _emit(transform: Callable[[str], str] = str) -> _Action:
    return lambda text: (transform(text), len(text))


def _skip(text: str) -> tuple[None, int]:
    return None, len(text)


def _split_off(characters: int) -> _Action:
    """"gonna" -> "gon", then "na" is read again: the end is split off as a token of its own."""
    return lambda text: (text[:-characters], len(text) - characters)


def _and_period(text: str) -> tuple[str, int]:
    """"etc." at a sentence end: the token keeps its period, and the period is read again."""
    return text, len(text) - 1


def _acronym_and_period(text: str) -> tuple[str, int]:
    """"U.S." before "The": "U.S." and "."; a single letter "b." gives "b" and "."."""
    return (text[:-1], 1) if len(text) == 2 else (text, len(text) - 1)


def _latex_quotes(text: str, opening: bool = False) -> str:
    """Quotes as the Penn Treebank writes them: `` and ` open, '' and ' close."""
    text = re.sub(r"&apos;|'", "`" if opening else "'", text)
    text = re.sub(r"\"|&quot;", "``" if opening else "''", text)
    for characters, quote in (("\u0091\u2018\u201B\u2039", "`"), ("\u0092\u2019\u203A", "'"),
                              ("\u0093\u201C\u00AB", "``"), ("\u0094\u201D\u00BB", "''")):
        text = re.sub(f"[{characters}]", quote, text)
    return text


def _without_soft_hyphens(text: str) -> str:
    return text.replace("\u00AD", "") or "-"


def _parentheses_named(text: str) -> str:
    return text.replace("(", "-LRB-").replace(")", "-RRB-")


_same = _emit()
_word = _emit(_without_soft_hyphens)
_closing_quotes = _emit(_latex_quotes)
_opening_quotes = _emit(lambda text: _latex_quotes(text, opening=True))
_ampersand = _emit(lambda text: re.sub("(?i)&amp;", "&", text))

# (name, pattern, trailing context or "", action), in the lexer's order.
_RULES: list[tuple[str, str, str, _Action]] = [
    ("programming language", r"c\+\+|[cf]#", "", _same),
    ("cannot, 'twas", r"cannot|'twas", "", _split_off(3)),
    ("gonna, 'tis", r"'tis|gonna|gotta|lemme|gimme|wanna", "", _split_off(2)),
    ("SGML tag", _SGML, "", _emit(lambda text: text.replace(" ", "\u00A0"))),
    ("dash", r"&(?:MD|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", "", _emit(lambda _: "--")),
    ("&amp;", r"&amp;", "", _ampersand),
    ("SGML entity", r"&(?:HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);", "", _same),
    ("word before 's", _WORD, _CLITIC, _word),
    ("word before n't", _BEFORE_NOT, _NOT, _word),
    ("word", _WORD, "", _word),
    ("word with an apostrophe", _APOSTROPHE_WORD, "", _same),
    ("y'", rf"y{_APOSTROPHE}", _LETTER, _same),
    ("URL", _URL, "", _same),
    ("web address", _WEB_ADDRESS, "", _same),
    ("e-mail address", _EMAIL, "", _same),
    ("@name, #tag", rf"@[a-zA-Z_][a-zA-Z_0-9]*|#{_WORD_LETTER}+", "", _same),
    ("'s before a non-letter", _CLITIC, "[^A-Za-z]", _closing_quotes),
    ("n't", _NOT, "", _closing_quotes),
    ("date", rf"{_DIGIT}{{1,2}}[-/]{_DIGIT}{{1,2}}[-/]{_DIGIT}{{2,4}}", "", _same),
    ("number", rf"[-+]?{_NUM}", "", _emit(lambda text: text.replace("\u00AD", ""))),
    ("superscript number", _SUPERSCRIPT, "", _same),
    ("fraction", _FRACTION, "", _emit(lambda text: text.replace(" ", "\u00A0"))),
    ("fraction character", r"[\u00BC\u00BD\u00BE\u2153-\u215E]", "",
     _emit(lambda text: _FRACTION_CHARACTERS.get(text, text))),
    ("treebank special", _TREEBANK_SPECIAL, "", _ampersand),
    ("slashed words", _SLASHED, "", _same),
    ("dollar", r"[A-Z]*\$|#", "", _same),
    ("currency", _CURRENCY_SIGN, "", _emit(lambda text: _CURRENCY.get(text, text))),
    ("acronym at a sentence end", rf"{_ACRONYM_LETTERS}\.",
     rf"{_SPACE_OR_NEWLINE}+(?:{_SENTENCE_STARTS}){_SPACE_OR_NEWLINE}", _acronym_and_period),
    ("abbreviation before a number", _ABBREVIATION_BEFORE_NUMBER,
     rf"{_SPACE_OR_NEWLINE}?{_DIGIT}", _same),
    ("Pty. Ltd.", r"(?:pt[eyEY]|co)\.", rf"{_SPACE}(?:ltd|lim)", _same),
    ("abbreviation at a sentence end", _ABBREVIATION_SENTENCE_END, _SENTENCE_END, _and_period),
    ("abbreviation inside a sentence", _ABBREVIATION_SENTENCE_END, r"(?s:..)", _same),
    ("abbreviation at the very end", _ABBREVIATION_SENTENCE_END, "", _and_period),
    ("title or acronym", rf"{_ABBREVIATION_WORD}\.", "", _same),
    ("title before a space", _ABBREVIATION_WORD, _SPACE, _same),
    ("letters before a space", _ACRONYM_LETTERS, _SPACE_OR_NEWLINE, _same),
    ("'90", rf"{_APOSTROPHE}[0-9][0-9]", _SPACE_OR_NEWLINE, _same),
    ("degrees", r"°[CF]", "", _same),
    ("file name", _FILE_NAME, rf"(?:{_SPACE_OR_NEWLINE}|[.?!,])", _same),
    ("word and period before a comma", rf"{_WORD}\.", _IN_SENTENCE_PUNCTUATION, _word),
    ("phone number", _PHONE, "",
     _emit(lambda text: _parentheses_named(text.replace(" ", "\u00A0")))),
    ("opening double quote", r"\"|&quot;", "[A-Za-z0-9$]", _opening_quotes),
    ("closing double quote", r"\"|&quot;", "", _closing_quotes),
    ("<", r"<|&lt;", "", _emit(lambda _: "<")),
    (">", r">|&gt;", "", _emit(lambda _: ">")),
    ("smiley", _SMILEY, "[^A-Za-z0-9]", _emit(_parentheses_named)),
    ("asian smiley", _ASIAN_SMILEY, "", _emit(_parentheses_named)),
    ("bracket", r"[()\[\]{}]", "", _emit(_BRACKETS.__getitem__)),
    ("hyphens", r"-+", "", _emit(lambda text: "--" if 3 <= len(text) <= 4 else text)),
    ("ellipsis", r"\.{3,5}|(?:\.[ \u00A0]){2,4}\.|[\u0085\u2026]", "", _emit(lambda _: "...")),
    ("@, #, _", r"@+|#+|_+", "", _same),
    ("asterisks", r"\*+|(?:\\\*){1,3}", "", _same),
    ("comma, semicolon, colon", _IN_SENTENCE_PUNCTUATION, "", _same),
    ("! and ?", r"[?!]+", "", _same),
    ("period", r"[.¡¿\u037E\u0589\u061F\u06D4\u0700-\u0702\u07FA\u3002]", "", _same),
    ("=", r"=", "", _same),
    ("/", r"/", "", _same),
    ("hyphenated word and period before a comma", rf"{_HYPHENATED}\.", _IN_SENTENCE_PUNCTUATION,
     _word),
    ("hyphenated word", _HYPHENATED, "", _word),
    ("word with digits and period before a comma", rf"{_THING}\.", _IN_SENTENCE_PUNCTUATION, _same),
    ("word with digits", _THING, "", _same),
    ("AT&T and period before a comma", rf"{_CAPITALS_AND}\.", _IN_SENTENCE_PUNCTUATION, _ampersand),
    ("AT&T", _CAPITALS_AND, "", _ampersand),
    ("opening quote", "'", r"[A-Za-z][^ \t\n\r\u00A0]", _opening_quotes),
    ("quote", _QUOTES, "", _closing_quotes),
    ("'s", _CLITIC, "", _closing_quotes),
    ("<< >>", r"<<|>>", "", _same),
    ("symbol", _SYMBOL, "", _same),
    ("space", rf"\x00|{_SPACE}+|[\u200B\u200E\u200F\uFEFF]|&nbsp;", "", _skip),
    ("line end", r"\n", "", _same),
    ("untokenizable", r"(?s:.)", "", _skip),  # the Java lexer drops what it cannot read, too
]


def _top_level_alternatives(pattern: str) -> list[str]:
    """``"a|b(c|d)"`` -> ``["a", "b(c|d)"]``. JFlex takes the longest alternative, Python's ``re``
    the first that matches, so alternatives are tried as rules of their own."""
    parts, depth, in_class, start, i = [], 0, False, 0, 0
    while i < len(pattern):
        character = pattern[i]
        if character == "\\":
            i += 2
            continue
        if in_class:
            in_class = character != "]"
        elif character == "[":
            in_class = True
        elif character in "()":
            depth += 1 if character == "(" else -1
        elif character == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    return parts + [pattern[start:]]


def _case_sensitive_classes(pattern: str) -> str:
    """Wrap every ``[...]`` in ``(?-i:...)``: JFlex's %caseless does not reach into classes."""
    pieces, i = [], 0
    while i < len(pattern):
        if pattern[i] == "\\":
            pieces.append(pattern[i : i + 2])
            i += 2
        elif pattern[i] == "[":
            end = i + 1
            while pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            pieces.append(f"(?-i:{pattern[i:end + 1]})")
            i = end + 1
        else:
            pieces.append(pattern[i])
            i += 1
    return "".join(pieces)


class _Rule(NamedTuple):
    name: str
    regex: re.Pattern  # group "token" is consumed; what follows it is the trailing context
    action: _Action


def _compile_rules() -> list[_Rule]:
    rules = []
    for name, pattern, context, action in _RULES:
        for alternative in _top_level_alternatives(pattern):
            source = f"(?P<token>{alternative})" + (f"(?:{context})" if context else "")
            regex = re.compile(_case_sensitive_classes(source), re.IGNORECASE)
            rules.append(_Rule(name, regex, action))
    return rules


_LEXER_RULES = _compile_rules()
# Most caption words are plain letters followed by a space; no rule gives them another token,
# except the few that split ("gonna" -> "gon" "na"), so they skip the rule-by-rule search.
_PLAIN_WORD = re.compile(r"[ \t]+|[A-Za-z]+(?=[ \t\n]|$)")
_SPLIT_WORDS = {"cannot", "gonna", "gotta", "lemme", "gimme", "wanna"}
# The toolkit removes these tokens after lower-casing, so its "-LRB-" ... entries never match:
# brackets stay in as "-lrb-", "-rrb-", and so on.
_TOOLKIT_PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!",
                        ",", ":", "-", "--", "...", ";"}
# Line breaks other than "\n" would start a new line in the toolkit's one-caption-per-line file
# (and shift every later caption onto the wrong image); here they are spaces.
_LINE_BREAKS = re.compile("\r\n|[\r\u2028\u2029\x0b\x0c]")


def _lex(text: str) -> list[str]:
    """Penn Treebank tokens of ``text``, not yet lower-cased or filtered; "\\n" ends a line."""
    tokens, position = [], 0
    while position < len(text):
        plain = _PLAIN_WORD.match(text, position)
        if plain and plain.group().lower() not in _SPLIT_WORDS:
            if not plain.group().isspace():
                tokens.append(plain.group())
            position = plain.end()
            continue
        best = None
        for rule in _LEXER_RULES:
            match = rule.regex.match(text, position)
            if match and (best is None or match.end() > best[1].end()):  # ties: the earlier rule
                best = rule, match
        token, consumed = best[0].action(best[1].group("token"))
        if token is not None:
            tokens.append(token)
        position += consumed
    return tokens


def ptb_tokenize_batch(captions: Sequence[str]) -> list[list[str]]:
    """:func:`ptb_tokenize` for many captions at once, exactly as the toolkit does it.

    The toolkit writes all captions into one file, one per line, and tokenises the file. A few
    rules look past the end of a line, so a caption's last token can depend on the next caption:
    "the letter b." keeps "b." before a caption that starts with "a dog" but becomes "b" before
    one that starts with "A dog" ("A" may start a sentence). Tokenising a batch here reproduces
    that; :func:`evaluate_captions` batches in the toolkit's order.
    """
    text = "\n".join(_LINE_BREAKS.sub(" ", caption.replace("\n", " ")) for caption in captions)
    lines: list[list[str]] = [[]]
    for token in _lex(text):
        if token == "\n":
            lines.append([])
        elif token.lower() not in _TOOLKIT_PUNCTUATION:
            lines[-1].append(token.lower())
    return lines if captions else []


def ptb_tokenize(text: str) -> list[str]:
    """Words of a caption as the COCO caption toolkit's ``PTBTokenizer`` gives them.

    That is Stanford's Penn Treebank tokenizer (CoreNLP 3.4.1), then lower case, then removal of
    the punctuation tokens ``'' ' `` ` . ? ! , : ; - -- ...``: ``"A dog's toy, isn't it?"`` ->
    ``["a", "dog", "'s", "toy", "is", "n't", "it"]``. Checked against the Java tokenizer on
    hundreds of thousands of generated strings, it gives:

    * contractions split as in the Treebank: "don't" -> "do n't", "can't" -> "ca n't",
      "they're" -> "they 're", "dog's" -> "dog 's", "dogs'" -> "dogs", "gonna" -> "gon na",
      "cannot" -> "can not"; but "o'clock", "'90s", "rock'n'roll" -> "rock 'n' roll" stay words;
    * hyphenated and slashed words whole ("t-shirt", "3-year-old", "and/or"), numbers too
      ("1,000", "3.5", "12:30"; "5 1/2" is one token with a non-breaking space inside);
    * abbreviations and acronyms with their period ("mr.", "u.s.", "a.m.", "etc."), also a single
      letter at the end ("the letter b." ends in "b."); all other periods are removed;
    * brackets as "-lrb-", "-rrb-", "-lsb-", "-rsb-", "-lcb-", "-rcb-", *kept* (the toolkit's
      list names them in upper case but compares after lower-casing); "!!", "?!", "$", "%", "&",
      "#" and other symbols kept too; "£" becomes "#", "€" becomes "$";
    * curly quotes and apostrophes read as straight ones.

    Not covered: URLs and e-mail addresses follow the lexer's rules but were only spot-checked;
    letters of scripts that Unicode added after the lexer's tables were built (about 1 in 100
    random non-Latin characters) are kept here where Java drops them; characters outside the
    Basic Multilingual Plane (emoji) are dropped by both. Line breaks inside a caption are spaces
    here, where the toolkit would start a new line and misalign every caption after it.
    """
    return ptb_tokenize_batch([text])[0]


# =================================================================================================
# BLEU (Papineni et al., 2002), as the toolkit computes it
# =================================================================================================

# The toolkit adds these to avoid log(0) and 0/0; using the same constants keeps our numbers equal
# to its numbers, also when an n-gram order has no match at all.
_TINY, _SMALL = 1e-15, 1e-9


def ngrams(words: Sequence[str], n: int) -> collections.Counter:
    """How often each n-gram (a tuple of ``n`` words) occurs in ``words``."""
    return collections.Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


@dataclasses.dataclass
class BleuCounts:
    """What BLEU needs to know about candidates: for each order n, how many n-grams they have
    and how many of those match (clipped); their length; and the reference length to compare."""

    matches: list[int]
    totals: list[int]
    candidate_length: int
    reference_length: int

    def __add__(self, other: BleuCounts) -> BleuCounts:
        return BleuCounts([a + b for a, b in zip(self.matches, other.matches)],
                          [a + b for a, b in zip(self.totals, other.totals)],
                          self.candidate_length + other.candidate_length,
                          self.reference_length + other.reference_length)


def bleu_counts(candidate: Sequence[str], references: Sequence[Sequence[str]],
                max_n: int = 4) -> BleuCounts:
    """Clipped n-gram matches of one candidate against its references.

    A candidate n-gram counts at most as often as it occurs in the one reference where it occurs
    most ("clipping": "the the the" does not match "the cat" three times). The reference length
    is the one closest to the candidate's length, the shorter one on ties.
    """
    matches, totals = [], []
    for n in range(1, max_n + 1):
        most_in_a_reference = collections.Counter()
        for reference in references:
            most_in_a_reference |= ngrams(reference, n)  # | keeps the larger count
        matches.append(sum(min(count, most_in_a_reference[gram])
                           for gram, count in ngrams(candidate, n).items()))
        totals.append(max(len(candidate) - n + 1, 0))
    closest = min((abs(len(ref) - len(candidate)), len(ref)) for ref in references)[1]
    return BleuCounts(matches, totals, len(candidate), closest)


def bleu_from_counts(counts: BleuCounts) -> list[float]:
    """BLEU-1..n: the geometric mean of the n-gram precisions up to each order, times the
    brevity penalty exp(1 - r/c) when the candidates are shorter (c) than the references (r)."""
    scores, product = [], 1.0
    for n, (matched, total) in enumerate(zip(counts.matches, counts.totals), start=1):
        product *= (matched + _TINY) / (total + _SMALL)
        scores.append(product ** (1 / n))
    ratio = (counts.candidate_length + _TINY) / (counts.reference_length + _SMALL)
    if ratio < 1:
        scores = [score * math.exp(1 - 1 / ratio) for score in scores]
    return scores


def bleu(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
         max_n: int = 4) -> tuple[list[float], list[list[float]]]:
    """Corpus BLEU-1..``max_n`` of tokenised candidates, and each candidate's own BLEU.

    The corpus score sums the counts of all candidates before taking precisions (it is not the
    mean of the per-image scores). Returns ``(corpus, per_image)`` with ``per_image[i][n - 1]``.
    """
    per_image = [bleu_counts(c, refs, max_n) for c, refs in zip(candidates, references)]
    total = sum(per_image[1:], per_image[0])
    return bleu_from_counts(total), [bleu_from_counts(counts) for counts in per_image]


# =================================================================================================
# ROUGE-L (Lin, 2004), as the toolkit computes it
# =================================================================================================


def lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
    """Length of the longest common subsequence: the most words that appear in both, in the
    same order but not necessarily next to each other."""
    previous = [0] * (len(second) + 1)
    for word in first:
        current = [0]
        for j, other in enumerate(second):
            current.append(previous[j] + 1 if word == other else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidate: Sequence[str], references: Sequence[Sequence[str]],
            beta: float = 1.2) -> float:
    """ROUGE-L of one candidate: an F-measure of LCS precision P and recall R that weights recall
    ``beta`` times as much, (1 + beta^2) P R / (R + beta^2 P). As in the toolkit, P and R are
    each the best over the references (they may come from different references)."""
    lengths = [lcs_length(reference, candidate) for reference in references]
    precision = max(lcs / len(candidate) if candidate else 0.0 for lcs in lengths)
    recall = max(lcs / len(reference) if reference else 0.0
                 for lcs, reference in zip(lengths, references))
    if precision == 0 or recall == 0:
        return 0.0
    return (1 + beta**2) * precision * recall / (recall + beta**2 * precision)


# =================================================================================================
# CIDEr-D (Vedantam et al., 2015), as the toolkit computes it
# =================================================================================================


def _all_ngrams(words: Sequence[str], max_n: int) -> collections.Counter:
    counts = collections.Counter()
    for n in range(1, max_n + 1):
        counts.update(ngrams(words, n))
    return counts


class _TfIdf(NamedTuple):
    weights: list[dict]  # per order n: n-gram -> term frequency x inverse document frequency
    norms: list[float]
    length: int


def _tf_idf(words: Sequence[str], document_frequency: collections.Counter, log_images: float,
            max_n: int) -> _TfIdf:
    weights, norms = [{} for _ in range(max_n)], [0.0] * max_n
    for gram, count in _all_ngrams(words, max_n).items():
        # An n-gram in the references of every image weighs 0; one in no reference (df 0,
        # counted as 1) weighs the most, log(number of images).
        weight = count * (log_images - math.log(max(1.0, document_frequency[gram])))
        weights[len(gram) - 1][gram] = weight
        norms[len(gram) - 1] += weight**2
    return _TfIdf(weights, [math.sqrt(norm) for norm in norms], len(words))


def _cider_similarity(candidate: _TfIdf, reference: _TfIdf, sigma: float) -> list[float]:
    """Per order n: the cosine of the two tf-idf vectors, with the candidate's weights clipped at
    the reference's (repeating a word does not help), times a Gaussian length penalty."""
    # The toolkit measures lengths in bigrams; that is the word count minus one except for an
    # empty caption, whose similarity is 0 anyway, so word counts give the same penalty.
    penalty = math.exp(-((candidate.length - reference.length) ** 2) / (2 * sigma**2))
    similarities = []
    for n, weights in enumerate(candidate.weights):
        reference_weights = reference.weights[n]
        dot = sum(min(weight, reference_weights.get(gram, 0.0)) * reference_weights.get(gram, 0.0)
                  for gram, weight in weights.items())
        if candidate.norms[n] != 0 and reference.norms[n] != 0:
            dot /= candidate.norms[n] * reference.norms[n]
        similarities.append(dot * penalty)
    return similarities


class CiderDScorer:
    """CIDEr-D of one candidate against one image's references, with the document frequencies of
    a fixed corpus: the ``references`` given here, one list of tokenised captions per image.

    :func:`cider_d` is this scorer over the references of the images it scores, so one image's
    score depends on the others scored with it; a training reward must not, so self-critical
    training (:mod:`utils.scst`) scores against the training references, as Rennie et al.
    (2017) did. The references' tf-idf vectors are computed once.
    """

    def __init__(self, references: Sequence[Sequence[Sequence[str]]], max_n: int = 4,
                 sigma: float = 6.0):
        if not references:
            raise ValueError("CIDEr-D needs the references of at least one image")
        self.max_n, self.sigma = max_n, sigma
        self.document_frequency = collections.Counter()
        for image_references in references:
            self.document_frequency.update({gram for reference in image_references
                                            for gram in _all_ngrams(reference, max_n)})
        self.log_images = math.log(len(references))
        self.reference_vectors = [[self._vector(reference) for reference in image_references]
                                  for image_references in references]

    def _vector(self, words: Sequence[str]) -> _TfIdf:
        return _tf_idf(words, self.document_frequency, self.log_images, self.max_n)

    def __call__(self, candidate: Sequence[str], image: int) -> float:
        candidate_vector = self._vector(candidate)
        references = self.reference_vectors[image]
        summed = sum(sum(_cider_similarity(candidate_vector, reference, self.sigma))
                     for reference in references)
        return summed / self.max_n / len(references) * 10.0


def cider_d(candidates: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
            max_n: int = 4, sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D of tokenised candidates: ``(corpus mean, per-image scores)``.

    N-grams of 1 to ``max_n`` words are weighted by tf-idf, where the document frequency of an
    n-gram is the number of images whose *references* contain it, among the images scored here
    (so one image's score depends on the rest of the corpus). Per image: the mean over n of the
    similarity averaged over the references, times 10.
    """
    scorer = CiderDScorer(references, max_n, sigma)
    scores = [scorer(candidate, image) for image, candidate in enumerate(candidates)]
    return sum(scores) / len(scores), scores


# =================================================================================================
# METEOR and SPICE: the official jars, run through Java
# =================================================================================================


def _find_java() -> str | None:
    return shutil.which("java")


def _toolkit_file(*parts: str) -> pathlib.Path:
    """A file shipped inside the installed pycocoevalcap package."""
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None:
        raise MetricUnavailableError("pycocoevalcap, which ships the jars, is not installed: "
                                     "`pip install pycocoevalcap==1.2`")
    return pathlib.Path(next(iter(spec.submodule_search_locations)), *parts)


def _java_or_advice(metric: str) -> str:
    java = _find_java()
    if java is None:
        raise MetricUnavailableError(f"{metric} runs on Java, which is not installed here: "
                                     f"{JAVA_ADVICE}.")
    return java


class _JavaLineServer:
    """A Java program that answers each line it reads with lines of its own (METEOR's ``-stdio``).

    pycocoevalcap's wrapper can hang and leaks its process; this one cannot: stdout is drained by
    a thread (so neither side blocks on a full pipe), requests are written by a thread, every
    answer is awaited with a deadline, stderr goes to a file, and the process is killed on exit.
    """

    def __init__(self, command: list[str], cwd: pathlib.Path, seconds: float):
        self._program = pathlib.Path(command[command.index("-jar") + 1]).name
        self._deadline = time.monotonic() + seconds
        self._errors = tempfile.TemporaryFile()
        try:
            self._process = subprocess.Popen(command, cwd=cwd, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=self._errors,
                                             text=True, encoding="utf-8")
        except OSError as error:
            self._errors.close()
            raise MetricUnavailableError(f"Java could not start ({error}): {JAVA_ADVICE}") from None
        self._answers: queue.Queue = queue.Queue()
        self._threads = [threading.Thread(target=self._read, daemon=True)]
        self._threads[0].start()

    def _read(self) -> None:
        for line in self._process.stdout:
            self._answers.put(line.strip())
        self._answers.put(None)  # the program has ended

    def _write(self, lines: list[str]) -> None:
        try:
            self._process.stdin.write("".join(line + "\n" for line in lines))
            self._process.stdin.flush()
        except OSError:  # the process has died or was killed: _answer reports why
            pass

    def running(self) -> bool:
        """Whether the program is still there to answer (it may be asked again)."""
        return self._process.poll() is None

    def renew(self, seconds: float) -> None:
        """Give the next answers ``seconds`` from now, for a program that is asked again."""
        self._deadline = time.monotonic() + seconds

    def ask(self, lines: list[str], answers: int) -> list[str]:
        """Send ``lines`` and return the next ``answers`` lines of output."""
        writer = threading.Thread(target=self._write, args=(lines,), daemon=True)
        self._threads.append(writer)
        writer.start()
        return [self._answer() for _ in range(answers)]

    def _answer(self) -> str:
        try:
            line = self._answers.get(timeout=max(self._deadline - time.monotonic(), 0.0))
        except queue.Empty:
            raise MetricUnavailableError(f"{self._program} gave no answer in time and was "
                                         "stopped") from None
        if line is None:
            self._errors.seek(0)
            message = self._errors.read().decode("utf-8", "replace").strip().splitlines()
            raise MetricUnavailableError(f"{self._program} stopped: "
                                         f"{message[-1] if message else 'no message'}")
        return line

    def __enter__(self) -> _JavaLineServer:
        return self

    def __exit__(self, *exception) -> None:
        self.close()

    def close(self) -> None:
        """Kill the program and release its pipes and threads."""
        self._process.kill()
        self._process.wait()
        for thread in self._threads:  # they end once the pipes to the dead process break
            thread.join(timeout=10)
        for stream in (self._process.stdin, self._process.stdout, self._errors):
            try:
                stream.close()
            except OSError:  # flushing into a killed process's pipe fails; nothing is lost
                pass


#: The METEOR program kept between calls, by process id, command and class: Java and the
#: paraphrase table take seconds to load, scoring a few hundred captions a fraction of one.
_kept_servers: dict[tuple, _JavaLineServer] = {}
_kept_lock = threading.Lock()


def _close_kept_servers() -> None:
    while _kept_servers:
        _, server = _kept_servers.popitem()
        server.close()


atexit.register(_close_kept_servers)


def _ask_kept_server(command: list[str], cwd: pathlib.Path, seconds: float,
                     requests: Callable[[_JavaLineServer], list[str]]) -> list[str]:
    """``requests(server)`` with a running server for ``command``, started once per process and
    kept for the next call. Whatever goes wrong (a deadline, a crash) kills it: the next call
    starts a fresh one. A stand-in whose ``running()`` is false is used once."""
    key = (os.getpid(), _JavaLineServer, tuple(command))
    with _kept_lock:
        server = _kept_servers.get(key)
        if server is not None and server.running():
            server.renew(seconds)
        else:
            _close_kept_servers()
            server = _kept_servers[key] = _JavaLineServer(command, cwd, seconds)
        try:
            return requests(server)
        except BaseException:
            del _kept_servers[key]
            server.close()
            raise


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


#: METEOR's deadline: starting Java and loading the paraphrase table takes about 7 s, each image
#: a few milliseconds; the margin is wide because the deadline only guards against hangs.
METEOR_SECONDS = 120.0
METEOR_SECONDS_PER_IMAGE = 0.05


def meteor(candidates: Sequence[str], references: Sequence[Sequence[str]]
           ) -> tuple[float, list[float]]:
    """METEOR 1.5 of tokenised captions (space-separated strings): ``(corpus, per-image)``.

    Runs ``meteor-1.5.jar`` from pycocoevalcap with the toolkit's options (``-l en -norm``) and
    protocol: one ``SCORE`` line per image returns matching statistics, then one ``EVAL`` line
    with all of them returns the per-image scores and the corpus score (computed from the summed
    statistics, not the mean of the per-image scores). The jar is started once per process and
    kept for the next call. Raises :class:`MetricUnavailableError` when it cannot run.
    """
    java = _java_or_advice("METEOR")
    jar = _toolkit_file("meteor", "meteor-1.5.jar")
    if not jar.exists():
        raise MetricUnavailableError(f"the METEOR jar is missing ({jar}): "
                                     "reinstall pycocoevalcap==1.2")
    command = [java, "-Dfile.encoding=UTF-8", "-Xmx2G", "-jar", str(jar), "-", "-", "-stdio",
               "-l", "en", "-norm"]
    # The protocol is one line per request: a newline inside a caption would desynchronise it.
    # "|||" separates fields; the toolkit removes it from candidates (PTB tokens never hold it).
    hypotheses = [_one_line(c).replace("|||", "").replace("  ", " ") for c in candidates]
    requests = [" ||| ".join(["SCORE", *map(_one_line, refs), hypothesis])
                for hypothesis, refs in zip(hypotheses, references)]
    seconds = METEOR_SECONDS + METEOR_SECONDS_PER_IMAGE * len(candidates)

    def score(server: _JavaLineServer) -> list[str]:
        statistics = server.ask(requests, answers=len(requests))
        return server.ask([" ||| ".join(["EVAL", *statistics])], answers=len(statistics) + 1)

    results = _ask_kept_server(command, jar.parent, seconds, score)
    try:
        scores = [float(result) for result in results]
    except ValueError:
        raise MetricUnavailableError(f"METEOR answered something that is not a score: "
                                     f"{results[:3]}") from None
    return scores[-1], scores[:-1]


#: SPICE parses every caption with Stanford CoreNLP: slow (minutes for thousands of images).
SPICE_SECONDS = 3600.0
#: The Stanford CoreNLP jars SPICE needs in ``pycocoevalcap/spice/lib``.
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def _download_corenlp(lib: pathlib.Path) -> None:
    """Fetch Stanford CoreNLP as pycocoevalcap does on first use, after a quick reachability test
    (its own download has no timeout and would hang offline where packets are dropped)."""
    from pycocoevalcap.spice import get_stanford_models as models

    url = f"http://nlp.stanford.edu/software/{models.CORENLP}.zip"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15).close()
        models.get_stanford_models()
    except (OSError, zipfile.BadZipFile) as error:
        raise MetricUnavailableError(
            f"SPICE needs Stanford CoreNLP 3.6.0, which pycocoevalcap downloads from {url} on "
            f"first use, and that failed here ({error}); run once with internet access, or put "
            f"{' and '.join(SPICE_CORENLP_JARS)} into {lib}") from None


def spice(candidates: Sequence[str], references: Sequence[Sequence[str]]
          ) -> tuple[float, list[float]]:
    """SPICE (Anderson et al., 2016) of tokenised captions via pycocoevalcap's ``spice-1.0.jar``:
    ``(mean F-score, per-image F-scores)``. Needs Java and Stanford CoreNLP 3.6.0 (downloaded
    on first use); raises :class:`MetricUnavailableError` when it cannot run."""
    java = _java_or_advice("SPICE")
    jar = _toolkit_file("spice", "spice-1.0.jar")
    if not all((jar.parent / "lib" / name).exists() for name in SPICE_CORENLP_JARS):
        _download_corenlp(jar.parent / "lib")
    with tempfile.TemporaryDirectory() as work:
        request, answer = pathlib.Path(work, "captions.json"), pathlib.Path(work, "scores.json")
        request.write_text(json.dumps([{"image_id": i, "test": c, "refs": list(refs)}
                                       for i, (c, refs) in enumerate(zip(candidates, references))]))
        command = [java, "-Xmx8G", "-jar", str(jar), str(request), "-out", str(answer),
                   "-subset", "-silent"]
        try:
            done = subprocess.run(command, cwd=jar.parent, capture_output=True, text=True,
                                  timeout=SPICE_SECONDS)
        except subprocess.TimeoutExpired:
            raise MetricUnavailableError(f"SPICE took more than {SPICE_SECONDS:.0f} s and was "
                                         "stopped") from None
        if done.returncode != 0 or not answer.exists():
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise MetricUnavailableError(f"the SPICE jar failed (exit {done.returncode}): {last}")
        results = sorted(json.loads(answer.read_text()), key=lambda item: item["image_id"])
    scores = [math.nan if item["scores"]["All"]["f"] is None else float(item["scores"]["All"]["f"])
              for item in results]
    return sum(scores) / len(scores), scores


# =================================================================================================
# Everything together
# =================================================================================================


def _selected(metrics: Iterable[str] | None) -> list[str]:
    """Metric names in report order; "Bleu" stands for Bleu_1..Bleu_4."""
    if metrics is None:
        metrics = DEFAULT_METRICS
    names = [metrics] if isinstance(metrics, str) else metrics
    requested = set()
    for name in names:
        if name not in METRICS and name != "Bleu":
            raise ValueError(f"unknown metric {name!r}; choose from Bleu, {', '.join(METRICS)}")
        requested |= {f"Bleu_{n}" for n in range(1, 5)} if name == "Bleu" else {name}
    return [name for name in METRICS if name in requested]


def _tokenised_corpus(references: Mapping[object, Sequence[str]], candidates: Mapping[object, str]
                      ) -> tuple[list, list[str], list[list[str]]]:
    """Image ids, and the PTB-tokenised candidates and references as the toolkit hands them to
    its scorers: each caption one string of space-separated tokens."""
    missing = [image for image in candidates if image not in references]
    if missing:
        raise KeyError(f"candidates without references: {sorted(map(str, missing))[:5]}")
    if not candidates:
        raise ValueError("no candidates to evaluate")
    images = list(candidates)
    for image in images:
        if isinstance(references[image], str) or len(references[image]) == 0:
            raise ValueError(f"image {image!r} needs a list of one or more reference captions")
    tokenised = ptb_tokenize_batch([candidates[image] for image in images])
    flat = iter(ptb_tokenize_batch([ref for image in images for ref in references[image]]))
    tokenised_references = [[" ".join(next(flat)) for _ in references[image]] for image in images]
    return images, [" ".join(tokens) for tokens in tokenised], tokenised_references


def corpus_bleu(references: Mapping[object, Sequence[str]], candidates: Mapping[object, str],
                max_n: int = 4) -> list[float]:
    """Corpus BLEU-1..``max_n`` of raw-text ``candidates`` against ``references``.

    ``references``: ``{image_id: [caption, ...]}``; ``candidates``: ``{image_id: caption}``. The
    captions are PTB-tokenised first, so the scores equal the COCO caption toolkit's ``Bleu``.
    """
    _, tokenised_candidates, tokenised_references = _tokenised_corpus(references, candidates)
    return bleu([c.split() for c in tokenised_candidates],
                [[r.split() for r in refs] for refs in tokenised_references], max_n)[0]


def evaluate_captions(references: Mapping[object, Sequence[str]], candidates: Mapping[object, str],
                      metrics: Iterable[str] | None = None, *, per_image: bool = False) -> dict:
    """Score raw-text ``candidates`` against ``references`` as the COCO caption toolkit does.

    ``references``: ``{image_id: [caption, ...]}``, ``candidates``: ``{image_id: caption}``; only
    the images in ``candidates`` are evaluated (CIDEr-D's document frequencies come from their
    references). ``metrics`` picks from ``Bleu`` (all four), ``Bleu_1`` .. ``Bleu_4``, ``METEOR``,
    ``ROUGE_L``, ``CIDEr`` (CIDEr-D, under the toolkit's name) and ``SPICE``; by default all but
    SPICE. Returns ``{name: score}`` and, with ``per_image=True``, also
    ``"per_image": {name: {image_id: score}}``.

    METEOR and SPICE run Java programs; where one cannot run (no Java, no Stanford CoreNLP
    offline, ...) it is left out of the result with a :class:`MetricUnavailableWarning` that says
    what to install; the other metrics are still computed.
    """
    names = _selected(metrics)
    images, tokenised_candidates, tokenised_references = _tokenised_corpus(references, candidates)
    # The toolkit's BLEU and CIDEr split a tokenised caption at any whitespace, its ROUGE-L at
    # single spaces; the two differ only for an empty caption ([] against [""]) and for tokens
    # with a non-breaking space inside ("5 1/2").
    words = [c.split() for c in tokenised_candidates]
    reference_words = [[r.split() for r in refs] for refs in tokenised_references]
    scores: dict[str, tuple[float, list[float]]] = {}
    if any(name.startswith("Bleu") for name in names):
        corpus, each = bleu(words, reference_words)
        for n in range(4):
            scores[f"Bleu_{n + 1}"] = corpus[n], [image_scores[n] for image_scores in each]
    if "ROUGE_L" in names:
        each = [rouge_l(c.split(" "), [r.split(" ") for r in refs])
                for c, refs in zip(tokenised_candidates, tokenised_references)]
        scores["ROUGE_L"] = sum(each) / len(each), each
    if "CIDEr" in names:
        scores["CIDEr"] = cider_d(words, reference_words)
    for name, scorer in (("METEOR", meteor), ("SPICE", spice)):
        if name in names:
            try:
                scores[name] = scorer(tokenised_candidates, tokenised_references)
            except MetricUnavailableError as reason:
                warnings.warn(f"{name} left out: {reason}", MetricUnavailableWarning, stacklevel=2)
    result: dict = {name: scores[name][0] for name in names if name in scores}
    if per_image:
        result["per_image"] = {name: dict(zip(images, scores[name][1]))
                               for name in names if name in scores}
    return result
