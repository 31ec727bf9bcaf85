"""SQLite store of a blinded physician rating study.

One database file holds the study (items, answers), the raters (scrypt password hashes),
each rater's private label -> system mapping, the latest scores and an append-only audit
of every submission. The database runs in WAL mode so that many raters read and write at
once. Every submission is all-or-nothing (all four criteria or none): submissions that
arrive while one is being written are committed together, each in its own savepoint, in
one ``BEGIN IMMEDIATE`` transaction with ``synchronous=FULL`` (group commit: one fsync for
the group; each call returns once its scores are on disk). With a commit costing one fsync
(about 35 ms on the test machine's disk) and SQLite's busy handler sleeping in growing
steps, one transaction per submission kept 20 concurrent raters at a p95 of 600-800 ms. The file
(and its ``-wal`` / ``-shm`` companions) is created with mode 0600: it holds the password hashes.

Passwords: scrypt with the OWASP minimum cost (N=2^17, r=8, p=1); the parameters are part
of each stored hash, so hashes made with other parameters still verify, and a successful
login with weaker parameters re-hashes the password at the current cost.

A *unit* is one system's answer to one item as one rater sees it: ``(item_id, label)``.
Labels ("A", "B", ...) are drawn per item and per rater with :mod:`secrets`; the mapping to
systems is stored here and is never part of what :meth:`RatingStore.view` returns.
A unit is *scored* when all criteria have a stored score; a stored 0 is a real score.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import hmac
import io
import json
import os
import re
import secrets
import sqlite3
import string
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from hicur_monai.evaluation.judge import CRITERIA
from hicur_monai.evaluation.records import Answer, Item
from hicur_monai.utils.io import atomic_write_text

__all__ = ["RatingError", "UnknownUnitError", "Unit", "RatingStore", "hash_password", "verify_password",
           "needs_rehash", "SCRYPT_PARAMS"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, position INTEGER NOT NULL, kind TEXT NOT NULL, question TEXT NOT NULL,
    context TEXT NOT NULL, reference TEXT NOT NULL, image TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS answers (
    item_id TEXT NOT NULL REFERENCES items(item_id), system TEXT NOT NULL, answer TEXT NOT NULL,
    PRIMARY KEY (item_id, system));
CREATE TABLE IF NOT EXISTS raters (
    rater TEXT PRIMARY KEY, password TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS labels (
    rater TEXT NOT NULL REFERENCES raters(rater), item_id TEXT NOT NULL, label TEXT NOT NULL,
    system TEXT NOT NULL, PRIMARY KEY (rater, item_id, label), UNIQUE (rater, item_id, system));
CREATE TABLE IF NOT EXISTS scores (
    rater TEXT NOT NULL, item_id TEXT NOT NULL, system TEXT NOT NULL, criterion TEXT NOT NULL,
    score REAL NOT NULL CHECK (score >= 0 AND score <= 10), updated_at TEXT NOT NULL,
    PRIMARY KEY (rater, item_id, system, criterion));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, rater TEXT NOT NULL, item_id TEXT NOT NULL,
    system TEXT NOT NULL, criterion TEXT NOT NULL, score REAL NOT NULL, previous REAL, at TEXT NOT NULL);
"""

_RATER_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
#: scrypt cost of new hashes: the OWASP Password Storage Cheat Sheet minimum (N=2^17, r=8, p=1; 128 MiB)
SCRYPT_PARAMS: dict[str, int] = {"n": 2**17, "r": 8, "p": 1}
_MAX_N = 2**20  # stored hashes asking for more memory than this (1 GiB at r=8) are refused
_KEY_MAX = 256  # longest item id / label accepted from a client
_WRITE_LOCKS: dict[Path, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


class RatingError(ValueError):
    """A rating request that cannot be honoured (unknown unit, bad score, unknown rater)."""


class UnknownUnitError(RatingError):
    """The rater has no answer with this item id and label."""


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, dklen: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=dklen, maxmem=2 * 128 * n * r + 2**20)


def hash_password(password: str, params: Mapping[str, int] | None = None) -> str:
    """``scrypt$n$r$p$salt$hash`` (hex) of ``password`` with a fresh random salt.

    Args:
        password: the password.
        params: scrypt ``n``, ``r``, ``p`` (default :data:`SCRYPT_PARAMS`).
    """
    if not password:
        raise ValueError("the password is empty")
    prm = {**SCRYPT_PARAMS, **(params or {})}
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, prm["n"], prm["r"], prm["p"], 32)
    return f"scrypt${prm['n']}${prm['r']}${prm['p']}${salt.hex()}${digest.hex()}"


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, str] | None:
    try:
        algo, n_text, r_text, p_text, salt, digest = stored.split("$")
        n, r, p = int(n_text), int(r_text), int(p_text)
    except (ValueError, TypeError, AttributeError):
        return None
    if algo != "scrypt" or not (1 < n <= _MAX_N and 0 < r <= 32 and 0 < p <= 16) or not digest:
        return None
    try:
        return n, r, p, bytes.fromhex(salt), digest
    except ValueError:
        return None


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string (its own parameters)."""
    parsed = _parse_hash(stored)
    if parsed is None:
        return False
    n, r, p, salt, digest = parsed
    try:
        got = _scrypt(password, salt, n, r, p, len(digest) // 2)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got.hex(), digest)


def needs_rehash(stored: str) -> bool:
    """True when ``stored`` was made with a lower cost than :data:`SCRYPT_PARAMS`."""
    parsed = _parse_hash(stored)
    return parsed is None or parsed[0] < SCRYPT_PARAMS["n"] or parsed[1] < SCRYPT_PARAMS["r"]


_DUMMY: list[str] = []


def _dummy_hash() -> str:
    """A hash at the current cost, for unknown raters (same work whether or not the rater exists)."""
    if not _DUMMY:
        _DUMMY.append(hash_password(secrets.token_urlsafe(12)))
    return _DUMMY[0]


def _check_key(item_id: Any, label: Any) -> None:
    """Reject unit keys that are not short strings (they come from clients)."""
    for name, value in (("item_id", item_id), ("label", label)):
        if not isinstance(value, str) or not value or len(value) > _KEY_MAX:
            raise RatingError(f"{name} must be a non-empty string of at most {_KEY_MAX} characters")


def _private_file(path: Path) -> None:
    """Create ``path`` with mode 0600 when absent; tighten it (and -wal / -shm) when wider."""
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if f.stat().st_mode & 0o077:
                os.chmod(f, 0o600)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _labels(n: int) -> list[str]:
    letters = string.ascii_uppercase
    out = list(letters[:n])
    i = 0
    while len(out) < n:  # AA, AB, ... for more than 26 systems
        out.append(letters[i // 26] + letters[i % 26])
        i += 1
    return out


@dataclass
class _Submission:
    """One rater's scores of one unit, waiting for the group commit."""

    rater: str
    item_id: str
    label: str
    scores: dict[str, float]
    at: str = ""
    error: BaseException | None = None
    done: bool = False


@dataclass(frozen=True)
class Unit:
    """One answer as one rater sees it."""

    item_id: str
    label: str
    scored: bool


class RatingStore:
    """The rating study database.

    Args:
        path: the SQLite file (created with the schema when absent).
        criteria: the criteria raters score (default: the four of the protocol).
        create: create the database when absent; ``False`` makes a missing file an error.
    """

    def __init__(self, path: str | os.PathLike, criteria: Sequence[str] = CRITERIA, create: bool = True) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no study database (make one with 'hicur rate init')")
        self.criteria = tuple(criteria)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _private_file(self.path)
        with _WRITE_LOCKS_GUARD:
            self._lock = _WRITE_LOCKS.setdefault(self.path.resolve(), threading.Lock())
        self._pending: list[_Submission] = []
        self._pending_lock = threading.Lock()
        self.commits = 0  # write transactions committed by this object
        with self._connect() as con:
            mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RuntimeError(f"{self.path}: could not switch SQLite to WAL mode (got {mode!r})")
            con.executescript(_SCHEMA)
        _private_file(self.path)  # -wal / -shm exist now (SQLite gives them the database's mode)

    # -- connections -------------------------------------------------------------------
    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        try:
            con.execute("PRAGMA busy_timeout=60000")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA synchronous=FULL")
            yield con
        finally:
            con.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed on success, rolled back on any error.

        Writers of this process queue on :attr:`_lock` first (no sleeping); SQLite's busy
        timeout still guards against other processes.
        """
        with self._lock, self._transaction() as con:
            yield con

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error); the caller holds :attr:`_lock`."""
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            self.commits += 1

    # -- study setup -------------------------------------------------------------------
    def add_study(self, items: Sequence[Item], answers: Sequence[Answer],
                  images_dir: str | os.PathLike | None = None) -> None:
        """Add (or update the texts of) items and answers; one transaction.

        Raises:
            RatingError: if an answer refers to an unknown item, or an answer that already
                has scores would change its text.
        """
        ids = {it.item_id for it in items}
        with self._write() as con:
            ids |= {r[0] for r in con.execute("SELECT item_id FROM items")}
            start = con.execute("SELECT COALESCE(MAX(position), -1) + 1 FROM items").fetchone()[0]
            for pos, it in enumerate(items, start):
                con.execute(
                    "INSERT INTO items VALUES (?,?,?,?,?,?,?) ON CONFLICT(item_id) DO UPDATE SET kind=excluded.kind, "
                    "question=excluded.question, context=excluded.context, reference=excluded.reference, "
                    "image=excluded.image", (it.item_id, pos, it.kind, it.question, it.context, it.reference, it.image))
            for ans in answers:
                if ans.item_id not in ids:
                    raise RatingError(f"answer of system {ans.system!r} refers to unknown item {ans.item_id!r}")
                old = con.execute("SELECT answer FROM answers WHERE item_id=? AND system=?",
                                  (ans.item_id, ans.system)).fetchone()
                if old is not None and old[0] != ans.answer and con.execute(
                        "SELECT 1 FROM scores WHERE item_id=? AND system=? LIMIT 1",
                        (ans.item_id, ans.system)).fetchone():
                    raise RatingError(f"answer of system {ans.system!r} to item {ans.item_id!r} already has scores; "
                                      "its text cannot change (start a new study database)")
                con.execute("INSERT INTO answers VALUES (?,?,?) ON CONFLICT(item_id, system) DO UPDATE SET "
                            "answer=excluded.answer", (ans.item_id, ans.system, ans.answer))
            if images_dir is not None:
                con.execute("INSERT INTO meta VALUES ('images_dir', ?) "
                            "ON CONFLICT(key) DO UPDATE SET value=excluded.value", (str(Path(images_dir).resolve()),))
            con.execute("INSERT INTO meta VALUES ('criteria', ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                        (json.dumps(self.criteria),))
            for (rater,) in con.execute("SELECT rater FROM raters").fetchall():
                self._ensure_labels(con, rater)

    @property
    def images_dir(self) -> Path | None:
        with self._connect() as con:
            row = con.execute("SELECT value FROM meta WHERE key='images_dir'").fetchone()
        return Path(row[0]) if row else None

    def counts(self) -> dict[str, int]:
        """Numbers of items, answers, raters, stored scores and audit rows."""
        with self._connect() as con:
            return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]  # noqa: S608 - fixed names
                    for t in ("items", "answers", "raters", "scores", "audit")}

    # -- raters ------------------------------------------------------------------------
    def add_rater(self, rater: str, password: str, replace: bool = False) -> None:
        """Create a rater account (or reset its password with ``replace=True``).

        Raises:
            RatingError: for an invalid name, or an existing rater without ``replace``.
        """
        if not _RATER_NAME.match(rater or ""):
            raise RatingError(f"rater name {rater!r} must be 1-64 letters, digits or . _ @ -")
        if len(password) < 8:
            raise RatingError("the password must have at least 8 characters")
        hashed = hash_password(password)
        with self._write() as con:
            exists = con.execute("SELECT 1 FROM raters WHERE rater=?", (rater,)).fetchone()
            if exists and not replace:
                raise RatingError(f"rater {rater!r} exists (use replace=True / --reset to change the password)")
            con.execute("INSERT INTO raters VALUES (?,?,?) ON CONFLICT(rater) DO UPDATE SET password=excluded.password",
                        (rater, hashed, _now()))
            self._ensure_labels(con, rater)

    def raters(self) -> list[str]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT rater FROM raters ORDER BY rater")]

    def verify(self, rater: str, password: str) -> bool:
        """True when ``password`` is the rater's (same work whether or not the rater exists).

        A correct password stored at a lower cost than :data:`SCRYPT_PARAMS` is re-hashed.
        """
        if not isinstance(rater, str) or not isinstance(password, str):
            return False
        with self._connect() as con:
            row = con.execute("SELECT password FROM raters WHERE rater=?", (rater,)).fetchone()
        ok = verify_password(password, row[0] if row else _dummy_hash())
        if row and ok and needs_rehash(row[0]):
            new = hash_password(password)
            with self._write() as con:
                con.execute("UPDATE raters SET password=? WHERE rater=? AND password=?", (new, rater, row[0]))
        return bool(row) and ok

    # -- blinding ----------------------------------------------------------------------
    def _ensure_labels(self, con: sqlite3.Connection, rater: str) -> None:
        """Draw labels for every (item, system) this rater has none for yet (inside a write)."""
        missing = con.execute(
            "SELECT a.item_id, a.system FROM answers a LEFT JOIN labels l ON l.rater=? AND l.item_id=a.item_id "
            "AND l.system=a.system WHERE l.system IS NULL ORDER BY a.item_id", (rater,)).fetchall()
        by_item: dict[str, list[str]] = {}
        for item_id, system in missing:
            by_item.setdefault(item_id, []).append(system)
        rng = secrets.SystemRandom()
        for item_id, systems in by_item.items():
            used = {r[0] for r in con.execute("SELECT label FROM labels WHERE rater=? AND item_id=?", (rater, item_id))}
            free = [lab for lab in _labels(len(used) + len(systems)) if lab not in used]
            rng.shuffle(systems)
            con.executemany("INSERT INTO labels VALUES (?,?,?,?)",
                            [(rater, item_id, lab, sys) for lab, sys in zip(free, systems)])

    @staticmethod
    def _labels_missing(con: sqlite3.Connection, rater: str) -> bool:
        n_answers = con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        return con.execute("SELECT COUNT(*) FROM labels WHERE rater=?", (rater,)).fetchone()[0] < n_answers

    def _require_rater(self, con: sqlite3.Connection, rater: str) -> None:
        if not con.execute("SELECT 1 FROM raters WHERE rater=?", (rater,)).fetchone():
            raise RatingError(f"unknown rater {rater!r}")

    def _system(self, con: sqlite3.Connection, rater: str, item_id: str, label: str) -> str:
        row = con.execute("SELECT system FROM labels WHERE rater=? AND item_id=? AND label=?",
                          (rater, item_id, label)).fetchone()
        if row is None:
            raise UnknownUnitError(f"no answer labelled {label!r} for item {item_id!r}")
        return row[0]

    def reveal(self, rater: str, item_id: str, label: str) -> str:
        """The system behind a rater's label: for study administration and simulation only.

        The rating site never calls this.
        """
        with self._connect() as con:
            return self._system(con, rater, item_id, label)

    # -- what a rater sees -------------------------------------------------------------
    def units(self, rater: str) -> list[Unit]:
        """The rater's units in order (item position, then label), each with its scored state."""
        with self._connect() as con:
            self._require_rater(con, rater)
            if self._labels_missing(con, rater):  # answers added after the rater: draw their labels
                with self._write() as wcon:
                    self._ensure_labels(wcon, rater)
            rows = con.execute(
                "SELECT l.item_id, l.label, (SELECT COUNT(*) FROM scores s WHERE s.rater=l.rater AND "
                "s.item_id=l.item_id AND s.system=l.system) FROM labels l JOIN items i ON i.item_id=l.item_id "
                "WHERE l.rater=? ORDER BY i.position, length(l.label), l.label", (rater,)).fetchall()
        return [Unit(item_id, label, n >= len(self.criteria)) for item_id, label, n in rows]

    def progress(self, rater: str) -> tuple[int, int]:
        """``(scored, total)`` units of the rater."""
        with self._connect() as con:
            self._require_rater(con, rater)
            total = con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
            scored = con.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM scores WHERE rater=? GROUP BY item_id, system "
                "HAVING COUNT(*) >= ?)", (rater, len(self.criteria))).fetchone()[0]
        return scored, total

    def view(self, rater: str, item_id: str, label: str) -> dict[str, Any]:
        """What the rater sees of one unit: texts, image path, the rater's own latest scores.

        The returned dict never contains the system's identity.
        """
        _check_key(item_id, label)
        with self._connect() as con:
            self._require_rater(con, rater)
            system = self._system(con, rater, item_id, label)
            item = con.execute("SELECT kind, question, context, reference, image FROM items WHERE item_id=?",
                               (item_id,)).fetchone()
            answer = con.execute("SELECT answer FROM answers WHERE item_id=? AND system=?",
                                 (item_id, system)).fetchone()[0]
            rows = con.execute("SELECT criterion, score, updated_at FROM scores WHERE rater=? AND item_id=? AND "
                               "system=?", (rater, item_id, system)).fetchall()
        scores = {c: None for c in self.criteria}
        updated = None
        for criterion, score, at in rows:
            scores[criterion] = score
            updated = max(updated or at, at)
        return {"item_id": item_id, "label": label, "kind": item[0], "question": item[1], "context": item[2],
                "reference": item[3], "image": item[4], "answer": answer, "scores": scores, "scored_at": updated}

    def neighbour(self, rater: str, current: tuple[str, str] | None, step: int = 1,
                  unscored_only: bool = True) -> Unit | None:
        """The next (``step=1``) or previous (``step=-1``) unit after ``current``, wrapping around.

        With ``unscored_only`` it is the nearest unit not yet scored by this rater, or ``None``
        when every other unit is scored. ``current=None`` starts before the first unit.
        """
        units = self.units(rater)
        if not units:
            return None
        keys = [(u.item_id, u.label) for u in units]
        start = keys.index(current) if current in keys else (-1 if step > 0 else 0)
        n = len(units)
        for k in range(1, n + 1):
            u = units[(start + step * k) % n]
            if (u.item_id, u.label) == current:
                continue
            if not unscored_only or not u.scored:
                return u
        return None

    # -- scoring -----------------------------------------------------------------------
    def submit(self, rater: str, item_id: str, label: str, scores: Mapping[str, float]) -> str:
        """Store the rater's scores of one unit, all or nothing; returns the timestamp.

        Every criterion must be given, each a number in [0, 10]; the previous values stay in
        the audit table. Submissions arriving while another is being written are committed
        together in the next transaction (group commit: one fsync for all of them, each in
        its own savepoint); the call returns once its scores are durable.

        Raises:
            RatingError: unknown rater/unit, a missing or unknown criterion, or a bad score.
        """
        _check_key(item_id, label)
        if not isinstance(scores, Mapping):
            raise RatingError("scores must map each criterion to a number")
        given = set(scores)
        if given != set(self.criteria):
            raise RatingError(f"scores must give exactly {list(self.criteria)}; "
                              f"missing {sorted(set(self.criteria) - given)}, "
                              f"unknown {sorted(given - set(self.criteria))}")
        clean = {}
        for criterion in self.criteria:
            value = scores[criterion]
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                raise RatingError(f"score of {criterion!r} must be a number from 0 to 10, got {value!r}")
            value = float(value)
            if not 0 <= value <= 10:  # NaN fails this too
                raise RatingError(f"score of {criterion!r} must be from 0 to 10, got {value:g}")
            clean[criterion] = value
        job = _Submission(rater, item_id, label, clean)
        with self._pending_lock:
            self._pending.append(job)
        with self._lock:
            if not job.done:  # not committed by an earlier leader: commit everything waiting
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit_batch(batch)
        if job.error is not None:
            raise job.error
        return job.at

    def _commit_batch(self, batch: list[_Submission]) -> None:
        """Group commit: the waiting submissions in one transaction (one fsync), each in a savepoint.

        A submission that fails (unknown unit, ...) is rolled back to its savepoint alone and
        its submitter gets the error; the others are committed. The caller holds :attr:`_lock`.
        """
        try:
            with self._transaction() as con:
                for job in batch:
                    con.execute("SAVEPOINT submission")
                    try:
                        job.at = self._apply(con, job)
                    except RatingError as err:
                        con.execute("ROLLBACK TO submission")
                        job.error = err
                    con.execute("RELEASE submission")
        except BaseException as err:  # the commit failed: nothing of the batch is stored
            for job in batch:
                job.error = job.error or err
            raise
        finally:
            for job in batch:
                job.done = True

    def _apply(self, con: sqlite3.Connection, job: _Submission) -> str:
        at = _now()
        self._require_rater(con, job.rater)
        system = self._system(con, job.rater, job.item_id, job.label)
        key = (job.rater, job.item_id, system)
        for criterion, value in job.scores.items():
            prev = con.execute("SELECT score FROM scores WHERE rater=? AND item_id=? AND system=? AND criterion=?",
                               (*key, criterion)).fetchone()
            con.execute("INSERT INTO scores VALUES (?,?,?,?,?,?) ON CONFLICT(rater, item_id, system, criterion) "
                        "DO UPDATE SET score=excluded.score, updated_at=excluded.updated_at",
                        (*key, criterion, value, at))
            con.execute("INSERT INTO audit (rater, item_id, system, criterion, score, previous, at) "
                        "VALUES (?,?,?,?,?,?,?)", (*key, criterion, value, prev[0] if prev else None, at))
        return at

    # -- export ------------------------------------------------------------------------
    def export_rows(self, audit: bool = False) -> list[dict[str, Any]]:
        """Latest scores (or, with ``audit=True``, every submission) as dicts, unblinded."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            if audit:
                sql = ("SELECT a.id, a.rater, a.item_id, a.system, l.label, i.kind, a.criterion, a.score, "
                       "a.previous, a.at "
                       "FROM audit a JOIN items i USING(item_id) LEFT JOIN labels l ON l.rater=a.rater AND "
                       "l.item_id=a.item_id AND l.system=a.system ORDER BY a.id")
            else:
                sql = ("SELECT s.rater, s.item_id, s.system, l.label, i.kind, s.criterion, s.score, s.updated_at "
                       "FROM scores s JOIN items i USING(item_id) LEFT JOIN labels l ON l.rater=s.rater AND "
                       "l.item_id=s.item_id AND l.system=s.system ORDER BY s.rater, i.position, s.system, s.criterion")
            return [dict(r) for r in con.execute(sql)]

    def export_csv(self, path: str | os.PathLike, audit: bool = False) -> Path:
        """Write :meth:`export_rows` as CSV (atomically) for :func:`hicur_monai.evaluation.aggregate.aggregate`."""
        rows = self.export_rows(audit=audit)
        fields = (["id", "rater", "item_id", "system", "label", "kind", "criterion", "score", "previous", "at"] if audit
                  else ["rater", "item_id", "system", "label", "kind", "criterion", "score", "updated_at"])
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        return atomic_write_text(path, buf.getvalue())

