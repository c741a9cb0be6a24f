"""Intended or unintended: Naseh et al.'s taxonomy (arXiv 2312.07550), made a rule on measured evidence.

The paper defines the kinds by what a user expects; verifier decides them from what was measured
for the image and what its owner said (``verifier.context``), in this order:

1. **not reproduced**: the witness's verdict is neither ``memorized`` nor ``rarely_reproduced`` and
   none of the owner's prompts reproduces the image: no category (``null``);
2. **unintended, no context**: reproduced, and the owner gave no context: nobody said reproduction
   is expected, so it is unintended by default;
3. **explicit_intended**: a prompt the owner listed as naming the entity reproduces the image;
4. **implicit_intended**: otherwise, a prompt the owner listed as implying it reproduces the image;
5. **unintended**: reproduced (by the witness), yet no prompt under which the owner expects
   reproduction reproduces it: reachable only through inversion, or the owner expects no
   reproduction at all (context without prompts).

A prompt *reproduces* the image when at least one of its generations replicates it
(``verifier.prompts``). The owner's ``public`` flag does not change the category; a release-gate
policy may use it (``verifier.policy``).
"""

from __future__ import annotations

CATEGORIES = ("explicit_intended", "implicit_intended", "unintended")
REPRODUCED_VERDICTS = ("memorized", "rarely_reproduced")


def reproduction_level(verdict: str, prompts: list[dict]) -> str | None:
    """The strongest reproduction measured: ``memorized`` (the witness's verdict, or a prompt whose lower
    bound reaches the minimum rate), ``rarely_reproduced`` (either replicated the image), else None."""
    if verdict == "memorized" or any(prompt["reaches_min_rate"] for prompt in prompts):
        return "memorized"
    if verdict == "rarely_reproduced" or any(prompt["reproduces"] for prompt in prompts):
        return "rarely_reproduced"
    return None


def classify(verdict: str, context: dict | None, prompts: list[dict]) -> dict:
    """The category of one image, its reproduction level, the reason in words and the indices of the prompts
    that decided it."""
    return {"level": reproduction_level(verdict, prompts)} | _category(verdict, context, prompts)


def _category(verdict: str, context: dict | None, prompts: list[dict]) -> dict:
    reproducing = [index for index, prompt in enumerate(prompts) if prompt["reproduces"]]
    # 1. Not reproduced by the witness nor by any prompt.
    if verdict not in REPRODUCED_VERDICTS and not reproducing:
        return {"category": None, "evidence": [],
                "reason": f"not reproduced: the witness's verdict is {verdict}"
                          + (f" and none of the owner's {len(prompts)} prompts replicated the image" if prompts else "")}
    how = f"the witness's verdict is {verdict}" if verdict in REPRODUCED_VERDICTS else \
        f"a prompt of the owner's reproduces it (the witness's verdict is {verdict})"
    # 2. Reproduced, and nobody said it is expected.
    if context is None:
        return {"category": "unintended", "evidence": [],
                "reason": f"reproduced ({how}) and the owner gave no context: unintended by default"}
    # 3-4. Reproduced by a prompt the owner expects it under, naming the entity first.
    for kind, category in (("explicit", "explicit_intended"), ("implicit", "implicit_intended")):
        deciding = [index for index in reproducing if prompts[index]["kind"] == kind]
        if deciding:
            first = prompts[deciding[0]]
            verb = "names" if kind == "explicit" else "implies without naming"
            return {"category": category, "evidence": deciding,
                    "reason": f"the prompt {first['prompt']!r}, which {verb} the entity, replicated the image in "
                              f"{first['replications']} of {first['generations']} generations, and the owner expects "
                              f"reproduction under it" + (f" ({len(deciding) - 1} more such prompts did too)"
                                                          if len(deciding) > 1 else "")}
    # 5. Reproduced only where the owner expects no reproduction.
    if prompts:
        return {"category": "unintended", "evidence": [],
                "reason": f"reproduced ({how}) but none of the owner's {len(prompts)} prompts replicated the image: "
                          "reachable through inversion, not through the prompts the owner expects it under"}
    return {"category": "unintended", "evidence": [],
            "reason": f"reproduced ({how}) and the owner's context lists no prompt under which reproduction is "
                      "expected"}
