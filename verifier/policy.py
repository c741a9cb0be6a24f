"""A release-gate policy: which categories of memorization fail the gate, at which level (issue 10).

A policy is a small TOML file (``certify --policy FILE``; the default ships as ``configs/policies/default.toml``)::

    description = "..."            # optional: what the policy is for

    [fail]                         # per category: the reproduction levels that fail the gate
    unintended = ["memorized", "rarely_reproduced"]
    implicit_intended = []
    explicit_intended = []

    [intended]
    public_only = true             # intended categories count as intended only for works marked public

    [parts]
    fail = true                    # an image otherwise not reproduced fails when a part of it is

    [differential]                 # only for certify --baseline (verifier.differential)
    fail = ["introduced"]          # the differential categories that fail the gate

An image's *level* is the strongest reproduction measured for it: ``memorized`` when the witness's
verdict is memorized or one of the owner's prompts replicates it with a lower bound at the minimum
rate, ``rarely_reproduced`` when either replicated it at all, else none (it passes). Its category
comes from ``verifier.taxonomy``. With ``public_only``, an intended category on a work the owner did
not mark ``public = true`` is judged as ``unintended``. The gate fails when any image's (category,
level) is listed under ``[fail]``, or, with ``[parts] fail = true``, when an image nothing reproduced
whole has a part replicated (``verifier.regions``); ``certify`` then exits 1.

A differential run (``certify --baseline``) also judges each image's differential category (introduced,
inherited, removed, neither, undetermined) against ``[differential] fail``: a fine-tuner's release question is
"did my fine-tune introduce any of these?", so ``[fail]`` may be left empty and ``fail = ["introduced"]`` set here.
"""

from __future__ import annotations

import difflib
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from verifier.differential import DIFFERENTIAL_CATEGORIES
from verifier.taxonomy import CATEGORIES, REPRODUCED_VERDICTS

LEVELS = REPRODUCED_VERDICTS  # an image's reproduction level is named after the verdict it reaches
SECTIONS = {"description": None, "fail": CATEGORIES, "intended": ("public_only",), "parts": ("fail",),
            "differential": ("fail",)}


class PolicyError(ValueError):
    """A policy file or value that cannot be used; the message names it and what is allowed."""


@dataclass(frozen=True)
class Policy:
    """Which (category, level) pairs fail the gate."""

    fail: dict[str, tuple[str, ...]]
    public_only: bool
    fail_on_part: bool
    description: str
    source: str
    sha256: str
    fail_differential: tuple[str, ...] = ()  # the differential categories that fail the gate (certify --baseline)

    @classmethod
    def read(cls, path: str | Path) -> "Policy":
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise PolicyError(f"--policy {str(path)!r} cannot be read: {error.strerror or error}") from None
        try:
            values = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise PolicyError(f"--policy {str(path)!r} is not valid UTF-8 TOML: {error}") from None
        return cls.of(values, source=str(path), sha256=hashlib.sha256(data).hexdigest())

    @classmethod
    def of(cls, values: dict, source: str, sha256: str) -> "Policy":
        where = f"policy {source!r}"
        _known(values, tuple(SECTIONS), where)
        description = values.get("description", "")
        if not isinstance(description, str):
            raise PolicyError(f"{where}: description must be a string, got {description!r}")
        fail_table = values.get("fail")
        if not isinstance(fail_table, dict):
            raise PolicyError(f"{where} needs a [fail] table naming, per category ({', '.join(CATEGORIES)}), the "
                              f"levels that fail the gate ({', '.join(LEVELS)})")
        _known(fail_table, CATEGORIES, f"{where} [fail]")
        fail = {}
        for category in CATEGORIES:
            levels = fail_table.get(category, [])
            if not isinstance(levels, list) or any(level not in LEVELS for level in levels):
                raise PolicyError(f"{where} [fail] {category} = {levels!r} is not allowed: expected a list of "
                                  f"levels from {', '.join(LEVELS)} (empty: the category always passes)")
            fail[category] = tuple(dict.fromkeys(levels))
        return cls(fail=fail, public_only=_flag(values, "intended", "public_only", where),
                   fail_on_part=_flag(values, "parts", "fail", where), description=description, source=source,
                   sha256=sha256, fail_differential=_differential(values, where))

    def judge(self, certificate: dict) -> dict:
        """This image's gate result: the category judged, its level, pass or fail, and why."""
        classification = certificate["classification"]
        category, level = classification["category"], classification["level"]
        if category is None or level is None:
            if certificate["part_replication"]["found"]:
                verb = "fails" if self.fail_on_part else "passes"
                return {"category": None, "level": level, "fails": self.fail_on_part,
                        "reason": f"not reproduced whole, but a part is replicated: {verb} under this policy"}
            return {"category": None, "level": level, "fails": False, "reason": "not reproduced: passes"}
        judged, note = category, ""
        public = (certificate.get("context") or {}).get("public")
        if category != "unintended" and self.public_only and public is not True:
            judged, note = "unintended", f"{category} on a work not marked public, judged as unintended; "
        fails = level in self.fail[judged]
        verb = "fails" if fails else "passes"
        return {"category": judged, "level": level, "fails": fails,
                "reason": f"{note}{judged} at level {level} {verb} under this policy"}

    def judge_differential(self, record: dict) -> dict:
        """This image's differential gate result (``verifier.differential``): its category, pass or fail, and why."""
        category = record["finding"]["category"]
        fails = category in self.fail_differential
        return {"category": category, "fails": fails,
                "reason": f"{category} {'fails' if fails else 'passes'} under this policy's [differential] table"}

    @classmethod
    def from_record(cls, record: dict) -> "Policy":
        """The policy a summary recorded (``record()``'s output), to judge its images again."""
        return cls(fail={category: tuple(levels) for category, levels in record["fail"].items()},
                   public_only=record["public_only"], fail_on_part=record["fail_on_part"],
                   description=record["description"], source=record["source"],
                   sha256=record["sha256"], fail_differential=tuple(record.get("fail_differential", ())))

    def record(self) -> dict:
        return {"source": self.source, "sha256": self.sha256, "description": self.description,
                "fail": {category: list(levels) for category, levels in self.fail.items()},
                "public_only": self.public_only, "fail_on_part": self.fail_on_part,
                "fail_differential": list(self.fail_differential)}


def _flag(values: dict, section: str, key: str, where: str) -> bool:
    """``[section] key = true|false`` (false where the table or the key is absent)."""
    table = values.get(section, {})
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: [{section}] must be a table with {key} = true or false")
    _known(table, SECTIONS[section], f"{where} [{section}]")
    flag = table.get(key, False)
    if not isinstance(flag, bool):
        raise PolicyError(f"{where} [{section}] {key} = {flag!r} is not allowed: expected true or false")
    return flag


def _differential(values: dict, where: str) -> tuple[str, ...]:
    """``[differential] fail = [...]``: differential categories (none where the table is absent)."""
    table = values.get("differential", {})
    if not isinstance(table, dict):
        raise PolicyError(f"{where}: [differential] must be a table with fail = a list of categories")
    _known(table, SECTIONS["differential"], f"{where} [differential]")
    categories = table.get("fail", [])
    if not isinstance(categories, list) or any(category not in DIFFERENTIAL_CATEGORIES for category in categories):
        raise PolicyError(f"{where} [differential] fail = {categories!r} is not allowed: expected a list of "
                          f"categories from {', '.join(DIFFERENTIAL_CATEGORIES)}")
    return tuple(dict.fromkeys(categories))


def _known(table: dict, allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            raise PolicyError(f"{where}: unknown key {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                              + f"; allowed: {', '.join(allowed)}")
