"""Throughput of the rating site: N raters submitting M answers each at once over HTTP.

Starts the Gradio site on 127.0.0.1 with a fresh study, logs every rater in (``POST /login``),
lets them submit through ``POST /gradio_api/run/submit`` concurrently, then checks that
every score was stored exactly once and prints the figures. With ``--guessers N``, N more
clients (from another loopback address, 127.0.0.2) guess passwords of the raters' accounts
through ``POST /login`` for as long as the raters submit; the figures then show what the
login throttling leaves of the attack and what the guessing costs the raters.

    python benchmarks/rating_site_throughput.py --raters 20 --scores 20
    python benchmarks/rating_site_throughput.py --raters 20 --scores 20 --guessers 1
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raters", type=int, default=10)
    ap.add_argument("--scores", type=int, default=50, help="answers each rater scores")
    ap.add_argument("--guessers", type=int, default=0, help="clients guessing passwords while the raters submit")
    args = ap.parse_args()

    import httpx

    from hicur_monai.evaluation.demo import make_demo_study
    from hicur_monai.evaluation.rating.app import serve
    from hicur_monai.evaluation.rating.store import RatingStore
    from hicur_monai.evaluation.records import read_answers, read_items

    root = Path(tempfile.mkdtemp(prefix="rating_bench_"))
    n_items = -(-args.scores // 3)
    study = make_demo_study(root / "study", n_items=n_items)
    items = read_items(study["items"])
    store = RatingStore(root / "study.sqlite")
    store.add_study(items, read_answers(study["answers"], items), images_dir=study["images"])
    for i in range(args.raters):
        store.add_rater(f"rater{i}", f"password-{i}")
    demo = serve(store.path, port=0, block=False)
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(args.raters + args.guessers + 1)
    done = threading.Event()
    guesses: collections.Counter[int] = collections.Counter()

    def guesser(g: int) -> None:
        transport = httpx.HTTPTransport(local_address="127.0.0.2")  # the attacker's own address
        with httpx.Client(base_url=demo.local_url, transport=transport,
                          timeout=120) as c:
            barrier.wait()
            k = 0
            while not done.is_set():
                r = c.post("login", data={"username": f"rater{k % args.raters}", "password": f"guess-{g}-{k}"})
                with lock:
                    guesses[r.status_code] += 1
                k += 1

    def rater(i: int) -> None:
        with httpx.Client(base_url=demo.local_url, timeout=120) as c:
            c.post("login", data={"username": f"rater{i}", "password": f"password-{i}"}).raise_for_status()
            units = c.post("gradio_api/run/units", json={"data": []}).json()["data"][0]["units"]
            barrier.wait()
            for k, u in enumerate(units[: args.scores]):
                t = time.perf_counter()
                r = c.post("gradio_api/run/submit", json={"data": [u["item_id"], u["label"], i % 11, k % 11, 5, 0]})
                r.raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=rater, args=(i,)) for i in range(args.raters)]
    attackers = [threading.Thread(target=guesser, args=(g,)) for g in range(args.guessers)]
    for t in threads + attackers:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    for t in attackers:
        t.join()
    demo.close()
    counts = store.counts()
    expected = args.raters * args.scores * 4
    lat = sorted(latencies)
    print(f"raters x answers     : {args.raters} x {args.scores} "
          "(concurrent, HTTP, each submission all-or-nothing, group-committed)")
    print(f"wall time            : {wall:.2f} s")
    print(f"submissions / s      : {len(lat) / wall:.1f}")
    p95 = lat[int(0.95 * (len(lat) - 1))]
    print(f"latency median / p95 : {statistics.median(lat) * 1000:.0f} ms / {p95 * 1000:.0f} ms")
    print(f"score rows stored    : {counts['scores']} (expected {expected}), audit rows {counts['audit']}")
    if args.guessers:
        n = sum(guesses.values())
        print(f"password guesses     : {n} from {args.guessers} client(s) in {wall:.2f} s; "
              f"{guesses[400]} checked (HTTP 400), {guesses[429]} refused by the throttle (HTTP 429), "
              f"other {n - guesses[400] - guesses[429]}")
    if counts["scores"] != expected or counts["audit"] != expected:
        raise SystemExit("MISMATCH: scores lost or duplicated")


if __name__ == "__main__":
    main()
