"""The synthetic shapes task: what each record says matches its picture, and held-out pictures are new."""

from __future__ import annotations

import hashlib

from PIL import Image

from adapterhub.evaluation.shapes import COLOURS, shapes_records


def test_records_describe_their_pictures_and_held_out_pictures_are_new(tmp_path, monkeypatch):
    import adapterhub.evaluation.shapes as shapes

    monkeypatch.setitem(shapes.SPLITS, "shapes_captions", (1, 30))
    monkeypatch.setitem(shapes.SPLITS, "shapes_heldout", (3, 30))
    captions = shapes_records("shapes_captions", tmp_path)
    held = shapes_records("shapes_heldout", tmp_path)
    assert len(captions) == 30 and len(held) == 90
    for r in held[::3]:  # the colour answer is the colour of the picture's non-background pixels
        pixels = [p for p in Image.open(r["image"]).convert("RGB").getdata() if p != (245, 245, 245)]
        top = max(set(pixels), key=pixels.count)
        assert r["kind"] == "colour" and COLOURS[r["answer"].rstrip(".").lower()] == top
    for r in captions:
        answer = r["conversations"][1]["value"]
        pixels = set(Image.open(r["image"]).convert("RGB").getdata())
        assert any(COLOURS[c] in pixels for c in COLOURS if f" {c} " in answer)
    digest = {hashlib.sha256(open(r["image"], "rb").read()).hexdigest() for r in captions}
    assert not digest & {hashlib.sha256(open(r["image"], "rb").read()).hexdigest() for r in held}
    assert shapes_records("shapes_heldout", tmp_path) == held  # deterministic, and reuses the written files
