"""THE label-matching rule: which workspace label value a segment stands for.

A segment tagged ``hila_review`` (the likely-error region) matches nothing. Order: 1. a segment tag ``hila_label`` (or a tag key ``hila_<value>``), 2. the name ignoring case and
surrounding whitespace, 3. the terminology's type name in the ``TerminologyEntry`` tag (Slicer's
``~``-separated ``scheme^code^meaning`` triplets; the 3rd triplet is the type), 4. the alias table.
Plain functions on plain data: names, tag dicts, (name, value) label lists.

Structure names of one RTSTRUCT may come in several *contour sets* of the same organs: the manual
ones (``Prostata``) and auto-contours marked by a suffix (``Prostate_DL``, ``Bladder_MBS``);
:func:`contour_set` splits such a name into its organ name and its set (``AUTO_SET_SUFFIXES``).
"""

from __future__ import annotations

TAG_KEY = "hila_label"
#: The engine's likely-error segment ("Review: likely error", tagged ``hila_review``) stands for no label, ever.
REVIEW_TAG, REVIEW_NAME = "hila_review", "Review: likely error"

# Aliases (lower-case) -> canonical label name; Italian RTSTRUCT names and common English variants.
ALIASES = {
    "prostata": "prostate", "prostate gland": "prostate",
    "vescica": "bladder", "urinary bladder": "bladder", "vescica urinaria": "bladder",
    "retto": "rectum", "anorectum": "rectum", "ano-retto": "rectum", "rectum and anus": "rectum",
    "femoresinistro": "femoral head left", "femore sinistro": "femoral head left", "left femoral head": "femoral head left",
    "femoralhead (left)": "femoral head left", "femur head l": "femoral head left", "femoral head l": "femoral head left",
    "femoredestro": "femoral head right", "femore destro": "femoral head right", "right femoral head": "femoral head right",
    "femoralhead (right)": "femoral head right", "femur head r": "femoral head right", "femoral head r": "femoral head right",
}


# Name suffixes that mark an auto-contour set in an RTSTRUCT (deep learning, model/atlas based).
AUTO_SET_SUFFIXES = ("DL", "MBS", "ABS", "AI", "AUTO", "ATLAS")
MANUAL_SET = "manual"


def contour_set(name) -> tuple[str, str]:
    """(organ name, set): ``'Prostate_DL'`` -> ``('Prostate', 'DL')``, ``'Prostata'`` -> ``('Prostata', 'manual')``."""
    text = str(name).strip()
    head, sep, tail = text.rpartition("_")
    if sep and head.strip() and tail.strip().upper() in AUTO_SET_SUFFIXES:
        return head.strip(), tail.strip().upper()
    return text, MANUAL_SET


def _norm(name) -> str:
    return " ".join(str(name).strip().lower().replace("_", " ").split())


def canonical_name(name) -> str:
    """The structure a name stands for, as the colour and terminology tables key it: lower case, single spaces,
    an auto-contour suffix dropped, aliases resolved (``'Prostata_DL'`` -> ``'prostate'``)."""
    key = _norm(contour_set(name)[0])
    return ALIASES.get(key, key)


def terminology_name(tags: dict | None) -> str | None:
    """The type meaning of a Slicer ``TerminologyEntry`` tag, or None."""
    entry = (tags or {}).get("TerminologyEntry")
    if not entry:
        return None
    parts = str(entry).split("~")
    if len(parts) < 3:
        return None
    fields = parts[2].split("^")
    return fields[2].strip() if len(fields) >= 3 and fields[2].strip() else None


def match_label(name, tags: dict | None, labels) -> int | None:
    """Workspace label value for a segment (``labels``: iterable of (name, value)), or None."""
    labels = [(str(n), int(v)) for n, v in labels]
    values = {v for _, v in labels}
    tags = tags or {}
    if REVIEW_TAG in tags:
        return None
    if TAG_KEY in tags:
        try:
            v = int(str(tags[TAG_KEY]).strip())
        except ValueError:
            v = None
        if v in values:
            return v
    for key in tags:
        if str(key).startswith("hila_") and str(key)[5:].isdigit() and int(str(key)[5:]) in values:
            return int(str(key)[5:])
    by_name = {_norm(n): v for n, v in labels}
    candidates = [name, terminology_name(tags)]
    for cand in candidates:
        if cand is not None and _norm(cand) in by_name:
            return by_name[_norm(cand)]
    for cand in candidates:
        if cand is not None and ALIASES.get(_norm(cand)) in by_name:
            return by_name[ALIASES[_norm(cand)]]
    return None


def renamed_to_another(name, tags: dict | None, labels) -> tuple[str, str] | None:
    """(the label its tag says, the label its name says) for a segment whose ``hila_label`` tag and name stand for two
    different labels (a user renamed "prostate" to "bladder"): which one is meant cannot be told, so Accept asks."""
    labels = [(str(n), int(v)) for n, v in labels]
    tags = tags or {}
    if TAG_KEY not in tags or REVIEW_TAG in tags:
        return None
    by_tag = match_label(name, {TAG_KEY: tags[TAG_KEY]}, labels)
    by_name = match_label(name, None, labels)
    if by_tag is None or by_name is None or by_tag == by_name:
        return None
    names = {v: n for n, v in labels}
    return names[by_tag], names[by_name]


def missing_labels(segments, labels) -> list[str]:
    """Label names no segment ((name, tags) pairs) matches; Accept refuses when this is not empty."""
    labels = [(str(n), int(v)) for n, v in labels]
    found = {match_label(n, t, labels) for n, t in segments}
    return [n for n, v in labels if v not in found]
