"""Options as dataclass fields that carry their command-line form and their range: the one source of
every training option's default, choices, range and help. The library checks the ranges
(:func:`check_ranges`) and :mod:`dbsn.cli` builds its parsers from the same fields
(:func:`add_arguments`, :func:`from_arguments`).
"""

from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import MISSING, field, fields


def option(default=None, help: str = "", *, low=None, high=None, low_open: bool = False, high_open: bool = False,
           integer: bool = False, choices=None, nargs=None, parse=None, group: str | None = None,
           cli: bool = True, factory=None, what: str = ""):
    """A dataclass field with its command-line form (``--field-name``) and its range.

    Args:
        low, high, low_open, high_open, integer: the range, checked by the library and by the parser.
        choices, nargs: as argparse takes them.
        parse: for a value written as text on the command line (``"0.6,0.1,0.3"``): a function
            ``(text, flag) -> value`` that raises ``ValueError`` saying what it expects.
        group: the argument group the option is listed under.
        cli: False for an option the command line does not offer.
        what: what the parser calls the value in its messages (default: an integer / a number).
    """
    meta = dict(help=help, low=low, high=high, low_open=low_open, high_open=high_open, integer=integer,
                choices=choices, nargs=nargs, parse=parse, group=group, cli=cli, what=what)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_number(option: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False, integer: bool = False) -> None:
    """Refuse a ``value`` that is not a finite number (``integer``: a whole one) in its range.

    The command line's types check the same; this is for callers of the library, whose
    options reach the loop without them.
    """
    kind = "a whole number" if integer else "a finite number"
    bounds = []
    if low is not None:
        bounds.append(f"above {low:g}" if low_open else f"at least {low:g}")
    if high is not None:
        bounds.append(f"below {high:g}" if high_open else f"at most {high:g}")
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    fits = is_number and math.isfinite(value) and (not integer or float(value).is_integer())
    if fits and low is not None:
        fits = value > low if low_open else value >= low
    if fits and high is not None:
        fits = value < high if high_open else value <= high
    if not fits:
        expected = " ".join([kind, " and ".join(bounds)]).strip()
        raise ValueError(f"{option} expects {expected}, got {value!r}")


def _ranged(f) -> bool:
    return f.metadata.get("low") is not None or f.metadata.get("high") is not None or f.metadata.get("integer")


def check_ranges(options) -> None:
    """Check every option of ``options`` that declares a range (None means unset and passes)."""
    for f in fields(options):
        value = getattr(options, f.name)
        if _ranged(f) and value is not None:
            m = f.metadata
            check_number(flag_of(f.name), value, m["low"], m["high"], low_open=m["low_open"],
                         high_open=m["high_open"], integer=m["integer"])
        if f.metadata.get("choices") is not None and value is not None and value not in f.metadata["choices"]:
            raise ValueError(f"{flag_of(f.name)} must be one of {tuple(f.metadata['choices'])}, got {value!r}")


def number_type(kind, low=None, high=None, low_open=False, what="", high_open=False):
    """An argparse type: a finite ``kind`` (int or float) in [low, high] (``low_open``: above ``low``,
    ``high_open``: below ``high``)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what or ('an integer' if kind is int else 'a number')}, "
                                             f"got {text!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            bounds = (f"above {low}" if low_open else f"at least {low}") if low is not None else ""
            if high is not None:
                top = f"below {high}" if high_open else f"at most {high}"
                bounds = f"{bounds} and {top}" if bounds else top
            raise argparse.ArgumentTypeError(f"expected {what or 'a value'} {bounds}, got {text!r}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def comma_numbers(count: int | None = None):
    """A ``parse`` for :func:`option`: comma-separated finite numbers (``count`` of them when given)."""
    def parse(text: str, flag: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if not values or (count is not None and len(values) != count) or not all(math.isfinite(v) for v in values):
            raise ValueError(f"{flag} takes {count or 'some'} comma-separated finite numbers, got {text!r}")
        return values
    return parse


def default_of(f):
    """The default of the dataclass field ``f`` (from its factory where it has one)."""
    return f.default_factory() if f.default is MISSING else f.default


def add_arguments(parser, cls, groups: dict | None = None, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` per command-line field of the dataclass ``cls``, under its group when
    ``groups`` has it; the parser's defaults are None, so :func:`from_arguments` knows what was given."""
    for f in fields(cls):
        m = f.metadata
        if not m.get("cli", True) or f.name in skip:
            continue
        target = (groups or {}).get(m.get("group"), parser)
        default = default_of(f)
        if m.get("parse") is not None:  # a tuple written as comma-separated numbers
            shown = f" (default {','.join(f'{v:g}' for v in default)})"
        else:
            shown = f" (default {default})" if default not in (None, "", [], False) else ""
        kwargs = dict(help=(m.get("help", "") + shown).strip() or None, default=None)
        if isinstance(default, bool):
            kwargs.update(action="store_true", default=None)
        elif m.get("parse") is not None:
            kwargs.update(type=str)
        else:
            if _ranged(f):
                integer = m["integer"]
                kwargs["type"] = number_type(int if integer else float, m["low"], m["high"], m["low_open"],
                                             m["what"] or ("an integer" if integer else "a number"), m["high_open"])
            elif isinstance(default, float) or "float" in str(f.type):
                kwargs["type"] = number_type(float, what=m["what"] or "a number")
            elif isinstance(default, int) or str(f.type).startswith("int"):
                kwargs["type"] = int
            if m.get("choices") is not None:
                kwargs["choices"] = tuple(m["choices"])
            if m.get("nargs") is not None:
                kwargs["nargs"] = m["nargs"]
        target.add_argument(flag_of(f.name), **kwargs)


def from_arguments(cls, args: argparse.Namespace, **given):
    """The dataclass ``cls`` from parsed arguments: each option given on the command line, else its
    default; ``given`` (values built elsewhere, e.g. model settings) go in as they are."""
    values = {}
    for f in fields(cls):
        if f.name in given or not f.metadata.get("cli", True):
            continue
        value = getattr(args, f.name, None)
        if value is None:
            continue
        parse = f.metadata.get("parse")
        values[f.name] = parse(value, flag_of(f.name)) if parse is not None else value
    return cls(**values, **given)
