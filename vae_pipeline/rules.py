"""The rules of params.yaml's keys: what a key allows, in words (`allowed`, the text of every message
about it) and as the pydantic type that checks it. vae_pipeline/params.py writes each section's fields
with them; vae_pipeline/outputs.py checks the stages' JSON files key by key with them.
"""
import ipaddress
from functools import cached_property
from typing import Annotated, Literal, Optional, Union

from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError


class Rule:
    """A field's rule: `allowed`, the words every message about it uses, and `annotation`, the
    pydantic type that checks it. Written in a field as `Annotated[int, integer(1)]`: the type
    there is for the reader, the rule's annotation is what pydantic checks."""

    def __init__(self, allowed: str, annotation):
        self.allowed, self.annotation = allowed, annotation

    @cached_property
    def adapter(self) -> TypeAdapter:
        return TypeAdapter(self.annotation, config=ConfigDict(strict=True))

    def __get_pydantic_core_schema__(self, source, handler):
        return handler.generate_schema(self.annotation)

    def check(self, value) -> bool:
        """Whether `value` keeps the rule (for files checked key by key: vae.json, the metrics JSON)."""
        try:
            self.adapter.validate_python(value)
        except ValidationError:
            return False
        return True


def integer(lo=None, hi=None) -> Rule:
    bounds = " and ".join(s for s in (lo is not None and f">= {lo}", hi is not None and f"<= {hi}") if s)
    return Rule(f"an integer {bounds}".strip(), Annotated[int, Field(ge=lo, le=hi)])


def number(lo=None, above=None) -> Rule:
    """An int or a float, kept as given (1 stays 1: it is logged and written as it was read)."""
    bound = f" >= {lo}" if lo is not None else f" > {above}" if above is not None else ""
    limits = Field(ge=lo, gt=above)
    return Rule(f"a number{bound}", Union[Annotated[int, limits], Annotated[float, limits]])


def choice(*values) -> Rule:
    return Rule(f"one of {', '.join(map(str, values))}", Literal[values])


def text() -> Rule:
    return Rule("a string", Annotated[str, Field(min_length=1)])


def address() -> Rule:
    """One IP address a server can bind: not the unspecified (wildcard) address, which binds every network."""
    def bindable(value: str) -> str:
        if ipaddress.ip_address(value).is_unspecified:   # a ValueError for no address at all
            raise ValueError("a wildcard address")
        return value
    return Rule("one IP address (not a wildcard address)", Annotated[str, AfterValidator(bindable)])


def boolean() -> Rule:
    return Rule("true or false", bool)


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.allowed}", Optional[rule.annotation])


def list_of(rule: Rule, min_len=1) -> Rule:
    return Rule(f"a list of at least {min_len} items, each {rule.allowed}",
                Annotated[list[rule.annotation], Field(min_length=min_len)])


def mapping_of(rule: Rule) -> Rule:
    return Rule(f"a mapping of names to {rule.allowed}", dict[str, rule.annotation])
