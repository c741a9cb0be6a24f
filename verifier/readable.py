"""Stage 5e: readable evidence: the witness decoded into text a person can type, tested like any prompt.

A witness is an embedding file; an owner showing a person that the model reproduces their image is
better served by a sentence. For each image the witness reproduced (``memorized`` or
``rarely_reproduced``) and whose inversion space has tokens:

1. each text encoder's soft tokens are projected onto that encoder's vocabulary: per position, the
   token whose input embedding is nearest in cosine similarity, as PEZ's projection step does (Wen et
   al., arXiv 2302.03668), among the tokens a person can type: special tokens (BOS, EOS, padding,
   unknown) and tokens that decode to control characters or to a partial UTF-8 sequence (byte-level
   BPE has both) are excluded;
2. the token ids are decoded into text by the encoder's own tokenizer (each distinct text once);
3. every decoded text is tested like an owner's prompt (``verifier.prompts``): error ratio, a look
   of generations at every scale, replications and bounds.

The certificate says plainly whether a readable prompt reproduced the image. Nearest-token
decoding keeps the witness's direction but not its fine position, so on its own it often does not
reproduce what the witness does; the statement says so when that happens.
"""

from __future__ import annotations

import weakref

import torch

from verifier.models.base import ModelAdapter
from verifier.taxonomy import REPRODUCED_VERDICTS

METHOD = ("nearest vocabulary token (cosine similarity of input embeddings; special tokens and tokens that decode to "
          "control characters or partial UTF-8 excluded) at each soft-token position of each text encoder, decoded by "
          "that encoder's tokenizer")


def decoded_prompts(model: ModelAdapter, variables: dict[str, torch.Tensor]) -> list[str]:
    """The distinct texts one image's soft tokens decode to, one per text encoder that has soft tokens.

    ``variables[name]`` is the image's (n, d) soft tokens in encoder ``name``'s input space; names that
    are not text encoders (the hidden_states space) give nothing.
    """
    texts: list[str] = []
    for name, (tokenizer, table) in model.text_inputs().items():
        if name not in variables:
            continue
        weights = table.weight.detach().float()
        soft = variables[name].detach().float().to(weights.device).reshape(-1, weights.shape[1])
        similarity = torch.nn.functional.normalize(soft, dim=1) @ torch.nn.functional.normalize(weights, dim=1).T
        similarity[:, ~typeable_tokens(tokenizer, weights.shape[0]).to(similarity.device)] = -torch.inf
        text = tokenizer.decode(similarity.argmax(dim=1).tolist(), skip_special_tokens=True).strip()
        if text and text not in texts:
            texts.append(text)
    return texts


_TYPEABLE: "weakref.WeakKeyDictionary[object, torch.Tensor]" = weakref.WeakKeyDictionary()  # per tokenizer


def typeable_tokens(tokenizer, rows: int) -> torch.Tensor:
    """(rows,) bool: the tokens a person can type, i.e. not special, and decoding to printable text with no
    replacement character (a byte-level token of a multi-byte character decodes to U+FFFD on its own)."""
    if tokenizer not in _TYPEABLE or len(_TYPEABLE[tokenizer]) != rows:
        special = set(tokenizer.all_special_ids)
        allowed = torch.zeros(rows, dtype=torch.bool)
        for token in range(min(rows, len(tokenizer))):
            if token in special:
                continue
            text = tokenizer.decode([token])
            allowed[token] = bool(text.strip()) and text.isprintable() and "\ufffd" not in text
        _TYPEABLE[tokenizer] = allowed
    return _TYPEABLE[tokenizer]


def statement(verdict: str, space: str, prompts: list[dict], searched: bool = True) -> str:
    """What the certificate says of readable evidence, in words."""
    if not searched:
        return "not searched: decode_witness is off in this run's config"
    if verdict not in REPRODUCED_VERDICTS:
        return f"not searched: the witness did not reproduce the image (verdict {verdict})"
    if not prompts:
        return f"no readable prompt: the {space} space has no tokens to decode" if space == "hidden_states" else \
            "no readable prompt: every soft token decoded to a special token"
    found = [prompt for prompt in prompts if prompt["reproduces"]]
    if found:
        best = max(found, key=lambda prompt: (prompt["lower_bound"], prompt["replications"]))
        return (f"the readable prompt {best['prompt']!r} replicated the image in {best['replications']} of "
                f"{best['generations']} generations")
    return (f"no readable prompt found: the decoded text{'s' if len(prompts) > 1 else ''} "
            f"{', '.join(repr(prompt['prompt']) for prompt in prompts)} replicated the image in none of "
            f"{prompts[0]['generations']} generations; the witness's evidence is its embedding file")
