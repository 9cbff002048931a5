"""A signal's coarse attributes for the regional picture: area, branch and month.

Parsed where they enter (the local API and ``samenloop signal import``), so
that a picture never counts a typo as a place or a branch. Plain functions, no
I/O; every error names its field.

* **Area**: a postcode-4 (``5038``), a CBS wijk code (``WK085501``) or a CBS
  buurt code (``BU08550101``). The kind follows from the code's shape when the
  import does not say it.
* **Branch**: an SBI 2008 code as the KvK registers it, 2 to 5 digits whose
  first two are one of the SBI's divisions (``5610``: restaurants). A code
  such as ``0412`` is not a branch of any register and is refused.
* **Month**: ``YYYY-MM``; a date or a time is cut to its month.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Final

from samenloop.node.signals.models import AreaKind
from samenloop.policies.errors import InvalidInput

__all__ = [
    "AREA_FORMATS",
    "SBI_DIVISIONS",
    "area_kind_of",
    "check_area",
    "check_branch",
    "parse_month",
]


def _divisions(*spans: tuple[int, int]) -> frozenset[str]:
    return frozenset(f"{n:02d}" for first, last in spans for n in range(first, last + 1))


#: The two-digit divisions of SBI 2008 (Standaard Bedrijfsindeling), sections A to U.
SBI_DIVISIONS: Final = _divisions(
    (1, 3),  # A agriculture, forestry, fishing
    (5, 9),  # B mining
    (10, 33),  # C manufacturing
    (35, 35),  # D energy
    (36, 39),  # E water, waste
    (41, 43),  # F construction
    (45, 47),  # G trade
    (49, 53),  # H transport, storage
    (55, 56),  # I accommodation, food service
    (58, 63),  # J information, communication
    (64, 66),  # K financial services
    (68, 68),  # L real estate
    (69, 75),  # M professional, scientific services
    (77, 82),  # N rental, other business services
    (84, 84),  # O public administration
    (85, 85),  # P education
    (86, 88),  # Q health and social work
    (90, 93),  # R culture, sport, recreation
    (94, 96),  # S other services
    (97, 98),  # T households
    (99, 99),  # U extraterritorial organisations
)

#: Each area kind's code shape, with the words for an error message.
AREA_FORMATS: Final = {
    AreaKind.POSTCODE4: (re.compile(r"[1-9][0-9]{3}"), "four digits, not starting with 0"),
    AreaKind.CBS_WIJK: (re.compile(r"WK[0-9]{6}"), "WK and six digits"),
    AreaKind.CBS_BUURT: (re.compile(r"BU[0-9]{8}"), "BU and eight digits"),
}

_BRANCH: Final = re.compile(r"[0-9]{2,5}")
_MONTH: Final = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")


def check_branch(code: str, *, field: str = "branch") -> str:
    """The SBI code, if it is 2 to 5 digits of a known division; else ``InvalidInput``."""
    if not _BRANCH.fullmatch(code):
        raise InvalidInput("an SBI code is 2 to 5 digits", field=field, reason="branch.format")
    if code[:2] not in SBI_DIVISIONS:
        raise InvalidInput(
            f"{code[:2]} is not an SBI 2008 division (the code's first two digits)",
            field=field,
            reason="branch.division",
        )
    return code


def area_kind_of(code: str) -> AreaKind | None:
    """The kind of area a code is by its shape; None if it has none of the shapes."""
    return next((k for k, (pattern, _) in AREA_FORMATS.items() if pattern.fullmatch(code)), None)


def check_area(kind: AreaKind | None, code: str, *, field: str = "area") -> tuple[AreaKind, str]:
    """The area as (kind, code): ``kind`` checked against the code's shape, or inferred from
    it when None. CBS codes are case-insensitive on input (``wk085501``)."""
    code = code.strip()
    if code[:2].lower() in ("wk", "bu"):
        code = code.upper()
    if kind is None:
        found = area_kind_of(code)
        if found is None:
            raise InvalidInput(
                "an area is a postcode-4 (5038), a CBS wijk code (WK085501) "
                "or a CBS buurt code (BU08550101)",
                field=field,
                reason="area.code",
            )
        return found, code
    pattern, shape = AREA_FORMATS[kind]
    if not pattern.fullmatch(code):
        raise InvalidInput(f"a {kind.value} code is {shape}", field=field, reason="area.code")
    return kind, code


def parse_month(text: str, *, field: str = "month") -> str:
    """``YYYY-MM`` from a month, a date (``2026-10-15``) or an ISO time."""
    text = text.strip()
    if _MONTH.fullmatch(text):
        return text
    try:
        moment: date = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            "a month is written YYYY-MM (or a date)", field=field, reason="month.format"
        ) from None
    return f"{moment.year:04d}-{moment.month:02d}"
