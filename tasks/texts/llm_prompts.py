"""Prompts of the LLM text generator: one request (chat messages, response model) per text type."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel

SYSTEM_PROMPT = (
    "You help build an image classifier. You write short, concrete, visual phrases. "
    "Answer only with the JSON object that is asked for."
)


# response models (structured outputs), one per text type -------------------------------------------------
class Attributes(BaseModel):
    attributes: list[str]


class Lookalikes(BaseModel):
    things: list[str]


class Synonyms(BaseModel):
    synonyms: list[str]


class Differences(BaseModel):
    differences: list[str]


@dataclass(frozen=True)
class Request:
    kind: str
    subject: str
    response_model: type[BaseModel]
    prompt: str
    n: int

    @property
    def field(self) -> str:
        return next(iter(self.response_model.model_fields))

    def messages(self, structured: bool = True) -> list[dict[str, str]]:
        """The chat messages; a plain-mode request says the JSON shape in words (a literal example with placeholders
        gets copied by small models), a structured one needs no hint (the schema travels with it)."""
        content = self.prompt
        if not structured:
            content += (
                f' Reply with a JSON object whose key "{self.field}" holds a list of short phrases, nothing else.'
            )
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]


# requests ------------------------------------------------------------------------------------------------
def attribute_request(classname: str, n: int) -> Request:
    prompt = (
        f"List {n} distinct visual attributes that identify a {classname} in a photo. Each is a short noun phrase "
        f"that completes the sentence '{classname} which has ...', for example 'a long curved beak'."
    )
    return Request("att", classname, Attributes, prompt, n)


def analogy_request(classname: str, n: int, exclude: Sequence[str] = ()) -> Request:
    prompt = (
        f"List {n} other things (animals, objects, plants or scenes) that look similar to a {classname} in a photo "
        f"but are not a {classname}. Each is a short noun phrase, for example 'a wolf'."
    )
    if exclude:
        prompt += f" Do not list any of: {', '.join(sorted(set(exclude)))}."
    return Request("ana", classname, Lookalikes, prompt, n)


def synonym_request(classname: str, n: int) -> Request:
    prompt = (
        f"List up to {n} synonyms or other common names for '{classname}' that name exactly the same thing. "
        f"Each is a word or a short phrase, not '{classname}' itself."
    )
    return Request("syno", classname, Synonyms, prompt, n)


def difference_request(a: str, b: str, n: int) -> Request:
    prompt = (
        f"List {n} short visual differences that tell a {a} apart from a {b} in a photo. Each is a short noun "
        f"phrase that completes the sentence 'a {a} which, unlike a {b}, has ...', for example 'a shorter tail'."
    )
    return Request("ovo", f"{a} | {b}", Differences, prompt, n)
