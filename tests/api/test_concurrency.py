"""8 clients x 25 requests of mixed modes at once on loopback: nothing lost, no server error, and every saved
image's infotext is its own request's."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from PIL import Image

from webui.outputs import read_infotext

from .conftest import b64

CLIENTS, REQUESTS = 8, 25
SOURCE = Image.new("RGB", (64, 64), (30, 120, 200))
MASK = Image.new("L", (64, 64))
MASK.paste(255, (16, 16, 48, 48))


def one(url: str, client: int, n: int) -> dict:
    """One request of the client's n-th kind; returns what it asked and what came back."""
    tag, seed = f"client{client}-request{n}", client * 1000 + n
    common = {"prompt": f"a circle {tag}", "seed": seed, "width": 64, "height": 64, "steps": 2}
    kind = ("txt2img", "img2img", "inpaint", "native")[(client + n) % 4]
    if kind == "native":
        job = requests.post(f"{url}/api/v1/jobs", json={**common, "save": True}, timeout=60)
        if job.status_code != 202:
            return {"kind": kind, "tag": tag, "seed": seed, "status": job.status_code, "body": job.text}
        while True:
            status = requests.get(f"{url}/api/v1/jobs/{job.json()['id']}", timeout=60).json()
            if status["state"] in ("done", "failed", "interrupted"):
                return {"kind": kind, "tag": tag, "seed": seed, "status": 200 if status["state"] == "done" else 500,
                        "infotexts": status["infotexts"], "body": status}
            time.sleep(0.05)
    body = {**common, "save_images": True}
    if kind != "txt2img":
        body.update(init_images=[b64(SOURCE)], denoising_strength=0.5)
    if kind == "inpaint":
        body.update(mask=b64(MASK))
    response = requests.post(f"{url}/sdapi/v1/{'txt2img' if kind == 'txt2img' else 'img2img'}", json=body, timeout=120)
    infotexts = json.loads(response.json()["info"])["infotexts"] if response.status_code == 200 else []
    return {"kind": kind, "tag": tag, "seed": seed, "status": response.status_code, "infotexts": infotexts,
            "body": response.text[:300]}


def test_many_clients_at_once_lose_nothing_and_mix_nothing_up(local_app):
    url, root = local_app
    started = time.monotonic()
    with ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(lambda c=c: [one(url, c, n) for n in range(REQUESTS)]) for c in range(CLIENTS)]
        results = [r for f in futures for r in f.result()]
    elapsed = time.monotonic() - started
    assert len(results) == CLIENTS * REQUESTS
    failures = [r for r in results if r["status"] != 200]
    assert failures == [], failures[:3]
    for r in results:  # each answer is its own request's
        assert len(r["infotexts"]) == 1 and r["tag"] in r["infotexts"][0] and f"Seed: {r['seed']}," in r["infotexts"][0]
    saved = [p for p in (root / "outputs").rglob("*.png")]
    by_tag = {}
    for path in saved:
        text = read_infotext(path)
        tag = text.split("\n")[0].removeprefix("a circle ")
        by_tag.setdefault(tag, []).append((path, text))
    for r in results:  # every request's image saved once, its infotext its own (seed in the file name too)
        files = by_tag.get(r["tag"], [])
        assert len(files) == 1, (r["tag"], files)
        path, text = files[0]
        assert f"Seed: {r['seed']}," in text and path.name.endswith(f"-{r['seed']}.png")
    kinds = {r["kind"] for r in results}
    print(f"\n{len(results)} requests ({', '.join(sorted(kinds))}) from {CLIENTS} clients in {elapsed:.1f} s")
