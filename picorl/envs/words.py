"""The English word list behind letter-counting tiers 1-5.

Words come from Webster's Second International (``web2``) as shipped inside the ``english-words``
package: the same list as NLTK's ``words`` corpus the seed used, but installed with the package,
so nothing is downloaded at run time (the seed's NLTK download failed offline). The list is
lower-cased, a-z only, de-duplicated and sorted, so a seeded ``random.Random`` picks the same word
on every machine.
"""

from __future__ import annotations

import string
from functools import cache

_ALPHABET = frozenset(string.ascii_lowercase)


@cache
def english_words() -> tuple[str, ...]:
    """All web2 words, lower-case a-z only, sorted (about 234k words, loaded once)."""
    try:
        from english_words import get_english_words_set
    except ImportError as e:
        raise ImportError(
            "letter counting needs the 'english-words' package for its word list; "
            "install it with `pip install english-words`"
        ) from e
    words = get_english_words_set(["web2"], lower=True, alpha=True)
    # alpha=True already drops most non-letters; keep only plain a-z so every text is in-alphabet.
    return tuple(sorted(w for w in words if w and set(w) <= _ALPHABET))


@cache
def words_with_length(min_len: int, max_len: int) -> tuple[str, ...]:
    """Sorted words whose length is in ``[min_len, max_len]``; raises if there are none."""
    found = tuple(w for w in english_words() if min_len <= len(w) <= max_len)
    if not found:
        raise ValueError(
            f"no English word has a length in [{min_len}, {max_len}]; "
            f"the longest word is {max(map(len, english_words()))} letters, widen the range"
        )
    return found
