"""The blinded physician rating website (Gradio).

Each physician logs in with the account made by ``hicur rate add-rater`` (Gradio's login
page, passwords checked against scrypt hashes in the study database). Per answer the page
shows the image, the question, the reference answer and one system's answer under an
anonymous label, four 0-10 sliders, Submit, Previous / Next (to the nearest answer this
rater has not scored) and the rater's progress. The label -> system mapping stays in the
database: no handler returns a system's name, and the rater name always comes from the
login session, never from the page.

A slider must be moved (or its number typed) before an unscored answer can be submitted,
so that an untouched slider is never taken for a deliberate 0; a stored 0 is a real score.

Scripted clients (and the tests) use three API endpoints with the same login cookie
(``POST /login``): ``POST /gradio_api/run/units``, ``/gradio_api/run/view``
(``{"data": [item_id, label]}``) and ``/gradio_api/run/submit``
(``{"data": [item_id, label, accuracy, completeness, reliability, safety]}``), answering
``{"data": [result]}``. They are the site's own FastAPI routes (:mod:`.api`), placed ahead of
Gradio's generic ``/run`` route, so that bad input is a 4xx with a reason (400 malformed,
404 unknown answer, 422 bad score) and never an internal error text.

Hardening (:mod:`.guard`): failed logins are throttled per account and per address (429
with ``Retry-After`` when locked), the password hash runs in a small thread pool and never
on the event loop, request bodies are limited (413) and uploads refused (the site has no
upload field), Gradio's cached files are deleted hourly, and internal errors show no text.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from hicur_monai.evaluation.judge import CRITERIA

from .api import api_routes
from .guard import LoginThrottle, RequestGuard, make_auth
from .store import RatingError, RatingStore, Unit

__all__ = ["build_app", "serve", "preview_image", "AUTH_MESSAGE"]

#: shown on the login page
AUTH_MESSAGE = ("HiCur-NPC rating study: log in with the account you were given. After 5 failed attempts "
                "the account is locked for up to 15 minutes.")

logger = logging.getLogger(__name__)

_PLAIN = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def preview_image(path: str | os.PathLike) -> np.ndarray:
    """A displayable uint8 image of any supported file (middle slice of a volume).

    Raises:
        ValueError: naming the file when it cannot be read.
    """
    path = Path(path)
    if path.suffix.lower() in _PLAIN:
        from PIL import Image

        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except OSError as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None
    from hicur_monai.transforms import LoadMedicalImage

    arr = np.asarray(LoadMedicalImage(ensure_channel_first=True)(path), dtype=np.float32)  # (C, H, W[, D])
    if arr.shape[0] in (3, 4) and arr.ndim == 3:
        arr = np.moveaxis(arr[:3], 0, -1)
    else:
        arr = arr[0]
        while arr.ndim > 2:  # middle slice of a volume
            arr = arr[..., arr.shape[-1] // 2]
        arr = np.rot90(arr)
    lo, hi = np.percentile(arr, [0.5, 99.5])
    return (np.clip((arr - lo) / max(float(hi - lo), 1e-6), 0, 1) * 255).astype(np.uint8)


def _rater(request: gr.Request | None) -> str:
    name = getattr(request, "username", None) if request is not None else None
    if not name:
        raise gr.Error("Not logged in: open the site's login page.", print_exception=False)
    return name


class _Handlers:
    """Event handlers bound to one store (kept apart from the layout for readability)."""

    def __init__(self, store: RatingStore, images_dir: Path | None) -> None:
        self.store = store
        self.images_dir = images_dir

    # -- helpers -----------------------------------------------------------------------
    def _image(self, rel: str) -> np.ndarray | None:
        if not rel:
            return None
        path = Path(rel)
        if not path.is_absolute() and self.images_dir is not None:
            path = self.images_dir / path
        try:
            return preview_image(path)
        except (ValueError, FileNotFoundError, OSError) as err:
            logger.warning("cannot show image %s: %s", path, err)
            gr.Warning(f"The image {Path(rel).name} cannot be shown.")
            return None

    def render(self, rater: str, unit: Unit | None) -> tuple[Any, ...]:
        scored, total = self.store.progress(rater)
        progress = f"**{rater}** — {scored} of {total} scored"
        if unit is None:
            blank = gr.update(value=None)
            return (progress, blank, "", "", "", gr.update(value="", label="Answer"),
                    *[gr.update(value=0)] * len(CRITERIA), "Nothing to show.", None, [])
        v = self.store.view(rater, unit.item_id, unit.label)
        stored = v["scores"]
        if v["scored_at"] and all(s is not None for s in stored.values()):
            status = f"Scored by you ({v['scored_at'][:19].replace('T', ' ')} UTC). Submit again to change."
        else:
            status = "**Not scored yet.** Set all four sliders, then Submit."
        touched = [c for c, s in stored.items() if s is not None]
        header = f"Item {v['item_id']} · {v['kind']} · answer {unit.label}"
        return (f"{progress}  \n{header}", self._image(v["image"]), v["question"], v["context"], v["reference"],
                gr.update(value=v["answer"], label=f"Answer {unit.label}"),
                *[gr.update(value=stored[c] if stored[c] is not None else 0) for c in CRITERIA],
                status, {"item_id": unit.item_id, "label": unit.label}, touched)

    @staticmethod
    def _key(current: dict | None) -> tuple[str, str] | None:
        return (current["item_id"], current["label"]) if current else None

    # -- UI events ---------------------------------------------------------------------
    def load(self, browse_scored: bool, request: gr.Request) -> tuple[Any, ...]:
        rater = _rater(request)
        unit = self.store.neighbour(rater, None, 1, unscored_only=True) or self.store.neighbour(
            rater, None, 1, unscored_only=False)
        return self.render(rater, unit)

    def move(self, step: int, current: dict | None, browse_scored: bool, request: gr.Request) -> tuple[Any, ...]:
        rater = _rater(request)
        unit = self.store.neighbour(rater, self._key(current), step, unscored_only=not browse_scored)
        if unit is None:
            gr.Info("Every other answer is scored. Tick 'browse scored answers' to revisit them.")
            unit = self._current_unit(rater, current)
        return self.render(rater, unit)

    def previous(self, current: dict | None, browse_scored: bool, request: gr.Request) -> tuple[Any, ...]:
        return self.move(-1, current, browse_scored, request)

    def next(self, current: dict | None, browse_scored: bool, request: gr.Request) -> tuple[Any, ...]:
        return self.move(1, current, browse_scored, request)

    def _current_unit(self, rater: str, current: dict | None) -> Unit | None:
        if current is None:
            return None
        for u in self.store.units(rater):
            if (u.item_id, u.label) == self._key(current):
                return u
        return None

    def touch(self, criterion: str, touched: list[str] | None) -> list[str]:
        touched = list(touched or [])
        return touched if criterion in touched else [*touched, criterion]

    def submit(self, current: dict | None, touched: list[str] | None, browse_scored: bool, accuracy: float,
               completeness: float, reliability: float, safety: float, request: gr.Request) -> tuple[Any, ...]:
        rater = _rater(request)
        if not current:
            raise gr.Error("No answer is shown.", print_exception=False)
        untouched = [c for c in CRITERIA if c not in (touched or [])]
        if untouched:
            raise gr.Error(f"Set the slider of {', '.join(untouched)} first (an untouched slider is not a score).",
                           print_exception=False)
        try:
            scores = {"accuracy": accuracy, "completeness": completeness, "reliability": reliability, "safety": safety}
            self.store.submit(rater, current["item_id"], current["label"], scores)
        except RatingError as err:
            raise gr.Error(str(err), print_exception=False) from None
        gr.Info(f"Saved scores of answer {current['label']}.")
        nxt = self.store.neighbour(rater, self._key(current), 1, unscored_only=not browse_scored)
        return self.render(rater, nxt or self._current_unit(rater, current))


def build_app(store: RatingStore | str | os.PathLike, title: str = "HiCur-NPC answer rating",
              concurrency: int = 16) -> gr.Blocks:
    """The rating site as a :class:`gradio.Blocks` (launch it with :func:`serve`).

    Args:
        store: the study database (or its path).
        title: page title.
        concurrency: requests handled at once (SQLite serialises the writes).
    """
    if not isinstance(store, RatingStore):
        store = RatingStore(store)
    if tuple(store.criteria) != CRITERIA:
        raise ValueError(f"the rating site scores {CRITERIA}; the store uses {store.criteria}")
    h = _Handlers(store, store.images_dir)
    with gr.Blocks(title=title, delete_cache=(3600, 3600)) as demo:
        with gr.Row():
            progress = gr.Markdown(elem_id="progress")
            gr.Button("Log out", link="/logout", size="sm", scale=0, elem_id="logout")
        with gr.Row():
            with gr.Column(scale=2):
                image = gr.Image(label="Image", interactive=False, type="numpy", height=360, elem_id="image")
                context = gr.Textbox(label="Caption / context", interactive=False, lines=2, elem_id="context")
            with gr.Column(scale=3):
                question = gr.Textbox(label="Question", interactive=False, lines=2, elem_id="question")
                reference = gr.Textbox(label="Reference answer", interactive=False, lines=4, elem_id="reference")
                answer = gr.Textbox(label="Answer", interactive=False, lines=6, elem_id="answer")
        sliders = [gr.Slider(0, 10, step=1, value=0, label=c.capitalize(), elem_id=f"score-{c}") for c in CRITERIA]
        status = gr.Markdown(elem_id="status")
        browse = gr.Checkbox(label="browse scored answers too", value=False, elem_id="browse")
        with gr.Row():
            prev_btn = gr.Button("◀ Previous", elem_id="prev")
            submit_btn = gr.Button("Submit", variant="primary", elem_id="submit")
            next_btn = gr.Button("Next ▶", elem_id="next")
        current = gr.State(None)
        touched = gr.State([])
        outputs = [progress, image, question, context, reference, answer, *sliders, status, current, touched]

        private: dict[str, Any] = {"api_visibility": "private"}  # page events; scripted clients use the API below
        demo.load(h.load, [browse], outputs, api_name="ui_load", **private)
        prev_btn.click(h.previous, [current, browse], outputs, api_name="ui_previous", **private)
        next_btn.click(h.next, [current, browse], outputs, api_name="ui_next", **private)
        submit_btn.click(h.submit, [current, touched, browse, *sliders], outputs, api_name="ui_submit", **private)
        for criterion, slider in zip(CRITERIA, sliders):
            slider.input(lambda t, _c=criterion: h.touch(_c, t), [touched], [touched], api_name=f"ui_touch_{criterion}",
                         queue=False, **private)
    demo.queue(default_concurrency_limit=concurrency)
    return demo


def serve(db: str | os.PathLike, host: str = "127.0.0.1", port: int = 7860, block: bool = True,
          throttle: LoginThrottle | None = None, max_body: int = 1 << 20, hash_workers: int = 2,
          **launch_kwargs: Any) -> gr.Blocks:
    """Start the rating site for study database ``db`` (login required).

    Args:
        db: the study database made by ``hicur rate init``.
        host: interface to bind; the default, 127.0.0.1, keeps the site local (put a TLS
            reverse proxy in front to open it to a network; see ``docs/evaluation.md``).
        port: TCP port (0 or ``None`` lets Gradio pick a free one).
        block: wait until interrupted; ``False`` returns the running app.
        throttle: the login throttle (default: 5 failures per account, 20 per address, 15 minutes).
        max_body: largest request body in bytes (413 above it); also Gradio's ``max_file_size``.
        hash_workers: password hashes computed at once (128 MiB each).
        launch_kwargs: passed to :meth:`gradio.Blocks.launch`.
    """
    from starlette.middleware import Middleware

    store = RatingStore(db, create=False)
    if not store.raters():
        raise RatingError(f"{db}: no rater accounts; create one with 'hicur rate add-rater'")
    demo = build_app(store)
    # a coroutine: gradio awaits it (its routes check inspect.iscoroutinefunction), though its annotation says sync
    auth: Any = make_auth(store.verify, throttle or LoginThrottle(), workers=hash_workers)
    app_kwargs = {"routes": api_routes(store), "middleware": [Middleware(RequestGuard, max_body=max_body)]}
    demo.launch(server_name=host, server_port=port or None, auth=auth, auth_message=AUTH_MESSAGE,
                show_error=False, max_file_size=max_body, app_kwargs=app_kwargs,
                prevent_thread_lock=not block, quiet=not block, footer_links=[], **launch_kwargs)
    return demo
