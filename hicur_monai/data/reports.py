"""Structured findings from free-text nasopharyngoscopy reports.

The parser organises a report by nasopharynx region (left wall, right wall, roof, posterior
wall; plus the fossa of Rosenmüller, torus tubarius, choanae and nasal cavity where named)
and finding (congestion, swelling, neoplasm, ulceration, secretion, bleeding; "smooth"
regions separately), with negation ("no neoplasm", "without ulceration"), uncertainty
("suspicious for", "cannot be excluded"), laterality ("bilateral" -> both walls) and the
impression / diagnosis line. A mass is followed through the report: walls it extends onto
("extending onto the posterior wall", also in a later sentence: "It spreads to the roof"),
walls named in one list ("fills the vault and both lateral recesses", "the roof, the
posterior wall and the left torus") and findings that refer back to it ("contact bleeding on
touch", "its surface is ulcerated") apply to every wall it occupies.

All wording lives in YAML pattern files (``hicur_monai/data/patterns/<language>.yaml``);
this module holds only the logic, so a hospital adds its own phrasing by writing another
YAML file (see :func:`load_patterns`).

Example:
    >>> from hicur_monai.data.reports import parse_report
    >>> r = parse_report("Both lateral walls congested. No new growth.\\nImpression: nasopharyngitis.")
    >>> r.findings["left_wall"]["congestion"], r.findings["roof"]["neoplasm"], r.impression["category"]
    ('present', 'absent', 'inflammation')
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hicur_monai.data.nasopharynx import FINDINGS, IMPRESSION_CATEGORIES, MAIN_REGIONS, REGIONS, category_from_grid

__all__ = [
    "PATTERN_DIR",
    "PatternSet",
    "Mention",
    "ParsedReport",
    "ReportParser",
    "load_patterns",
    "parse_report",
    "parse_report_file",
    "score_findings",
]

#: folder holding the packaged pattern files, one per language (``en.yaml``)
PATTERN_DIR = Path(__file__).resolve().parent / "patterns"

_RANK = {"absent": 0, "uncertain": 1, "present": 2}
_LIST_KEYS = ("ignore", "bilateral", "normal", "uncertainty", "global", "clause_split", "anaphora", "extension",
              "lesion_reference")
_FILLER = re.compile(
    r"\b(?:or|and|nor|any|obvious|definite|evident|of|the|a|an|is|are|was|were|seen|noted|found|identified|"
    r"observed|visible|present|detected|other|signs?|evidence)\b|[\s:;,.!()\-]+",
    re.I,
)


@dataclass
class _RegionRule:
    pattern: re.Pattern
    regions: tuple[str, ...]
    lateral: bool


@dataclass
class PatternSet:
    """Compiled patterns of one language (built by :func:`load_patterns`)."""

    language: str
    sources: list[str]
    ignore: list[re.Pattern]
    regions: list[_RegionRule]
    bilateral: list[re.Pattern]
    findings: dict[str, list[re.Pattern]]
    normal: list[re.Pattern]
    negation_pre: list[re.Pattern]
    negation_post: list[re.Pattern]
    negation_scope_end: list[re.Pattern]
    uncertainty: list[re.Pattern]
    global_cues: list[re.Pattern]
    anaphora: list[re.Pattern]
    lesion_reference: list[re.Pattern]
    extension: list[re.Pattern]
    region_conjunctions: list[re.Pattern]
    region_fillers: list[re.Pattern]
    clause_split: list[re.Pattern]
    impression_keys: list[str]
    impression_categories: dict[str, list[re.Pattern]]
    impression_benign: list[re.Pattern]


def _compile(pattern: Any, where: str) -> re.Pattern:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"{where}: expected a non-empty regular expression string, got {pattern!r}")
    try:
        return re.compile(pattern, re.I)
    except re.error as err:
        raise ValueError(f"{where}: invalid regular expression {pattern!r}: {err}") from None


def _merge(base: dict, extra: dict) -> dict:
    """Merge pattern documents: lists are appended, mappings merged recursively, scalars replaced."""
    out = dict(base)
    for key, value in extra.items():
        if key in out and isinstance(out[key], list) and isinstance(value, list):
            out[key] = out[key] + value
        elif key in out and isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_patterns(files: Sequence[str | Path] | None = None, language: str = "en",
                  include_default: bool = True) -> PatternSet:
    """Load and compile report patterns.

    Args:
        files: extra YAML files; their lists are appended to the packaged ones.
        language: which packaged file to start from (``patterns/<language>.yaml``).
        include_default: start from the packaged file (``False``: only ``files``).

    Raises:
        FileNotFoundError: a pattern file (or the language) does not exist.
        ValueError: naming the file, the key and what is wrong with it.
    """
    paths: list[Path] = []
    if include_default:
        default = PATTERN_DIR / f"{language}.yaml"
        if not default.is_file():
            known = sorted(p.stem for p in PATTERN_DIR.glob("*.yaml"))
            raise FileNotFoundError(f"no report patterns for language {language!r} ({default}); known: {known}")
        paths.append(default)
    paths.extend(Path(f) for f in files or ())
    if not paths:
        raise ValueError("load_patterns needs at least one pattern file")
    doc: dict = {}
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"report pattern file not found: {path}")
        try:
            part = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML: {err}") from None
        if part is None:
            continue
        if not isinstance(part, dict):
            raise ValueError(f"{path}: expected a mapping at the top level, got {type(part).__name__}")
        _check_doc(part, path)
        doc = _merge(doc, part)
    where = "+".join(str(p) for p in paths)
    return _build(doc, where, [str(p) for p in paths])


def _check_doc(doc: dict, path: Path) -> None:
    for key in _LIST_KEYS:
        if key in doc and not isinstance(doc[key], list):
            raise ValueError(f"{path}: key {key!r} must be a list of patterns, got {type(doc[key]).__name__}")
    for key in ("findings", "negation", "impression", "region_lists"):
        if key in doc and not isinstance(doc[key], dict):
            raise ValueError(f"{path}: key {key!r} must be a mapping, got {type(doc[key]).__name__}")
    for key, value in (doc.get("region_lists") or {}).items():
        if key not in ("conjunctions", "fillers") or not isinstance(value, list):
            raise ValueError(f"{path}: region_lists.{key} must be one of 'conjunctions', 'fillers' and hold a list "
                             "of patterns")
    for name in doc.get("findings", {}) or {}:
        if name not in FINDINGS:
            raise ValueError(f"{path}: findings.{name} is not a known finding; known: {list(FINDINGS)}")
    for i, rule in enumerate(doc.get("regions", []) or []):
        if not isinstance(rule, dict) or "pattern" not in rule or "regions" not in rule:
            raise ValueError(f"{path}: regions[{i}] must be a mapping with 'pattern' and 'regions'")
        bad = [r for r in rule["regions"] if r not in REGIONS]
        if bad:
            raise ValueError(f"{path}: regions[{i}] names unknown region(s) {bad}; known: {list(REGIONS)}")
    cats = (doc.get("impression") or {}).get("categories") or {}
    for name in cats:
        if name not in IMPRESSION_CATEGORIES:
            raise ValueError(f"{path}: impression.categories.{name} is not a known category; "
                             f"known: {list(IMPRESSION_CATEGORIES)}")


def _build(doc: dict, where: str, sources: list[str]) -> PatternSet:
    def plist(key: str, items: Iterable[Any] | None) -> list[re.Pattern]:
        return [_compile(p, f"{where}: {key}[{i}]") for i, p in enumerate(items or [])]

    for required in ("regions", "findings"):
        if not doc.get(required):
            raise ValueError(f"{where}: required key {required!r} is missing or empty")
    regions = [
        _RegionRule(_compile(r["pattern"], f"{where}: regions[{i}].pattern"), tuple(r["regions"]),
                    bool(r.get("lateral", False)))
        for i, r in enumerate(doc["regions"])
    ]
    neg = doc.get("negation") or {}
    imp = doc.get("impression") or {}
    lists = doc.get("region_lists") or {}
    return PatternSet(
        language=str(doc.get("language", "en")),
        sources=sources,
        ignore=plist("ignore", doc.get("ignore")),
        regions=regions,
        bilateral=plist("bilateral", doc.get("bilateral")),
        findings={f: plist(f"findings.{f}", doc["findings"].get(f)) for f in FINDINGS},
        normal=plist("normal", doc.get("normal")),
        negation_pre=plist("negation.pre", neg.get("pre")),
        negation_post=plist("negation.post", neg.get("post")),
        negation_scope_end=plist("negation.scope_end", neg.get("scope_end")),
        uncertainty=plist("uncertainty", doc.get("uncertainty")),
        global_cues=plist("global", doc.get("global")),
        anaphora=plist("anaphora", doc.get("anaphora")),
        lesion_reference=plist("lesion_reference", doc.get("lesion_reference")),
        extension=plist("extension", doc.get("extension")),
        region_conjunctions=plist("region_lists.conjunctions", lists.get("conjunctions")),
        region_fillers=plist("region_lists.fillers", lists.get("fillers")),
        clause_split=plist("clause_split", doc.get("clause_split")),
        impression_keys=[str(k) for k in imp.get("keys") or []],
        impression_categories={c: plist(f"impression.categories.{c}", (imp.get("categories") or {}).get(c))
                               for c in IMPRESSION_CATEGORIES if c != "suspected_neoplasm"},
        impression_benign=plist("impression.benign", imp.get("benign")),
    )


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Mention:
    """One finding (or "smooth") statement found in a report, with its evidence."""

    finding: str  #: a key of FINDINGS, or "normal"
    status: str  #: "present", "uncertain" or "absent"
    regions: tuple[str, ...]  #: region keys it applies to; () when unlocalised
    text: str  #: the matched words
    clause: str  #: the clause it was read from


@dataclass
class ParsedReport:
    """Structured findings of one report.

    Attributes:
        findings: region -> finding -> status for the four walls and any named sub-site.
        unlocalised: finding -> status for statements that name no region.
        smooth: regions stated to be smooth / normal that carry no positive finding.
        negated: ``(region, finding)`` pairs explicitly stated absent.
        impression: ``{"text", "category", "source"}`` (source "report" or "findings").
        regions_named: every region the report names.
        mentions: the evidence, statement by statement.
    """

    findings: dict[str, dict[str, str]]
    unlocalised: dict[str, str]
    smooth: list[str]
    negated: list[tuple[str, str]]
    impression: dict[str, str]
    regions_named: list[str]
    mentions: list[Mention] = field(default_factory=list)

    def present(self, include_uncertain: bool = False) -> list[tuple[str, str]]:
        """``(region, finding)`` pairs stated present (and uncertain, if asked), main regions first."""
        keep = ("present", "uncertain") if include_uncertain else ("present",)
        return [(r, f) for r, grid in self.findings.items() for f, s in grid.items() if s in keep]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (same layout as the demo cohort's ground-truth sidecars)."""
        return {
            "findings": self.findings,
            "unlocalised": self.unlocalised,
            "smooth": self.smooth,
            "negated": [list(p) for p in self.negated],
            "impression": self.impression,
            "regions_named": self.regions_named,
            "mentions": [{"finding": m.finding, "status": m.status, "regions": list(m.regions),
                          "text": m.text, "clause": m.clause} for m in self.mentions],
        }


# ----------------------------------------------------------------------------- parser
@dataclass
class _Lesion:
    """The mass a report is describing: its walls and the findings stated of it."""

    regions: tuple[str, ...]
    findings: dict[str, str]  #: finding -> status, "neoplasm" first


@dataclass
class _Positive:
    """A present or uncertain finding of the sentence being read."""

    index: int  #: position in the sentence's mentions
    start: int  #: where it starts in the sentence
    clause: int  #: its clause
    own_region: bool  #: its clause names a region of its own
    is_global: bool  #: its clause says "diffuse", "throughout" ...


@dataclass
class _Span:
    start: int
    end: int
    key: Any
    text: str
    extra: Any = None


def _fold(text: str) -> str:
    """NFKD-normalise and drop combining marks (Rosenmüller -> Rosenmuller), keep length per char."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _non_overlapping(spans: list[_Span]) -> list[_Span]:
    """Keep the longest of overlapping spans (ties: the earlier one)."""
    spans = sorted(spans, key=lambda s: (-(s.end - s.start), s.start))
    kept: list[_Span] = []
    for s in spans:
        if all(s.end <= k.start or s.start >= k.end for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: s.start)


def _any(patterns: Sequence[re.Pattern], text: str) -> bool:
    return any(p.search(text) for p in patterns)


class ReportParser:
    """Parse nasopharyngoscopy reports with a :class:`PatternSet`.

    Args:
        patterns: a :class:`PatternSet`, or extra YAML files to load on top of the
            packaged language file, or ``None`` for the packaged file alone.
        language: packaged language file to start from.
    """

    def __init__(self, patterns: PatternSet | Sequence[str | Path] | None = None, language: str = "en"):
        if isinstance(patterns, PatternSet):
            self.patterns = patterns
        else:
            self.patterns = load_patterns(patterns, language=language)
        keys = "|".join(f"(?:{k})" for k in self.patterns.impression_keys) or r"(?!x)x"
        self._impression_line = re.compile(rf"^\s*(?:{keys})\s*[:：\-]\s*(.*)$", re.I)
        self._heading = re.compile(r"^\s*[A-Za-z][A-Za-z ]{0,40}:\s*$")

    # -- public -------------------------------------------------------------------------
    def parse(self, text: str) -> ParsedReport:
        """Parse one report's text.

        Raises:
            TypeError: ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise TypeError(f"report text must be a str, got {type(text).__name__}")
        body, impression_text = self._split_impression(_fold(text))
        grid: dict[str, dict[str, str]] = {r: {f: "absent" for f in FINDINGS} for r in MAIN_REGIONS}
        unlocalised = {f: "absent" for f in FINDINGS}
        negated: set[tuple[str, str]] = set()
        smooth: set[str] = set()
        named: set[str] = set()
        mentions: list[Mention] = []
        previous: tuple[str, ...] = ()
        lesion: _Lesion | None = None
        for sentence in self._sentences(body):
            sentence_mentions, previous, lesion = self._read_sentence(sentence, previous, lesion)
            for m, region_keys in sentence_mentions:
                mentions.append(m)
                named.update(region_keys)
                if m.finding == "normal":
                    smooth.update(m.regions)
                    continue
                targets = m.regions
                if not targets:
                    if _RANK[m.status] > _RANK[unlocalised[m.finding]]:
                        unlocalised[m.finding] = m.status
                    continue
                for r in targets:
                    cell = grid.setdefault(r, {f: "absent" for f in FINDINGS})
                    if m.status == "absent":
                        negated.add((r, m.finding))
                    elif _RANK[m.status] > _RANK[cell[m.finding]]:
                        cell[m.finding] = m.status
        negated = {(r, f) for r, f in negated if grid[r][f] == "absent"}
        smooth_final = [r for r in REGIONS if r in smooth and all(s == "absent" for s in grid.get(r, {}).values())]
        impression = self._impression(impression_text, grid)
        ordered = {r: grid[r] for r in REGIONS if r in grid}
        return ParsedReport(
            findings=ordered,
            unlocalised=unlocalised,
            smooth=smooth_final,
            negated=sorted(negated, key=lambda p: (REGIONS.index(p[0]), FINDINGS.index(p[1]))),
            impression=impression,
            regions_named=[r for r in REGIONS if r in named],
            mentions=mentions,
        )

    # -- structure ----------------------------------------------------------------------
    def _split_impression(self, text: str) -> tuple[str, str | None]:
        lines = text.splitlines()
        body: list[str] = []
        impression: list[str] = []
        i = 0
        while i < len(lines):
            m = self._impression_line.match(lines[i])
            if m:
                rest = m.group(1).strip()
                if not rest:  # heading on its own line: the impression follows
                    i += 1
                    while i < len(lines) and lines[i].strip() and not self._heading.match(lines[i]):
                        impression.append(lines[i].strip())
                        i += 1
                    continue
                impression.append(rest)
            elif not self._heading.match(lines[i]):
                body.append(lines[i])
            i += 1
        return "\n".join(body), (" ".join(impression) if impression else None)

    @staticmethod
    def _sentences(text: str) -> list[str]:
        parts = re.split(r"(?<=[.!])\s+|\n+|(?<=\w\?)\s+(?=[A-Z])", text)
        return [p.strip() for p in parts if p and p.strip()]

    def _clauses(self, sentence: str) -> list[tuple[int, int]]:
        cuts = sorted({m.start() for p in self.patterns.clause_split for m in p.finditer(sentence)})
        bounds, start = [], 0
        for c in cuts:
            if c > start:
                bounds.append((start, c))
            start = c
        bounds.append((start, len(sentence)))
        return bounds

    # -- reading ------------------------------------------------------------------------
    def _region_spans(self, sentence: str) -> list[_Span]:
        spans = [_Span(m.start(), m.end(), rule.regions, m.group(0), rule.lateral)
                 for rule in self.patterns.regions for m in rule.pattern.finditer(sentence)]
        return _non_overlapping(spans)

    def _finding_spans(self, clause: str) -> list[_Span]:
        spans = [_Span(m.start(), m.end(), f, m.group(0))
                 for f, pats in self.patterns.findings.items() for p in pats for m in p.finditer(clause)]
        spans += [_Span(m.start(), m.end(), "normal", m.group(0)) for p in self.patterns.normal
                  for m in p.finditer(clause)]
        return _non_overlapping(spans)

    def _resolve_regions(self, span: _Span, sentence: str) -> tuple[str, ...]:
        regions = list(span.key)
        if span.extra and _any(self.patterns.bilateral, sentence):  # unsided lateral structure said bilateral
            regions += ["left_wall", "right_wall"]
        return tuple(dict.fromkeys(regions))

    def _gap_kind(self, gap: str) -> str | None:
        """How the text between two region mentions joins them: ``"conj"`` (a conjunction or
        nothing), ``"comma"`` (only commas and fillers), or None (they are not one list)."""
        rest, conj = gap, False
        for p in self.patterns.region_conjunctions:
            rest, n = p.subn(" ", rest)
            conj = conj or n > 0
        for p in self.patterns.region_fillers:
            rest = p.sub(" ", rest)
        comma = "," in rest
        if rest.replace(",", " ").strip():
            return None
        return "comma" if comma and not conj else "conj"

    def _region_lists(self, spans: list[_Span], sentence: str) -> list[list[_Span]]:
        """Region mentions that form one list ("the roof, the posterior wall and both fossae").

        Mentions joined by a conjunction are one list; mentions joined only by a comma are one
        list when the list ends with a conjunction ("A, B and C"), else separate statements
        ("tumour on the roof, left wall, right wall free")."""
        runs: list[tuple[list[_Span], list[str]]] = []
        for s in spans:
            kind = self._gap_kind(sentence[runs[-1][0][-1].end:s.start]) if runs else None
            if kind:
                runs[-1][0].append(s)
                runs[-1][1].append(kind)
            else:
                runs.append(([s], []))
        lists: list[list[_Span]] = []
        for members, gaps in runs:
            commas_join = bool(gaps) and gaps[-1] == "conj"
            lists.append([members[0]])
            for s, kind in zip(members[1:], gaps):
                if kind == "conj" or commas_join:
                    lists[-1].append(s)
                else:
                    lists.append([s])
        return lists

    @staticmethod
    def _merge_inside_lists(bounds: list[tuple[int, int]], lists: list[list[_Span]]) -> list[tuple[int, int]]:
        """Join clauses whose boundary falls inside a region list (a comma between its members)."""
        out: list[tuple[int, int]] = []
        for c0, c1 in bounds:
            if out and any(m[0].start < c0 < m[-1].end for m in lists):
                out[-1] = (out[-1][0], c1)
            else:
                out.append((c0, c1))
        return out

    @staticmethod
    def _group_regions(lists: list[list[_Span]], clauses: list[tuple[int, int]]) -> list[tuple[int, int, list[_Span]]]:
        """Region lists, split where a clause boundary falls inside one."""
        def clause_of(pos: int) -> int:
            return next((i for i, (c0, c1) in enumerate(clauses) if c0 <= pos < c1), -1)

        groups: list[tuple[int, int, list[_Span]]] = []
        for members in lists:
            current = [members[0]]
            for s in members[1:]:
                if clause_of(s.start) == clause_of(current[-1].start):
                    current.append(s)
                else:
                    groups.append((current[0].start, current[-1].end, current))
                    current = [s]
            groups.append((current[0].start, current[-1].end, current))
        return groups

    def _split_on_and(self, sentence: str, bounds: list[tuple[int, int]],
                      region_spans: list[_Span]) -> list[tuple[int, int]]:
        """Split a clause at "and" when both sides name a region and a finding of their own
        ("oozing of blood from the right wall and the roof is swollen")."""
        out: list[tuple[int, int]] = []
        for c0, c1 in bounds:
            start = c0
            for m in re.finditer(r"\band\b", sentence[c0:c1], re.I):
                cut = c0 + m.start()
                if any(r.start <= cut < r.end for r in region_spans):
                    continue
                left, right = (start, cut), (cut, c1)
                if all(self._finding_spans(sentence[x:y]) and any(x <= r.start and r.end <= y for r in region_spans)
                       for x, y in (left, right)):
                    out.append(left)
                    start = cut
            out.append((start, c1))
        return out

    def _layout(self, sentence: str) -> tuple[list[tuple[int, int]], list[tuple[int, int, list[_Span]]],
                                              list[tuple[str, ...]]]:
        """Clauses, region groups and the regions of each group of one sentence."""
        region_spans = self._region_spans(sentence)
        lists = self._region_lists(region_spans, sentence)
        bounds = self._merge_inside_lists(self._clauses(sentence), lists)
        clauses = self._split_on_and(sentence, bounds, region_spans)
        groups = self._group_regions(lists, clauses)
        group_regions = [tuple(dict.fromkeys(r for s in members for r in self._resolve_regions(s, sentence)))
                         for _, _, members in groups]
        return clauses, groups, group_regions

    def _read_sentence(self, raw: str, previous: tuple[str, ...] = (),
                       lesion: _Lesion | None = None) -> tuple[list[tuple[Mention, set[str]]], tuple[str, ...],
                                                               _Lesion | None]:
        """Read one sentence.

        Args:
            raw: the sentence.
            previous: the regions of the sentence before (for anaphora: "It is ulcerated").
            lesion: the mass described so far (for back-references: "contact bleeding on touch",
                and for "It extends onto the posterior wall").

        Returns:
            ``(mentions, regions, lesion)``: the statements, the regions this sentence names
            (or refers back to) and the mass after this sentence.
        """
        pats = self.patterns
        sentence = raw
        for p in pats.ignore:
            sentence = p.sub(lambda m: " " * len(m.group(0)), sentence)
        clauses, groups, group_regions = self._layout(sentence)
        named = tuple(dict.fromkeys(r for g in group_regions for r in g))
        refers_to_lesion = not groups and lesion is not None and _any(pats.lesion_reference, sentence)
        anaphoric = not groups and not refers_to_lesion and bool(previous) and _any(pats.anaphora, sentence)
        back = lesion.regions if refers_to_lesion and lesion else previous if anaphoric else ()

        out: list[tuple[Mention, set[str]]] = []
        positives: list[_Positive] = []
        inherited_negation = False
        for ci, (c0, c1) in enumerate(clauses):
            clause = sentence[c0:c1]
            spans = self._finding_spans(clause)
            uncertain = _any(pats.uncertainty, clause)
            is_global = _any(pats.global_cues, clause)
            # a clause that only continues a negated list ("no ulcer, bleeding or mass") stays negated
            continues_list = bool(spans) and not _FILLER.sub("", self._blank(clause, spans)).strip()
            negation_here = False
            for s in spans:
                status = self._status(clause, s, uncertain, inherited_negation and continues_list)
                if s.key != "normal" and status == "absent" and self._pre_negated(clause, s):
                    negation_here = True
                if s.key == "normal" and status != "present":
                    continue
                regions = self._regions_for(c0 + s.start, c0 + s.end, groups, group_regions, c0, c1)
                own = any(g0 >= c0 and g1 <= c1 for g0, g1, _ in groups)
                if not regions and back and status != "absent":
                    regions = back
                if not regions and (status == "absent" or s.key == "normal" or is_global):
                    regions = MAIN_REGIONS
                if s.key != "normal" and status != "absent":
                    positives.append(_Positive(len(out), c0 + s.start, ci, own and not is_global, is_global))
                out.append((Mention(s.key, status, tuple(regions), s.text.strip(), clause.strip(" ,;")), set(named)))
            inherited_negation = negation_here or (inherited_negation and continues_list)

        grown = self._extend(sentence, clauses, groups, group_regions, out, positives, lesion)
        lesion = self._update_lesion(out, positives, lesion, refers_to_lesion)
        if grown and lesion is not None:
            lesion = _Lesion(tuple(dict.fromkeys(lesion.regions + grown)), lesion.findings)
        return out, (named or back), lesion

    def _extend(self, sentence: str, clauses: list[tuple[int, int]], groups: list[tuple[int, int, list[_Span]]],
                group_regions: list[tuple[str, ...]], out: list[tuple[Mention, set[str]]],
                positives: list[_Positive], lesion: _Lesion | None) -> tuple[str, ...]:
        """A region named after "extending onto" joins the positive findings before the cue; with no
        finding before the cue ("It extends onto the posterior wall") it joins the mass described so far.

        Returns:
            the walls added to the mass described before this sentence.
        """
        grown: tuple[str, ...] = ()
        for cue in [m.start() for p in self.patterns.extension for m in p.finditer(sentence)]:
            later = tuple(r for i, (g0, _, _) in enumerate(groups) if g0 > cue for r in group_regions[i])
            if not later:
                continue
            cue_clause = next(i for i, (c0, c1) in enumerate(clauses) if c0 <= cue < max(c1, c0 + 1))
            before = [p for p in positives if p.start < cue]
            same = [p for p in before if p.clause == cue_clause]
            if not same and before:
                last_clause = max(p.clause for p in before)
                same = [p for p in before if p.clause == last_clause]
            for p in same:
                m, nm = out[p.index]
                extra = tuple(r for r in later if r not in m.regions)
                out[p.index] = (Mention(m.finding, m.status, m.regions + extra, m.text, m.clause), nm)
            if not before and lesion is not None and _any(self.patterns.anaphora + self.patterns.lesion_reference,
                                                          sentence):
                clause = sentence[slice(*clauses[cue_clause])].strip(" ,;")
                for finding, status in lesion.findings.items():
                    out.append((Mention(finding, status, later, "(the mass)", clause), set(later)))
                grown += later
        return grown

    @staticmethod
    def _update_lesion(out: list[tuple[Mention, set[str]]], positives: list[_Positive], lesion: _Lesion | None,
                       refers_to_lesion: bool) -> _Lesion | None:
        """Tie the findings of clauses without a region of their own to the mass of this sentence
        ("..., bleeding on contact") and return the mass as it stands after the sentence."""
        masses = [p for p in positives if out[p.index][0].finding == "neoplasm"]
        if masses:
            first = out[masses[0].index][0]
            regions = tuple(dict.fromkeys(r for p in masses for r in out[p.index][0].regions))
            lesion = _Lesion(regions, {"neoplasm": first.status})
            mass_clauses = {p.clause for p in masses}
            for p in positives:
                m, nm = out[p.index]
                if m.finding == "neoplasm" or p.is_global or not regions:
                    continue
                if not p.own_region:
                    out[p.index] = (Mention(m.finding, m.status, regions, m.text, m.clause), nm)
                elif p.clause not in mass_clauses:
                    continue
                lesion.findings.setdefault(m.finding, m.status)
        elif lesion is not None and refers_to_lesion:
            for p in positives:
                m = out[p.index][0]
                lesion.findings.setdefault(m.finding, m.status)
        return lesion

    @staticmethod
    def _blank(clause: str, spans: list[_Span]) -> str:
        chars = list(clause)
        for s in spans:
            chars[s.start:s.end] = " " * (s.end - s.start)
        return "".join(chars)

    def _pre_negated(self, clause: str, span: _Span) -> bool:
        before = clause[:span.start]
        for p in self.patterns.negation_pre:
            for m in p.finditer(before):
                between = clause[m.end():span.start]
                if not _any(self.patterns.negation_scope_end, between):
                    return True
        return False

    def _status(self, clause: str, span: _Span, uncertain: bool, inherited: bool) -> str:
        if uncertain:
            return "uncertain"
        if inherited or self._pre_negated(clause, span):
            return "absent"
        after = clause[span.end:]
        if any(p.search(after) for p in self.patterns.negation_post):
            return "absent"
        return "present"

    @staticmethod
    def _regions_for(start: int, end: int, groups: list[tuple[int, int, list[_Span]]],
                     group_regions: list[tuple[str, ...]], c0: int, c1: int) -> tuple[str, ...]:
        if not groups:
            return ()
        in_clause = [i for i, (g0, g1, _) in enumerate(groups) if g0 >= c0 and g1 <= c1]
        candidates = in_clause or list(range(len(groups)))

        def distance(i: int) -> tuple[int, int]:
            g0, g1, _ = groups[i]
            if not in_clause:  # prefer the group before this clause (the sentence's subject)
                return (0 if g1 <= c0 else 1, abs(start - g1) if g1 <= start else abs(g0 - end))
            return (0, abs(start - g1) if g1 <= start else abs(g0 - end))

        best = min(candidates, key=distance)
        return group_regions[best]

    # -- impression ---------------------------------------------------------------------
    def _impression(self, text: str | None, grid: dict[str, dict[str, str]]) -> dict[str, str]:
        if text:
            # benign growths named in the impression ("lymphoid hyperplasia") make it inflammatory,
            # not neoplastic: they are read as a benign cue and left out of the finding words
            folded = _fold(text)
            benign = _any(self.patterns.impression_benign, folded)
            for p in self.patterns.impression_benign:
                folded = p.sub(lambda m: " " * len(m.group(0)), folded)
            statuses = {f: "absent" for f in FINDINGS}
            neg_only = set()
            normal = False
            for sentence in self._sentences(folded):
                for m, _ in self._read_sentence(sentence)[0]:
                    if m.finding == "normal":
                        normal = True
                    elif _RANK[m.status] > _RANK[statuses[m.finding]]:
                        statuses[m.finding] = m.status
                    elif m.status == "absent":
                        neg_only.add(m.finding)
            cats = self.patterns.impression_categories
            neo_words = [p for p in cats.get("neoplasm", []) if p.search(folded)]
            if statuses["neoplasm"] == "present":
                return {"text": text, "category": "neoplasm", "source": "report"}
            if statuses["neoplasm"] == "uncertain" or (neo_words and "neoplasm" not in neg_only
                                                        and _any(self.patterns.uncertainty, folded)):
                return {"text": text, "category": "suspected_neoplasm", "source": "report"}
            if neo_words and "neoplasm" not in neg_only:
                return {"text": text, "category": "neoplasm", "source": "report"}
            if benign or any(statuses[f] != "absent" for f in FINDINGS if f != "neoplasm") or _any(
                    cats.get("inflammation", []), folded):
                return {"text": text, "category": "inflammation", "source": "report"}
            if normal or _any(cats.get("normal", []), folded):
                return {"text": text, "category": "normal", "source": "report"}
        return {"text": text or "", "category": category_from_grid(grid), "source": "findings"}


_DEFAULT: ReportParser | None = None


def parse_report(text: str, parser: ReportParser | None = None) -> ParsedReport:
    """Parse one report with ``parser`` (default: the packaged English patterns)."""
    global _DEFAULT
    if parser is None:
        if _DEFAULT is None:
            _DEFAULT = ReportParser()
        parser = _DEFAULT
    return parser.parse(text)


def parse_report_file(path: str | Path, parser: ReportParser | None = None) -> ParsedReport:
    """Parse a report file (UTF-8 text).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty or not UTF-8 text (naming the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"report file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: report is not UTF-8 text ({err})") from None
    if not text.strip():
        raise ValueError(f"{path}: report is empty")
    return parse_report(text, parser)


def score_findings(parsed: Sequence[ParsedReport], truths: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Precision / recall / F1 of parsed findings against ground-truth sidecars, per finding type.

    Each (report, wall) pair counts once per finding. ``"<finding>"`` rows score "present";
    ``"<finding>?"`` rows score "uncertain"; ``"negated"`` scores explicitly negated pairs,
    ``"smooth"`` the regions called smooth, and ``"impression"`` holds the category accuracy.

    Args:
        parsed: parser outputs.
        truths: sidecar dicts with ``findings`` (and optionally ``negated``, ``smooth``,
            ``impression.category``), in the same order.
    """
    if len(parsed) != len(truths):
        raise ValueError(f"{len(parsed)} parsed reports but {len(truths)} ground truths")
    counts: dict[str, list[int]] = {}

    def add(key: str, pred: bool, true: bool) -> None:
        c = counts.setdefault(key, [0, 0, 0, 0])  # tp, fp, fn, support
        c[0] += pred and true
        c[1] += pred and not true
        c[2] += true and not pred
        c[3] += true

    correct = 0
    for p, t in zip(parsed, truths):
        tgrid = t["findings"]
        for r in MAIN_REGIONS:
            for f in FINDINGS:
                ts, ps = tgrid[r][f], p.findings[r][f]
                add(f, ps == "present", ts == "present")
                add(f + "?", ps == "uncertain", ts == "uncertain")
        if "negated" in t:
            tneg = {tuple(x) for x in t["negated"]}
            pneg = {x for x in p.negated if x[0] in MAIN_REGIONS}
            for r in MAIN_REGIONS:
                for f in FINDINGS:
                    add("negated", (r, f) in pneg, (r, f) in tneg)
        if "smooth" in t:
            for r in MAIN_REGIONS:
                add("smooth", r in p.smooth, r in t["smooth"])
        if "impression" in t:
            correct += p.impression["category"] == t["impression"]["category"]
    out: dict[str, dict[str, float]] = {}
    for key, (tp, fp, fn, support) in counts.items():
        out[key] = {"precision": tp / (tp + fp) if tp + fp else float("nan"),
                    "recall": tp / (tp + fn) if tp + fn else float("nan"),
                    "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"),
                    "tp": tp, "fp": fp, "fn": fn, "support": support}
    out["impression"] = {"accuracy": correct / len(parsed) if parsed else float("nan"), "n": len(parsed)}
    return out
