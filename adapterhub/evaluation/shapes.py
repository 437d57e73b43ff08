"""A synthetic vision task the whole LLaVA pipeline can learn on a CPU in minutes.

64x64 pictures of one to three shapes of one colour and one kind (circle, square, triangle), one per
quadrant, with jittered sizes and offsets. Three splits, drawn with different seeds:

* ``shapes_captions`` (pretrain): "Two red circles at the top left and the bottom right."
* ``shapes_qa`` (finetune): what colour / how many / what shape, answered in one word
* ``shapes_heldout`` (evaluation): new pictures, the same three questions, ``kind`` colour / count / shape

Images are written once under the cache (``<home>/cache/shapes-v2``); records name them by absolute path.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (40, 70, 230), "yellow": (235, 200, 20),
           "purple": (140, 50, 180), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle")
QUADRANTS = {"top left": (0, 0), "top right": (32, 0), "bottom left": (0, 32), "bottom right": (32, 32)}
NUMBERS = {1: "one", 2: "two", 3: "three"}
SPLITS = {"shapes_captions": (1, 1200), "shapes_qa": (2, 600), "shapes_heldout": (3, 100)}
COLOUR_QUESTIONS = ("What colour is the shape?", "What color are the shapes?", "Which colour do you see?")
COUNT_QUESTIONS = ("How many shapes are there?", "How many shapes are in the picture?")
SHAPE_QUESTIONS = ("What shape is it?", "What kind of shape is in the image?")
VERSION = "shapes-v2"


def draw(colour: str, shape: str, where: list[str], rng: random.Random) -> Any:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (64, 64), (245, 245, 245))
    d = ImageDraw.Draw(img)
    for q in where:
        x0, y0 = QUADRANTS[q]
        r = rng.randint(11, 14)
        cx, cy = x0 + 16 + rng.randint(-2, 2), y0 + 16 + rng.randint(-2, 2)
        fill = COLOURS[colour]
        if shape == "circle":
            d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "square":
            d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def caption(colour: str, shape: str, where: list[str]) -> str:
    n = len(where)
    places = where[0] if n == 1 else ", ".join(where[:-1]) + " and the " + where[-1]
    return f"{NUMBERS[n].capitalize()} {colour} {shape}{'s' if n > 1 else ''} at the {places}."


def _pictures(split: str, folder: Path) -> list[dict[str, Any]]:
    seed, n = SPLITS[split]
    rng = random.Random(seed)
    out = []
    for i in range(n):
        colour, shape = rng.choice(sorted(COLOURS)), rng.choice(SHAPES)
        where = sorted(rng.sample(sorted(QUADRANTS), rng.randint(1, 3)), key=list(QUADRANTS).index)
        path = folder / split / f"{i:04d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.png")
            draw(colour, shape, where, rng).save(tmp)
            tmp.replace(path)
        else:
            draw(colour, shape, where, rng)  # keep the random stream the same
        out.append({"image": str(path), "colour": colour, "shape": shape, "where": where})
    return out


def shapes_records(split: str, folder: Path) -> list[dict[str, Any]]:
    """LLaVA JSON records of ``split`` (captions, QA) or held-out rows (image, question, answer, kind)."""
    if split not in SPLITS:
        raise KeyError(split)
    pics = _pictures(split, folder)
    if split == "shapes_captions":
        return [{"image": p["image"], "conversations": [
            {"from": "human", "value": "<image>\nPlease describe this picture."},
            {"from": "gpt", "value": caption(p["colour"], p["shape"], p["where"])}]} for p in pics]
    rng = random.Random(SPLITS[split][0] * 1000)
    rows = []
    for p in pics:
        answers = {"colour": (COLOUR_QUESTIONS, p["colour"].capitalize() + "."),
                   "count": (COUNT_QUESTIONS, NUMBERS[len(p["where"])].capitalize() + "."),
                   "shape": (SHAPE_QUESTIONS, p["shape"].capitalize() + ".")}
        for kind, (questions, answer) in answers.items():
            q = rng.choice(questions)
            if split == "shapes_heldout":
                rows.append({"image": p["image"], "question": q, "answer": answer, "kind": kind})
            else:
                rows.append({"image": p["image"], "conversations": [
                    {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": answer}]})
    return rows


def write_heldout(folder: Path) -> Path:
    """The held-out split as a JSON file (for ``eval.image_qa``)."""
    path = folder / "shapes_heldout.json"
    if not path.exists():  # written whole or not at all: a crash mid-write must not leave a file later runs trust
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(shapes_records("shapes_heldout", folder), indent=1))
        tmp.replace(path)
    return path
