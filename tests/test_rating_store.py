"""Rating study store: accounts, blinding, 0 vs not scored, audit, transactions, CLI."""

from __future__ import annotations

import io
import json
import math
import os
import sqlite3
import stat
import threading

import pandas as pd
import pytest

from hicur_monai.cli import main
from hicur_monai.evaluation.rating import store as store_module
from hicur_monai.evaluation.rating.store import RatingError, RatingStore, hash_password, verify_password
from hicur_monai.evaluation.records import Answer, Item

SYSTEMS = [f"SYSTEM_{c}" for c in "PQRSTU"]


@pytest.fixture(autouse=True)
def _cheap_hashes(request, monkeypatch):
    """Accounts at a low scrypt cost for speed, except in the test of the cost itself."""
    if "owasp" not in request.node.name:
        monkeypatch.setitem(store_module.SCRYPT_PARAMS, "n", 2**10)


@pytest.fixture()
def store(tmp_path):
    s = RatingStore(tmp_path / "study.sqlite")
    items = [Item(f"it{i:02d}", f"Q{i}?", f"caption {i}", f"reference {i}", "detailed" if i % 2 else "conversation",
                  f"img{i}.png") for i in range(10)]
    s.add_study(items, [Answer(it.item_id, sys, f"text {k} for {it.item_id}") for it in items
                        for k, sys in enumerate(SYSTEMS)])
    s.add_rater("alice", "password-alice")
    s.add_rater("bob", "password-bob")
    return s


FOUR = {"accuracy": 1, "completeness": 2, "reliability": 3, "safety": 4}


def test_passwords_are_hashed_and_checked(store):
    h = hash_password("s3cret-pass")
    assert "s3cret-pass" not in h and h.startswith("scrypt$")
    assert verify_password("s3cret-pass", h) and not verify_password("s3cret-pasS", h)
    assert store.verify("alice", "password-alice")
    assert not store.verify("alice", "password-bob") and not store.verify("carol", "password-alice")
    with sqlite3.connect(store.path) as con:
        assert "password-alice" not in json.dumps(con.execute("SELECT * FROM raters").fetchall())
    with pytest.raises(RatingError, match="exists"):
        store.add_rater("alice", "another-password")
    with pytest.raises(RatingError, match="at least 8"):
        store.add_rater("carol", "short")
    with pytest.raises(RatingError, match="rater name"):
        store.add_rater("bad name!", "long-enough-pw")
    store.add_rater("alice", "new-password-1", replace=True)
    assert store.verify("alice", "new-password-1") and not store.verify("alice", "password-alice")


def test_wal_mode(store):
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_labels_are_random_per_item_and_rater_and_views_are_blind(store):
    maps = {r: {(u.item_id, u.label): store.reveal(r, u.item_id, u.label) for u in store.units(r)}
            for r in ("alice", "bob")}
    assert len(maps["alice"]) == 60
    assert maps["alice"] != maps["bob"]  # 1 in 720**10 to be equal by chance
    per_item = {tuple(maps["alice"][(f"it{i:02d}", lab)] for lab in "ABCDEF") for i in range(10)}
    assert len(per_item) > 1  # the order differs between items
    assert {u.label for u in store.units("alice")} == set("ABCDEF")
    # stable: asking again returns the same mapping
    assert maps["alice"] == {(u.item_id, u.label): store.reveal("alice", u.item_id, u.label)
                             for u in store.units("alice")}
    view = store.view("alice", "it03", "C")
    assert not any(s in json.dumps(view) for s in SYSTEMS)
    assert view["answer"].startswith("text ") and view["scores"] == dict.fromkeys(FOUR)


def test_zero_is_a_score_and_rescoring_keeps_history(store):
    assert store.progress("alice") == (0, 60)
    store.submit("alice", "it00", "A", {"accuracy": 0, "completeness": 0, "reliability": 0, "safety": 0})
    assert store.progress("alice") == (1, 60)
    zeros = {"accuracy": 0, "completeness": 0, "reliability": 0, "safety": 0}
    assert store.view("alice", "it00", "A")["scores"] == zeros
    store.submit("alice", "it00", "A", {**FOUR, "safety": 9.5})
    assert store.view("alice", "it00", "A")["scores"]["safety"] == 9.5
    audit = store.export_rows(audit=True)
    safety = [r for r in audit if r["criterion"] == "safety"]
    assert [(r["score"], r["previous"]) for r in safety] == [(0.0, None), (9.5, 0.0)]
    latest = store.export_rows()
    assert len(latest) == 4 and {r["score"] for r in latest} == {1.0, 2.0, 3.0, 9.5}
    assert store.progress("bob") == (0, 60)  # bob's view is his own
    assert store.view("bob", "it00", "A")["scores"]["accuracy"] is None


@pytest.mark.parametrize("scores,match", [
    ({**FOUR, "accuracy": 11}, "from 0 to 10"),
    ({**FOUR, "accuracy": -0.5}, "from 0 to 10"),
    ({**FOUR, "accuracy": None}, "must be a number"),
    ({**FOUR, "accuracy": True}, "must be a number"),
    ({**FOUR, "accuracy": math.nan}, "from 0 to 10"),
    ({**FOUR, "accuracy": "7"}, "must be a number"),
    ({"accuracy": 1, "completeness": 2, "reliability": 3}, r"missing \['safety'\]"),
    ({**FOUR, "beauty": 3}, r"unknown \['beauty'\]"),
])
def test_bad_submissions_store_nothing(store, scores, match):
    with pytest.raises(RatingError, match=match):
        store.submit("alice", "it00", "A", scores)
    assert store.counts()["scores"] == 0 and store.counts()["audit"] == 0


def test_unknown_unit_or_rater(store):
    with pytest.raises(RatingError, match="no answer labelled 'Z'"):
        store.submit("alice", "it00", "Z", FOUR)
    with pytest.raises(RatingError, match="unknown rater"):
        store.submit("mallory", "it00", "A", FOUR)
    with pytest.raises(RatingError, match="unknown rater"):
        store.units("mallory")


def test_neighbour_skips_scored_units(store):
    units = store.units("alice")
    first = store.neighbour("alice", None)
    assert (first.item_id, first.label) == (units[0].item_id, units[0].label)
    store.submit("alice", units[1].item_id, units[1].label, FOUR)
    nxt = store.neighbour("alice", (units[0].item_id, units[0].label))
    assert (nxt.item_id, nxt.label) == (units[2].item_id, units[2].label)
    prev = store.neighbour("alice", (units[2].item_id, units[2].label), step=-1)
    assert (prev.item_id, prev.label) == (units[0].item_id, units[0].label)
    browse = store.neighbour("alice", (units[2].item_id, units[2].label), step=-1, unscored_only=False)
    assert (browse.item_id, browse.label) == (units[1].item_id, units[1].label)
    for u in units:
        store.submit("alice", u.item_id, u.label, FOUR)
    assert store.neighbour("alice", None) is None


def test_answer_text_cannot_change_once_scored(store):
    store.submit("alice", "it00", "A", FOUR)
    system = store.reveal("alice", "it00", "A")
    with pytest.raises(RatingError, match="already has scores"):
        store.add_study([], [Answer("it00", system, "changed text")])
    with pytest.raises(RatingError, match="unknown item"):
        store.add_study([], [Answer("nope", "s", "x")])


def test_threads_submit_every_score_exactly_once(store):
    raters = [f"r{i}" for i in range(6)]
    for r in raters:
        store.add_rater(r, "password-123")
    errors = []

    def work(idx: int, rater: str) -> None:
        try:
            for k, u in enumerate(store.units(rater)[:20]):
                store.submit(rater, u.item_id, u.label, {"accuracy": idx, "completeness": k % 11,
                                                         "reliability": 10 - idx, "safety": (idx + k) % 11})
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i, r)) for i, r in enumerate(raters)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = pd.DataFrame(store.export_rows())
    assert len(rows) == 6 * 20 * 4 and store.counts()["audit"] == 6 * 20 * 4
    assert not rows.duplicated(["rater", "item_id", "system", "criterion"]).any()
    for i, r in enumerate(raters):
        assert set(rows.loc[(rows.rater == r) & (rows.criterion == "accuracy"), "score"]) == {float(i)}


def test_cli_init_add_rater_export(tmp_path, monkeypatch, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text("".join(json.dumps({"item_id": f"q{i}", "question": "Q?", "caption": "c", "reference": "R",
                                         "kind": "detailed", "image": f"q{i}.png"}) + "\n" for i in range(3)))
    answers = []
    for system in ("sysA", "sysB"):
        p = tmp_path / f"{system}.jsonl"
        p.write_text("".join(json.dumps({"item_id": f"q{i}", "system": system, "answer": f"a{i}"}) + "\n"
                             for i in range(3)))
        answers.append(str(p))
    db = str(tmp_path / "s.sqlite")
    assert main(["rate", "init", "--db", db, "--items", str(items), "--answers", *answers,
                 "--images", str(tmp_path)]) == 0
    assert "3 items, 6 answers" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("correct-horse\n"))
    assert main(["rate", "add-rater", "--db", db, "dr_lee", "--password-stdin"]) == 0
    s = RatingStore(db)
    assert s.verify("dr_lee", "correct-horse") and s.images_dir == tmp_path.resolve()
    u = s.units("dr_lee")[0]
    s.submit("dr_lee", u.item_id, u.label, FOUR)
    out = tmp_path / "scores.csv"
    assert main(["rate", "export", "--db", db, "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert len(df) == 4 and set(df.columns) >= {"rater", "item_id", "system", "criterion", "score", "updated_at"}
    # the export is what the aggregation reads
    from hicur_monai.evaluation.aggregate import load_physician_scores

    assert load_physician_scores(out)["score"].tolist() == [1.0, 2.0, 3.0, 4.0]
    assert main(["rate", "export", "--db", str(tmp_path / "missing.sqlite"), "--out", str(out)]) == 2
    assert "no study database" in capsys.readouterr().err


def test_owasp_scrypt_cost_and_older_hashes_still_verify_then_upgrade(tmp_path):
    h = hash_password("s3cret-pass")
    algo, n, r, p, salt, digest = h.split("$")
    assert (algo, int(n), int(r), int(p)) == ("scrypt", 2**17, 8, 1)  # OWASP minimum
    assert len(bytes.fromhex(salt)) == 16 and len(bytes.fromhex(digest)) == 32
    old = hash_password("old-password", params={"n": 2**14})  # what earlier versions stored
    assert old.split("$")[1] == str(2**14) and verify_password("old-password", old)
    assert store_module.needs_rehash(old) and not store_module.needs_rehash(h)
    s = RatingStore(tmp_path / "s.sqlite")
    with sqlite3.connect(s.path) as con:  # an account made by an earlier version
        con.execute("INSERT INTO raters VALUES ('dr_old', ?, '2025-01-01')", (old,))
    assert not s.verify("dr_old", "wrong-password")
    assert s.verify("dr_old", "old-password")
    with sqlite3.connect(s.path) as con:
        stored = con.execute("SELECT password FROM raters WHERE rater='dr_old'").fetchone()[0]
    assert stored.split("$")[1] == str(2**17) and stored != old  # re-hashed at login
    assert not verify_password("x", "scrypt$1073741824$8$1$00$00")  # absurd stored cost refused, no MemoryError


def test_database_and_wal_files_are_private(tmp_path):
    s = RatingStore(tmp_path / "study.sqlite")
    reader = sqlite3.connect(s.path)  # an open connection keeps the -wal / -shm files in place
    reader.execute("SELECT COUNT(*) FROM raters").fetchone()
    s.add_rater("alice", "password-alice")
    files = [s.path, tmp_path / "study.sqlite-wal", tmp_path / "study.sqlite-shm"]
    for f in files:
        assert f.exists() and stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
    reader.close()
    os.chmod(s.path, 0o644)  # a database made by an earlier version
    RatingStore(s.path)
    assert stat.S_IMODE(s.path.stat().st_mode) == 0o600


@pytest.mark.parametrize("item_id,label", [({"$gt": ""}, "A"), ("it00", ["A"]), ("", "A"), ("x" * 300, "A")])
def test_unit_keys_from_clients_must_be_short_strings(store, item_id, label):
    with pytest.raises(RatingError, match="must be a non-empty string"):
        store.submit("alice", item_id, label, FOUR)
    with pytest.raises(RatingError, match="must be a non-empty string"):
        store.view("alice", item_id, label)
    assert store.counts()["scores"] == 0


def test_group_commit_keeps_each_submission_all_or_nothing(store):
    """Submissions waiting on a running write go in one transaction; a bad one fails alone."""
    units = [u for u in store.units("alice")][:3]
    jobs = [("alice", units[0].item_id, units[0].label), ("alice", units[1].item_id, "ZZ"),
            ("bob", units[2].item_id, units[2].label)]
    errors: dict[int, BaseException] = {}

    def submit(k: int) -> None:
        try:
            store.submit(*jobs[k], FOUR)
        except RatingError as err:
            errors[k] = err

    commits = store.commits
    with store._lock:  # a write in progress: the three queue up behind it
        threads = [threading.Thread(target=submit, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        while len(store._pending) < 3:
            threading.Event().wait(0.01)
    for t in threads:
        t.join(timeout=60)
    assert store.commits == commits + 1  # one transaction (one fsync) for the three
    assert list(errors) == [1] and "no answer labelled 'ZZ'" in str(errors[1])
    assert store.view("alice", units[0].item_id, units[0].label)["scores"] == {k: float(v) for k, v in FOUR.items()}
    assert store.view("bob", units[2].item_id, units[2].label)["scores"] == {k: float(v) for k, v in FOUR.items()}
    assert store.counts()["audit"] == 8  # two submissions x four criteria; nothing of the bad one
