"""Stage II instruction data: alignment pairs, multi-turn Q&A and held-out evaluation sets.

From a folder of reports and a folder of images (matched by file stem) this module builds,
in the LLaVA conversation format (``id``, ``image``, ``conversations`` of ``human`` /
``gpt`` turns, ``<image>`` in the first human turn) so other LLaVA-style tools can use it:

- ``alignment_brief.json``: image + brief region-by-region caption (projector pretraining);
- ``alignment_detailed.json``: image + detailed description (instruction tuning);
- ``qa.jsonl``: 3-5 Q&A rounds per pair from a teacher (:mod:`hicur_monai.llm.teacher`),
  appended one line per pair as it finishes, so an interrupted run resumes where it stopped;
  ``qa_failures.jsonl`` records every pair the teacher could not do, with the raw replies;
- ``instruct_train.json``: the training conversations (Q&A + detailed descriptions);
- ``eval_conversation.jsonl`` and ``eval_detailed.jsonl``: questions of the two kinds the
  original evaluation used, over reports of held-out patients never used for training;
- ``pairs.json``: every pair with its patient, modality and split (``train`` / ``eval``);
- ``summary.json``: counts, rounds, failures by reason, skipped files and why.

MRI studies join as pairs of their own (:mod:`hicur_monai.data.mri_instructions`): one
representative slice per sequence with the study's radiology report. Their records carry
``"modality": "mri"`` (the loader's intensity rule) and ``"image_folder": "."`` (their
``image`` is relative to the instruction folder, where the slices are written; endoscopy
``image`` paths stay relative to the image folder). The teacher's Q&A covers endoscopy pairs
(its prompts are about nasopharyngoscopy); MRI pairs give alignment captions, detailed
descriptions and held-out detailed questions. The split is by patient across both modalities.

The instruction pools (``prompts/brief.txt``, ``prompts/detailed.txt``) are our own words.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from hicur_monai.data.findings_text import PROMPT_DIR, brief_caption, detailed_description
from hicur_monai.data.reports import ParsedReport, ReportParser
from hicur_monai.utils.io import atomic_write_json

__all__ = [
    "IMAGE_TOKEN",
    "IMAGE_EXTENSIONS",
    "ReportPair",
    "load_prompt_pool",
    "collect_pairs",
    "split_holdout",
    "llava_record",
    "pair_text",
    "alignment_records",
    "validate_llava",
    "validate_llava_file",
    "JsonlLog",
    "build_instruction_data",
]

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")


@dataclass
class ReportPair:
    """One image with its report.

    Attributes:
        id: the shared file stem.
        image: image path relative to the image folder (what the LLaVA ``image`` field holds).
        report_path: the report file.
        text: the report text.
        patient: patient id (from a ``<stem>.json`` sidecar's ``patient`` field, else the stem).
        parsed: the parsed findings (filled by :func:`collect_pairs`; ``None`` for MRI pairs).
        modality: ``"endoscopy"`` or ``"mri"`` (the image loader's intensity rule).
        image_folder: folder ``image`` is relative to, itself relative to the instruction
            folder (``"."`` for exported MRI slices); ``None``: the image folder of the build.
        sequence: MRI sequence (``T1``, ``T2``, ``T1C``), else ``None``.
    """

    id: str
    image: str
    report_path: Path
    text: str
    patient: str
    parsed: ParsedReport | None = None
    modality: str = "endoscopy"
    image_folder: str | None = None
    sequence: str | None = None

    def image_fields(self) -> dict[str, str]:
        """Fields a record of this pair carries besides ``image`` (none for endoscopy)."""
        if self.modality == "endoscopy" and self.image_folder is None:
            return {}
        out = {"modality": self.modality}
        if self.image_folder is not None:
            out["image_folder"] = self.image_folder
        return out


def load_prompt_pool(kind: str, path: str | Path | None = None, minimum: int = 20) -> list[str]:
    """The instruction pool ``kind`` (``"brief"`` or ``"detailed"``): one instruction per line.

    Raises:
        ValueError: naming the file when it has fewer than ``minimum`` distinct instructions.
    """
    p = Path(path) if path else PROMPT_DIR / f"{kind}.txt"
    if not p.is_file():
        raise FileNotFoundError(f"prompt pool not found: {p}")
    lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
    pool = list(dict.fromkeys(ln for ln in lines if ln and not ln.startswith("#")))
    if len(pool) < minimum:
        raise ValueError(f"{p}: {len(pool)} distinct instructions, at least {minimum} are needed")
    bad = [ln for ln in pool if IMAGE_TOKEN in ln]
    if bad:
        raise ValueError(f"{p}: instructions must not contain {IMAGE_TOKEN} (it is added by the builder): {bad[0]!r}")
    return pool


def collect_pairs(reports_dir: str | Path, images_dir: str | Path, parser: ReportParser | None = None,
                  ) -> tuple[list[ReportPair], list[dict[str, str]]]:
    """Match ``reports_dir/*.txt`` with images of the same stem under ``images_dir``.

    Returns:
        ``(pairs, skipped)``: parsed pairs sorted by id, and one ``{"file", "reason"}`` per
        report or image that could not be used (so nothing disappears unexplained).
    """
    reports_dir, images_dir = Path(reports_dir), Path(images_dir)
    for d, what in ((reports_dir, "reports"), (images_dir, "images")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {d}")
    parser = parser or ReportParser()
    images: dict[str, Path] = {}
    skipped: list[dict[str, str]] = []
    for p in sorted(images_dir.rglob("*")):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            if p.stem in images:
                skipped.append({"file": str(p), "reason": f"duplicate image stem (kept {images[p.stem]})"})
                continue
            images[p.stem] = p
    pairs: list[ReportPair] = []
    used: set[str] = set()
    for rp in sorted(reports_dir.glob("*.txt")):
        try:
            text = rp.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            skipped.append({"file": str(rp), "reason": "report is not UTF-8 text"})
            continue
        if not text.strip():
            skipped.append({"file": str(rp), "reason": "report is empty"})
            continue
        img = images.get(rp.stem)
        if img is None:
            skipped.append({"file": str(rp), "reason": f"no image named {rp.stem}.* under {images_dir}"})
            continue
        patient = rp.stem
        sidecar = rp.with_suffix(".json")
        if sidecar.is_file():
            try:
                patient = str(json.loads(sidecar.read_text(encoding="utf-8")).get("patient") or rp.stem)
            except (ValueError, AttributeError):
                skipped.append({"file": str(sidecar), "reason": "sidecar is not a JSON object; patient id = stem"})
        used.add(rp.stem)
        pairs.append(ReportPair(rp.stem, img.relative_to(images_dir).as_posix(), rp, text, patient, parser.parse(text)))
    skipped += [{"file": str(p), "reason": "no report for this image"} for s, p in images.items() if s not in used]
    return pairs, skipped


def split_holdout(pairs: Sequence[ReportPair], eval_fraction: float = 0.1, n_eval: int | None = None,
                  seed: int = 0) -> tuple[list[ReportPair], list[ReportPair]]:
    """Split by patient into training and held-out evaluation pairs (deterministic by ``seed``).

    Args:
        eval_fraction: share of patients held out (ignored when ``n_eval`` is given).
        n_eval: number of patients held out.
    """
    patients = sorted({p.patient for p in pairs})
    if n_eval is None:
        if not 0.0 <= eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
        n_eval = int(round(eval_fraction * len(patients)))
    if n_eval >= len(patients) and patients:
        raise ValueError(f"holding out {n_eval} of {len(patients)} patients leaves nothing to train on")
    order = np.random.default_rng(seed).permutation(len(patients))
    held = {patients[i] for i in order[:n_eval]}
    return [p for p in pairs if p.patient not in held], [p for p in pairs if p.patient in held]


def llava_record(record_id: str, image: str, turns: Iterable[tuple[str, str]],
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A LLaVA conversation record; ``<image>`` goes before the first question; ``extra`` fields are added."""
    conversations = []
    for i, (question, answer) in enumerate(turns):
        value = f"{IMAGE_TOKEN}\n{question}" if i == 0 else question
        conversations += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
    return {"id": record_id, "image": image, "conversations": conversations, **(extra or {})}


def _seed_for(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:4], "little")


def pair_text(pair: ReportPair, kind: str) -> str:
    """The answer a pair teaches for ``kind``: the brief caption or the detailed description.

    Endoscopy: written from the parsed findings; MRI: the sequence + impression line, or the report.
    """
    if pair.modality == "mri":
        from hicur_monai.data.mri_instructions import mri_captions

        impression, detailed = mri_captions(pair.text)
        return f"Axial {pair.sequence or ''} MRI: {impression}".replace("  ", " ") if kind == "brief" else detailed
    if pair.parsed is None:
        raise ValueError(f"{pair.report_path}: pair has no parsed findings")
    return brief_caption(pair.parsed) if kind == "brief" else detailed_description(pair.parsed)


def _pool_name(pair: ReportPair, kind: str) -> str:
    return f"mri_{kind}" if pair.modality == "mri" else kind


def alignment_records(pairs: Sequence[ReportPair], kind: str, seed: int = 0,
                      pool: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Image + brief caption (``kind="brief"``) or image + detailed description (``"detailed"``).

    ``pool`` replaces the endoscopy instruction pool; MRI pairs use ``prompts/mri_<kind>.txt``.
    """
    if kind not in ("brief", "detailed"):
        raise ValueError(f"kind must be 'brief' or 'detailed', got {kind!r}")
    pools = {kind: list(pool or load_prompt_pool(kind))}
    out = []
    for p in pairs:
        name = _pool_name(p, kind)
        if name not in pools:
            pools[name] = load_prompt_pool(name)
        question = pools[name][_seed_for(seed, kind, p.id) % len(pools[name])]
        out.append(llava_record(f"{p.id}_{kind}", p.image, [(question, pair_text(p, kind))], p.image_fields()))
    return out


def validate_llava(records: Any, image_root: str | Path | None = None,
                   records_dir: str | Path | None = None) -> list[str]:
    """Check LLaVA conversation records; return one message per problem (empty: valid).

    Checks: a list of objects with a unique non-empty ``id``, an ``image`` string (existing
    under ``image_root`` when given, or under the record's own ``image_folder`` resolved
    against ``records_dir``), ``conversations`` alternating ``human``/``gpt`` from a
    human turn, non-empty string values, and exactly one ``<image>`` token, in the first
    human turn.
    """
    if not isinstance(records, list):
        return [f"expected a list of records, got {type(records).__name__}"]
    errors: list[str] = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        where = f"record {i}"
        if not isinstance(rec, dict):
            errors.append(f"{where}: expected an object, got {type(rec).__name__}")
            continue
        rid = rec.get("id")
        if not isinstance(rid, str) or not rid:
            errors.append(f"{where}: 'id' must be a non-empty string")
        else:
            where = f"record {i} (id {rid!r})"
            if rid in seen:
                errors.append(f"{where}: duplicate id")
            seen.add(rid)
        image = rec.get("image")
        if not isinstance(image, str) or not image:
            errors.append(f"{where}: 'image' must be a non-empty string")
        elif image_root is not None:
            root = Path(image_root)
            if rec.get("image_folder") is not None:
                root = Path(records_dir or ".") / str(rec["image_folder"])
            if not (root / image).is_file():
                errors.append(f"{where}: image {image!r} not found under {root}")
        conv = rec.get("conversations")
        if not isinstance(conv, list) or len(conv) < 2:
            errors.append(f"{where}: 'conversations' must be a list of at least 2 turns")
            continue
        if len(conv) % 2:
            errors.append(f"{where}: odd number of turns ({len(conv)}); every human turn needs a gpt answer")
        tokens = 0
        for j, turn in enumerate(conv):
            expected = "human" if j % 2 == 0 else "gpt"
            if not isinstance(turn, dict):
                errors.append(f"{where}: turn {j} is not an object")
                continue
            if turn.get("from") != expected:
                errors.append(f"{where}: turn {j} is from {turn.get('from')!r}, expected {expected!r}")
            value = turn.get("value")
            if not isinstance(value, str) or not value.strip():
                errors.append(f"{where}: turn {j} has an empty or non-string 'value'")
                continue
            n = value.count(IMAGE_TOKEN)
            tokens += n
            if n and j != 0:
                errors.append(f"{where}: turn {j} contains {IMAGE_TOKEN}; only the first human turn may")
        if tokens == 0:
            errors.append(f"{where}: no {IMAGE_TOKEN} token in the first human turn")
        elif tokens > 1:
            errors.append(f"{where}: {tokens} {IMAGE_TOKEN} tokens, expected exactly one")
    return errors


def validate_llava_file(path: str | Path, image_root: str | Path | None = None) -> list[str]:
    """:func:`validate_llava` on a ``.json`` (list) or ``.jsonl`` (one record per line) file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return [f"{path}: cannot read ({err})"]
    if path.suffix == ".jsonl":
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as err:
                    return [f"{path}:{n}: not JSON ({err.msg})"]
    else:
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            return [f"{path}: not JSON ({err.msg} at line {err.lineno})"]
    return [f"{path}: {e}" for e in validate_llava(records, image_root, path.parent)]


class JsonlLog:
    """Append-only JSON-lines file that survives interruption.

    Each record is written as one line and flushed to disk before :meth:`append` returns.
    On opening, a trailing partial line (a write cut off by a crash) is cut away with a
    warning; every complete line is kept.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            data = self.path.read_bytes()
            good = data.rfind(b"\n") + 1
            if good < len(data):
                logger.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run",
                               self.path, len(data) - good)
                with open(self.path, "r+b") as fh:
                    fh.truncate(good)
            for n, line in enumerate(data[:good].decode("utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        self.records.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{self.path}:{n}: corrupt line ({err.msg}); fix or remove it") from None

    def append(self, record: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.records.append(record)


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    from hicur_monai.utils.io import atomic_open

    n = 0
    with atomic_open(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def _n_rounds(pair_id: str, seed: int, lo: int = 3, hi: int = 5) -> int:
    return lo + _seed_for(seed, "rounds", pair_id) % (hi - lo + 1)


def _run_teacher(teacher: Any, todo: Sequence[ReportPair], seed: int, source_kind: str,
                 workers: int) -> Generator[tuple[ReportPair, Any], None, None]:
    """Yield ``(pair, TeacherResult)`` as each finishes (in order when ``workers == 1``)."""
    if workers == 1:
        for p in todo:
            yield p, teacher.generate(p.text, _n_rounds(p.id, seed), source_kind)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(teacher.generate, p.text, _n_rounds(p.id, seed), source_kind): p for p in todo}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        finally:  # on interruption, do not start the requests still queued
            for fut in futures:
                fut.cancel()


def _ask_teacher(teacher: Any, pairs: Sequence[ReportPair], split_of: dict[str, str], qa_log: JsonlLog,
                 fail_log: JsonlLog, seed: int, source_kind: str, workers: int, progress: bool,
                 max_consecutive_failures: int | None) -> str | None:
    """Q&A for the endoscopy pairs not yet in ``qa_log``; failures go to ``fail_log``; returns why it stopped early."""
    done = {r["id"] for r in qa_log.records}
    todo = [p for p in pairs if p.id not in done and p.modality == "endoscopy"]
    bar = tqdm(total=len(todo), desc=f"teacher {getattr(teacher, 'name', 'teacher')}", unit="pair",
               disable=not progress)
    failed_now = streak = 0
    aborted = None
    results = _run_teacher(teacher, todo, seed, source_kind, workers)
    for p, result in results:
        bar.update(1)
        streak = 0 if result.ok else streak + 1
        if result.ok:
            qa_log.append({"id": p.id, "image": p.image, "patient": p.patient, "split": split_of[p.id],
                           "n_rounds": len(result.rounds), "rounds": result.rounds, "teacher": result.model})
        else:
            failed_now += 1
            fail_log.append({"id": p.id, "report": str(p.report_path), "reason": result.reason, "detail": result.detail,
                             "attempts": result.attempts, "teacher": result.model,
                             "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        bar.set_postfix(failed=failed_now, refresh=False)
        if max_consecutive_failures and streak >= max_consecutive_failures:
            aborted = (f"stopped after {streak} failures in a row (last: {result.reason}: {result.detail[:200]}); "
                       "fix the teacher and rerun to resume")
            logger.error(aborted)
            results.close()
            break
    bar.close()
    return aborted


def _eval_questions(held: Sequence[ReportPair], qa_done: dict[str, dict[str, Any]],
                    seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Held-out questions: conversation rounds (from the teacher) and one detailed-description question per pair."""
    pools: dict[str, list[str]] = {}
    eval_conv, eval_det = [], []
    for p in held:
        r = qa_done.get(p.id)
        if r is not None:
            for k, t in enumerate(r["rounds"]):
                eval_conv.append({"question_id": f"{p.id}_conv{k}", "pair_id": p.id, "image": p.image,
                                  "category": "conversation", "text": t["question"], "reference": t["answer"],
                                  "history": r["rounds"][:k], **p.image_fields()})
        name = _pool_name(p, "detailed")
        pool = pools.setdefault(name, load_prompt_pool(name))
        eval_det.append({"question_id": f"{p.id}_detail", "pair_id": p.id, "image": p.image, "category": "detailed",
                         "text": pool[_seed_for(seed, "eval", p.id) % len(pool)],
                         "reference": pair_text(p, "detailed"), **p.image_fields()})
    return eval_conv, eval_det


def build_instruction_data(pairs: Sequence[ReportPair], teacher: Any, out_dir: str | Path, eval_fraction: float = 0.1,
                           n_eval: int | None = None, seed: int = 0, image_folder: str | Path | None = None,
                           skipped: Sequence[dict[str, str]] = (), progress: bool = True,
                           source_kind: str = "report", workers: int = 1,
                           max_consecutive_failures: int | None = 50) -> dict[str, Any]:
    """Write every Stage II data file for ``pairs`` into ``out_dir`` and return the summary.

    Resumable: pairs already in ``out_dir/qa.jsonl`` are not sent to the teacher again;
    pairs that failed before are retried. The held-out split depends only on the patients
    and ``seed``, so a resumed run holds out the same patients.

    Args:
        pairs: from :func:`collect_pairs`.
        teacher: a :class:`hicur_monai.llm.teacher.ChatTeacher` (anything with
            ``generate(text, n_rounds, source_kind)`` and ``name``).
        out_dir: output folder.
        eval_fraction / n_eval: held-out patients (see :func:`split_holdout`).
        seed: seed for the split, instruction choice and round counts.
        image_folder: recorded in the summary (the folder the ``image`` paths are relative to).
        skipped: files :func:`collect_pairs` could not use (reported in the summary).
        progress: show a progress bar.
        source_kind: ``"report"`` or ``"caption"`` (told to the teacher).
        workers: concurrent teacher requests (threads; useful for HTTP teachers, whose
            rate limit and cache are thread-safe). Results are written by one thread.
        max_consecutive_failures: stop asking the teacher after this many failures in a row
            (a wrong URL or a dead server), keeping everything done; ``summary["aborted"]``
            says why. ``None``: never stop.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not pairs:
        raise ValueError("no image-report pairs to build from (check --reports / --images and the skipped list)")
    train, held = split_holdout(pairs, eval_fraction, n_eval, seed)
    split_of = {p.id: "train" for p in train} | {p.id: "eval" for p in held}

    brief = alignment_records(train, "brief", seed)
    detailed = alignment_records(train, "detailed", seed)
    atomic_write_json(out / "alignment_brief.json", brief)
    atomic_write_json(out / "alignment_detailed.json", detailed)

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    qa_log, fail_log = JsonlLog(out / "qa.jsonl"), JsonlLog(out / "qa_failures.jsonl")
    resumed = len({r["id"] for r in qa_log.records} & {p.id for p in pairs})
    aborted = _ask_teacher(teacher, pairs, split_of, qa_log, fail_log, seed, source_kind, workers, progress,
                           max_consecutive_failures)

    by_id = {p.id: p for p in pairs}
    qa_done = {r["id"]: r for r in qa_log.records if r["id"] in by_id}
    failures = {r["id"]: r for r in fail_log.records if r["id"] in by_id and r["id"] not in qa_done}

    # training conversations: Q&A of training pairs + detailed descriptions
    qa_train = [llava_record(f"{p.id}_qa", p.image, [(t["question"], t["answer"]) for t in qa_done[p.id]["rounds"]],
                             p.image_fields())
                for p in train if p.id in qa_done]  # in pair order, whatever order the teacher finished in
    instruct = qa_train + detailed
    errors = validate_llava(instruct) + validate_llava(brief)
    if errors:
        raise ValueError("generated records fail LLaVA validation: " + "; ".join(errors[:5]))
    atomic_write_json(out / "instruct_train.json", instruct)

    eval_conv, eval_det = _eval_questions(held, qa_done, seed)
    _write_jsonl(out / "eval_conversation.jsonl", eval_conv)
    _write_jsonl(out / "eval_detailed.jsonl", eval_det)
    atomic_write_json(out / "pairs.json", [
        {"id": p.id, "patient": p.patient, "modality": p.modality, "split": split_of[p.id], "image": p.image,
         "report": p.report_path.name, **({"sequence": p.sequence} if p.sequence else {})} for p in pairs])

    counts = {"alignment_brief": len(brief), "alignment_detailed": len(detailed), "instruct_train": len(instruct),
              "eval_conversation": len(eval_conv), "eval_detailed": len(eval_det), "qa_resumed": resumed}
    summary = _summary(teacher, image_folder, pairs, train, held, qa_done, failures, counts, aborted, skipped)
    atomic_write_json(out / "summary.json", summary)
    return summary


def _summary(teacher: Any, image_folder: Any, pairs: Sequence[ReportPair], train: Sequence[ReportPair],
             held: Sequence[ReportPair], qa_done: dict[str, Any], failures: dict[str, Any], counts: dict[str, int],
             aborted: str | None, skipped: Sequence[dict[str, str]]) -> dict[str, Any]:
    """The ``summary.json`` of a build."""
    rounds = Counter(len(r["rounds"]) for r in qa_done.values())
    summary = {
        "teacher": getattr(teacher, "name", "teacher"),
        "image_folder": str(image_folder) if image_folder else None,
        "pairs": len(pairs),
        "train_pairs": len(train),
        "eval_pairs": len(held),
        "train_patients": len({p.patient for p in train}),
        "eval_patients": len({p.patient for p in held}),
        "pairs_by_modality": dict(Counter(p.modality for p in pairs)),
        "alignment_brief": counts["alignment_brief"],
        "alignment_detailed": counts["alignment_detailed"],
        "qa_pairs": len(qa_done),
        "qa_resumed": counts["qa_resumed"],
        "qa_rounds": sum(k * v for k, v in rounds.items()),
        "qa_rounds_histogram": {str(k): v for k, v in sorted(rounds.items())},
        "instruct_train": counts["instruct_train"],
        "eval_conversation": counts["eval_conversation"],
        "eval_detailed": counts["eval_detailed"],
        "failures": len(failures),
        "failures_by_reason": dict(Counter(r["reason"] for r in failures.values())),
        "aborted": aborted,
        "skipped": list(skipped),
        "skipped_by_reason": dict(Counter(s["reason"].split(" (")[0].split(" named ")[0] for s in skipped)),
    }
    return summary
