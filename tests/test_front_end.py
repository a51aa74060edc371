"""One front end for "a model and a clip": the app resolves and uses the settings `mevqa ask` and `chat`
use, an adapter's recorded ones included; one hierarchical prompt for eval, the agent chain and training."""

from __future__ import annotations

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import make_adapter

from mevqa.cli import build_parser
from mevqa.cli.app import app_settings
from mevqa.cli.ask import _settings as ask_settings
from mevqa.prompts import Q_COARSE

# what an adapter trained with non-default frame settings records in its mevqa.yaml
RECIPES = {
    "flow + onset/apex/offset, TV-L1": {
        "frames": 5,
        "input": "flow",
        "flow_with_oao": True,
        "flow_method": "tvl1",
    },
    "key frames": {"frames": 5, "input": "frames", "sampling": "keyframes"},
}


class Recording:
    """A real backend that keeps the requests it was sent (what the app asked, as the model received it)."""

    def __init__(self, backend):
        self.backend, self.requests = backend, []

    def generate(self, requests, gen):
        self.requests += requests
        return self.backend.generate(requests, gen)

    def stream(self, request, gen):
        self.requests.append(request)
        yield from self.backend.stream(request, gen)

    def __getattr__(self, name):
        return getattr(self.backend, name)


def parsed(*argv):
    return build_parser().parse_args([str(a) for a in argv])


def as_asked(app_cfg):
    """The app's settings less its own (the upload limits): what `mevqa ask` would hold."""
    from mevqa.config import AskConfig

    return AskConfig(**{f.name: getattr(app_cfg, f.name) for f in dataclasses.fields(AskConfig)})


@pytest.mark.parametrize("recorded", list(RECIPES.values()), ids=list(RECIPES))
def test_the_app_asks_an_adapter_as_ask_does(recorded, tiny_qwen, qwen, synthme, tmp_path, monkeypatch):
    """The app rebuilt the frame settings from its two widgets: an adapter trained with flow_with_oao,
    keyframes sampling or TV-L1 flow was asked otherwise than by `mevqa ask`, and the frame slider started
    at 8 whatever the adapter recorded."""
    from mevqa.app import Demo, build_demo
    from mevqa.config import UploadLimits
    from mevqa.inputs import load_clip, visual_parts

    adapter = make_adapter(tiny_qwen, tmp_path / "lora", recipe={"frames": recorded, "prompt": "labels"})
    clip = synthme / "frames" / "s01_c01"
    flags = ["--model", tiny_qwen, "--adapter", adapter, "--max-new-tokens", "4"]
    ask = ask_settings(parsed("ask", clip, Q_COARSE, *flags), "ask")
    cfg, notice = app_settings(parsed("app", *flags))
    assert as_asked(cfg) == ask and notice is None  # the same settings, the adapter's recorded ones included

    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # build_demo points it at its folder
    page = build_demo(cfg, UploadLimits(), tmp_path / "work")
    widgets = {getattr(b, "label", None): getattr(b, "value", None) for b in page.blocks.values()}
    assert (widgets["frames"], widgets["input mode"], widgets["prompt strategy"]) == (
        5,
        recorded["input"],
        "labels",
    )

    backend = Recording(qwen)
    demo = Demo(backend, cfg, UploadLimits(), tmp_path)
    ctx, *_ = demo.load(None, str(clip), widgets["input mode"], widgets["frames"], "none", None)
    *_, (history, _) = demo.respond(
        Q_COARSE, [], ctx, widgets["input mode"], widgets["frames"], "labels", False
    )
    assert history[-1]["content"] and not history[-1]["content"].startswith("error")
    (asked,) = backend.requests
    want = visual_parts(load_clip(str(clip), ask.frames), ask.frames)  # what `mevqa ask` sends
    assert list(asked.messages[0].parts[:-1]) == want
    assert asked.messages[0].parts[-1].startswith(Q_COARSE + " Answer with one of:")  # its prompt: labels


def test_the_app_traces_a_served_adapter_name_to_its_folder(tiny_qwen, tmp_path):
    """With a served model, `--adapter NAME` is the name the server lists; the app found no recorded
    settings for it (it read `recorded_settings(NAME)`), where ask and eval trace it to its folder."""
    adapter = make_adapter(tiny_qwen, tmp_path / "lora", recipe={"frames": RECIPES["key frames"]})
    listing = {
        "data": [{"id": "base", "root": "base"}, {"id": "mine", "root": str(adapter), "parent": "base"}]
    }

    class Models(BaseHTTPRequestHandler):  # vLLM's GET /v1/models, as `mevqa serve` answers it
        def do_GET(self):
            body = json.dumps(listing).encode()
            self.send_response(200 if self.path == "/v1/models" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Models)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        flags = ["--model", "base", "--backend", "openai", "--base-url", url, "--adapter", "mine"]
        cfg, _ = app_settings(parsed("app", *flags))
        ask = ask_settings(parsed("ask", "clip", Q_COARSE, *flags), "ask")
        implied, _ = app_settings(parsed("app", *[f for f in flags if f not in ("--backend", "openai")]))
    finally:
        server.shutdown()
    assert (cfg.frames.frames, cfg.frames.sampling) == (5, "keyframes") and as_asked(cfg) == ask
    assert implied == cfg  # `--base-url` alone means a served model, as `python app.py --base-url` did


def test_training_is_given_the_coarse_hint_eval_gives(synthme):
    """Hierarchical training read the hint from FINE_TO_COARSE[row answer]: only fine questions got one,
    while eval gives it to fine and combined questions. Now each question of a clip is trained with the
    text eval asks it with, given the clip's gold coarse class."""
    from mevqa.config import EvalConfig, from_dict
    from mevqa.data.megc import clip_key, read_jsonl
    from mevqa.evaluation.runner import Answerer
    from mevqa.inputs import ClipParts
    from mevqa.prompts import classify
    from mevqa.train.data import QADataset

    rows = read_jsonl(synthme / "train.jsonl")
    clip = [r for r in rows if clip_key(r) == clip_key(rows[0])]
    gold = next(r["answer"] for r in clip if classify(r["question"])[0] == "coarse")
    values = {"data": "-", "out": "-", "model": "m", "root": str(synthme), "frames": {"frames": 2}}
    cfg = from_dict(EvalConfig, {**values, "prompt": "hierarchical"}, "test")
    asked = [req.messages[0].text() for req in Answerer(cfg, None).requests(clip, gold)]
    dataset = QADataset(clip, ClipParts(cfg.root, cfg.frames), "hierarchical")
    trained = [dataset[i][0].text() for i in range(len(clip))]
    assert trained == asked
    types = [classify(r["question"])[0] for r in clip]
    assert {"fine", "combined"} <= set(types)
    for qtype in ("fine", "combined"):
        assert f"The coarse expression class is {gold}." in trained[types.index(qtype)], qtype


def test_the_agent_chain_asks_the_hierarchical_texts(qwen, synthme):
    """The chain's steps are the hierarchical strategy's own texts: stage 1 as eval asks it, then the fine
    question narrowed to the class the model answered."""
    from test_agent import GEN, annotated, ctx_for

    from mevqa.agent import hierarchical
    from mevqa.prompts import Q_FINE, render_question

    r = hierarchical(qwen, ctx_for(synthme, annotated(synthme)[0]), GEN)
    coarse, fine, _ = (s["question"] for s in r["steps"])
    assert coarse == render_question(Q_COARSE, "hierarchical")
    assert fine == render_question(Q_FINE, "hierarchical", r["coarse"])


def test_a_fractional_upload_limit_is_shown_and_kept(tiny_qwen, tmp_path, monkeypatch):
    """`--max-upload-mb 0.4` read "≤ 0 MB" on the page (and Gradio enforced 409 KiB); it says 0.4 MB
    and the app's own check takes 0.4 MiB."""
    from mevqa.app import build_demo, unpack_upload
    from mevqa.config import AskConfig, ModelSpec, UploadLimits
    from mevqa.errors import InputError

    limits = UploadLimits(max_upload_mb=0.4)
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))
    page = build_demo(AskConfig(model=ModelSpec(str(tiny_qwen))), limits, tmp_path / "work")
    labels = [getattr(b, "label", None) or "" for b in page.blocks.values()]
    assert any("(≤ 0.4 MB)" in label for label in labels), labels
    big = tmp_path / "big.mp4"
    big.write_bytes(b"\0" * int(0.45 * 2**20))
    with pytest.raises(InputError, match="over the 0.4 MB upload limit"):
        unpack_upload(str(big), tmp_path / "w", limits)
