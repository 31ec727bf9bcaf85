"""Text written from parsed findings: brief captions, detailed descriptions, diagnostic reports.

Everything here is grounded in a :class:`~hicur_monai.data.reports.ParsedReport`: a
region is described only with what the report states about it, uncertain findings stay
uncertain, and the diagnostic report ends with a safety line. The wording comes from
``hicur_monai/data/prompts/phrasing.yaml``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from hicur_monai.data.nasopharynx import FINDINGS, MAIN_REGIONS, REGIONS
from hicur_monai.data.reports import ParsedReport

__all__ = ["PROMPT_DIR", "phrasing", "brief_caption", "detailed_description", "diagnostic_report",
           "region_summary", "finding_regions", "impression_text", "short_neg"]

#: packaged prompt pools and phrasing files
PROMPT_DIR = Path(__file__).resolve().parent / "prompts"


@functools.lru_cache(maxsize=4)
def phrasing(path: str | None = None) -> dict[str, Any]:
    """The phrasing document (``prompts/phrasing.yaml`` unless ``path`` is given)."""
    p = Path(path) if path else PROMPT_DIR / "phrasing.yaml"
    doc = yaml.safe_load(p.read_text(encoding="utf-8"))
    if not isinstance(doc, dict) or "report" not in doc:
        raise ValueError(f"{p}: not a phrasing file (expected a mapping with a 'report' section)")
    return doc


def _join(items: list[str], conj: str = "and") -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def region_summary(parsed: ParsedReport, region: str) -> dict[str, list[str]]:
    """What the report says about one region: ``present``, ``uncertain``, ``negated`` finding keys and ``smooth``."""
    grid = parsed.findings.get(region, {})
    return {
        "present": [f for f in FINDINGS if grid.get(f) == "present"],
        "uncertain": [f for f in FINDINGS if grid.get(f) == "uncertain"],
        "negated": [f for f in FINDINGS if (region, f) in set(parsed.negated)],
        "smooth": [region] if region in parsed.smooth else [],
    }


def finding_regions(parsed: ParsedReport, finding: str, status: str) -> list[str]:
    """Regions (walls first, then sub-sites) where ``finding`` has ``status``."""
    return [r for r in REGIONS if parsed.findings.get(r, {}).get(finding) == status]


def _described_regions(parsed: ParsedReport) -> list[str]:
    extra = [r for r in parsed.findings if r not in MAIN_REGIONS and any(
        s != "absent" for s in parsed.findings[r].values())]
    return list(MAIN_REGIONS) + extra


def brief_caption(parsed: ParsedReport) -> str:
    """One line, region by region: "Nasopharyngoscopy: left wall congested, swollen; roof smooth."."""
    ph = phrasing()
    labels, short = ph["region_labels"], ph["finding_short"]
    parts = []
    for r in _described_regions(parsed):
        s = region_summary(parsed, r)
        words = [short[f] for f in s["present"]] + [f"{short[f]} {ph['uncertain_suffix']}" for f in s["uncertain"]]
        if words:
            parts.append(ph["caption"]["region_present"].format(region=labels[r], findings=", ".join(words)))
        elif s["smooth"]:
            parts.append(ph["caption"]["region_smooth"].format(region=labels[r]))
    if not parts:
        return ph["caption"]["nothing"]
    return f"{ph['caption']['prefix']} " + "; ".join(parts) + "."


def detailed_description(parsed: ParsedReport) -> str:
    """A paragraph covering each region the report describes, negations and the impression."""
    ph = phrasing()
    d, labels, flabels = ph["detailed"], ph["region_labels"], ph["finding_labels"]
    out = [d["intro"]]
    global_neg = [f for f in FINDINGS if all((r, f) in set(parsed.negated) for r in MAIN_REGIONS)]
    anything = False
    for r in _described_regions(parsed):
        s = region_summary(parsed, r)
        if s["present"]:
            out.append(d["region_present"].format(region=labels[r], findings=_join([flabels[f] for f in s["present"]])))
        if s["uncertain"]:
            out.append(d["region_uncertain"].format(region=labels[r],
                                                    findings=_join([flabels[f] for f in s["uncertain"]])))
        local_neg = [f for f in s["negated"] if f not in global_neg]
        if local_neg:
            out.append(d["region_negated"].format(region=labels[r],
                                                  findings=_join([short_neg(f) for f in local_neg], "or")))
        if s["smooth"] and not s["present"] and not s["uncertain"]:
            out.append(d["region_smooth"].format(region=labels[r]))
        anything = anything or bool(s["present"] or s["uncertain"])
    unloc = [f for f in FINDINGS if parsed.unlocalised.get(f) in ("present", "uncertain")]
    if unloc:
        out.append(_cap(d["unlocalised"].format(findings=_join([flabels[f] for f in unloc]))))
        anything = True
    if global_neg:
        out.append(d["global_negated"].format(findings=_join([short_neg(f) for f in global_neg], "or")))
    if not anything:
        out.append(d["nothing"])
    out.append(d["impression"].format(impression=impression_text(parsed)))
    return " ".join(out)


def short_neg(finding: str) -> str:
    """The noun used after "no" for a finding ("no mass lesion", "no bleeding")."""
    return "mass lesion" if finding == "neoplasm" else phrasing()["finding_labels"][finding]


def impression_text(parsed: ParsedReport) -> str:
    """The report's own impression line, or a cautious sentence for its category when it has none."""
    text = (parsed.impression.get("text") or "").strip()
    if parsed.impression.get("source") == "report" and text:
        return text
    return phrasing()["report"]["impression_from_category"][parsed.impression["category"]]


def diagnostic_report(parsed: ParsedReport) -> str:
    """A formatted report: findings per wall, impression, and a safety line."""
    ph = phrasing()
    rp, labels, flabels = ph["report"], ph["region_labels"], ph["finding_labels"]
    lines = [rp["title"], rp["findings_heading"]]
    for r in _described_regions(parsed):
        s = region_summary(parsed, r)
        items = [flabels[f] for f in s["present"]] + [f"{flabels[f]} {ph['uncertain_suffix']}" for f in s["uncertain"]]
        negs = [rp["negated_suffix"].format(findings=short_neg(f)) for f in s["negated"]]
        if items:
            lines.append(rp["line_present"].format(region=_cap(labels[r]), findings="; ".join(items + negs)))
        elif s["smooth"]:
            lines.append(rp["line_smooth"].format(region=_cap(labels[r])))
        elif negs:
            lines.append(rp["line_present"].format(region=_cap(labels[r]), findings="; ".join(negs)))
        else:
            lines.append(rp["line_not_described"].format(region=_cap(labels[r])))
    lines.append(f"{rp['impression_heading']} {impression_text(parsed)}")
    lines.append(rp["safety"])
    return "\n".join(lines)
