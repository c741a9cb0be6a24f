"""The owner's context of an image: what it shows, which prompts may reproduce it, whether it is public.

Naseh et al. (arXiv 2312.07550) tell memorization a user expects from memorization nobody asked for;
only the owner knows which is which, so they say it per image, in the manifest's columns (CSV) or
keys (JSONL):

- ``entity``: what the image shows (a title, a name);
- ``explicit_prompts``: prompts that name the entity, under which the owner expects or accepts a
  reproduction (a famous painting by its title);
- ``implicit_prompts``: prompts that imply the entity without naming it, expected or accepted too;
- ``public``: whether the work is public (true/false; empty: not said).

In a CSV cell several prompts are separated by ``|``; in JSONL they are a list of strings (or one
string). Every prompt is tested for replication like the witness (``verifier.prompts``). Any other
column is refused with the allowed names, so a misspelt ``explicit_prompt`` never silently drops the
owner's context.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

CONTEXT_COLUMNS = ("entity", "explicit_prompts", "implicit_prompts", "public")
LOCATION_COLUMNS = ("path", "id")
MAX_PROMPTS = 32  # per image and kind: each prompt costs a full look of generations
MAX_PROMPT_CHARACTERS = 1000
TRUE_WORDS, FALSE_WORDS = ("true", "yes", "1"), ("false", "no", "0")


class ContextError(ValueError):
    """A context column or value that cannot be used; the message names it and what is allowed."""


@dataclass(frozen=True)
class ImageContext:
    """What the owner says about one image (every field optional)."""

    entity: str | None = None
    explicit_prompts: tuple[str, ...] = ()
    implicit_prompts: tuple[str, ...] = ()
    public: bool | None = None

    def prompts(self) -> list[tuple[str, str]]:
        """(kind, prompt) for every prompt to test: the explicit ones first, in the owner's order."""
        return [("explicit", p) for p in self.explicit_prompts] + [("implicit", p) for p in self.implicit_prompts]

    def to_dict(self) -> dict:
        return {"entity": self.entity, "explicit_prompts": list(self.explicit_prompts),
                "implicit_prompts": list(self.implicit_prompts), "public": self.public}


def context_from_row(row: dict, where: str) -> ImageContext | None:
    """The context in one manifest row (None when the row has none); ``where`` names the row in errors.

    Keys other than ``path``, ``id`` and the context columns are refused with a "did you mean" hint.
    """
    allowed = LOCATION_COLUMNS + CONTEXT_COLUMNS
    for key in row:
        if key is None:  # csv.DictReader's key for cells beyond the header
            raise ContextError(f"{where}: the row has more cells than the header has columns")
        if key.startswith("_"):
            continue  # the reader's own bookkeeping (the line number)
        if key not in allowed:
            hint = difflib.get_close_matches(str(key), allowed, n=1)
            raise ContextError(f"{where}: unknown column {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                               + f"; allowed: {', '.join(allowed)}")
    entity = _text(row.get("entity"), "entity", where)
    context = ImageContext(
        entity=entity,
        explicit_prompts=_prompts(row.get("explicit_prompts"), "explicit_prompts", where),
        implicit_prompts=_prompts(row.get("implicit_prompts"), "implicit_prompts", where),
        public=_flag(row.get("public"), where),
    )
    if context == ImageContext():
        return None
    repeated = set(context.explicit_prompts) & set(context.implicit_prompts)
    if repeated:
        raise ContextError(f"{where}: the prompt {sorted(repeated)[0]!r} is listed as both explicit (names the entity) "
                           "and implicit (implies it without naming it); list it under one")
    return context


def _text(value, column: str, where: str) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise ContextError(f"{where}: {column!r} must be a string, got {value!r}")
    if len(value) > MAX_PROMPT_CHARACTERS:
        raise ContextError(f"{where}: {column!r} is {len(value)} characters long; at most {MAX_PROMPT_CHARACTERS}")
    return value.strip()


def _prompts(value, column: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        items = value.split("|")  # a CSV cell (or a JSONL string): prompts separated by '|'
    elif isinstance(value, list):
        items = value
    else:
        raise ContextError(f"{where}: {column!r} must be a list of prompts (JSONL) or prompts separated by '|' (CSV), "
                           f"got {value!r}")
    prompts: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ContextError(f"{where}: every prompt in {column!r} must be a string, got {item!r}")
        prompt = _text(item, column, where)
        if prompt is not None and prompt not in prompts:
            prompts.append(prompt)
    if len(prompts) > MAX_PROMPTS:
        raise ContextError(f"{where}: {column!r} lists {len(prompts)} prompts; at most {MAX_PROMPTS} per image "
                           "(each costs a full look of generations)")
    return tuple(prompts)


def _flag(value, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        word = value.strip().lower()
        if not word:
            return None
        if word in TRUE_WORDS:
            return True
        if word in FALSE_WORDS:
            return False
    raise ContextError(f"{where}: 'public' must be true or false ({', '.join(TRUE_WORDS + FALSE_WORDS)}, or empty "
                       f"when not known), got {value!r}")
