"""CLEVR-like scenes → formal = the object list with bounding boxes (what Grounding DINO + a captioner would give).

Objects have CLEVR's attributes (shape cube/sphere/cylinder, 8 colors, size small/large, material rubber/metal) on a
ground plane seen in perspective; drawn back to front with simple shading. These are the GRPO prompts (the paper ran
RL on CLEVR-CoGenT counting): counting (JHS), counting after removing objects (HS), spatial counting and attribute
queries about a referred object (College), count comparisons and same-attribute counts (Social Test).
Spatial words: "left of" = smaller bbox-centre x; "in front of" = larger bbox bottom y (nearer the camera).
"""

from __future__ import annotations

from PIL import Image, ImageDraw

from r1ov_jax.data.formalize.common import finish, numeric_distractors, resolve_level, rng_for
from r1ov_jax.data.record import Record

KIND = "scene"
W, H = 360, 240
SHAPES = ("cube", "sphere", "cylinder")
PLURAL = {"cube": "cubes", "sphere": "spheres", "cylinder": "cylinders"}
COLORS = {
    "gray": (87, 87, 87),
    "red": (173, 35, 35),
    "blue": (42, 75, 215),
    "green": (29, 105, 20),
    "brown": (129, 74, 25),
    "purple": (129, 38, 192),
    "cyan": (41, 208, 208),
    "yellow": (255, 238, 51),
}
ATTRS = ("size", "color", "material", "shape")


def _shade(rgb, f: float):
    return tuple(max(0, min(255, int(c * f))) for c in rgb)


def _footprint(o) -> tuple[float, float, float]:
    """(centre x, base y, half width) in pixels from ground coordinates (gx in [0,1] left→right, gy far→near)."""
    scale = 0.55 + 0.6 * o["gy"]
    half = (26 if o["size"] == "large" else 15) * scale
    x = 30 + o["gx"] * (W - 60)
    y = 95 + o["gy"] * (H - 110)
    return x, y, half


def _bbox(o) -> list[int]:
    x, y, h = _footprint(o)
    top = {"cube": y - 2.3 * h, "sphere": y - 2 * h, "cylinder": y - 2.3 * h}[o["shape"]]
    right = x + h * (1.35 if o["shape"] == "cube" else 1.0)
    return [round(x - h), round(top), round(right), round(y)]


def _draw_obj(d: ImageDraw.ImageDraw, o) -> None:
    x, y, h = _footprint(o)
    base = COLORS[o["color"]]
    metal = o["material"] == "metal"
    d.ellipse([x - h * 1.1, y - h * 0.25, x + h * 1.2, y + h * 0.15], fill=(150, 150, 150))  # shadow
    if o["shape"] == "sphere":
        for k in range(6):  # darker rim → lighter core, offset towards the light (top left)
            rr = h * (1 - k * 0.14)
            off = h * 0.07 * k
            d.ellipse(
                [x - rr - off, y - h - rr - off, x + rr - off, y - h + rr - off],
                fill=_shade(base, 0.7 + 0.09 * k),
            )
        if metal:
            d.ellipse([x - h * 0.55, y - h * 1.55, x - h * 0.25, y - h * 1.25], fill=(250, 250, 250))
    elif o["shape"] == "cube":
        s, dx, dy = 2 * h, 0.35 * h, 0.3 * h
        x0, y1 = x - h, y
        d.rectangle([x0, y1 - s, x0 + s, y1], fill=_shade(base, 0.95))
        d.polygon(
            [(x0, y1 - s), (x0 + dx, y1 - s - dy), (x0 + s + dx, y1 - s - dy), (x0 + s, y1 - s)],
            fill=_shade(base, 1.2),
        )
        d.polygon(
            [(x0 + s, y1 - s), (x0 + s + dx, y1 - s - dy), (x0 + s + dx, y1 - dy), (x0 + s, y1)],
            fill=_shade(base, 0.7),
        )
        if metal:
            d.line([(x0 + 3, y1 - s + 3), (x0 + s * 0.6, y1 - s + 3)], fill=(245, 245, 245), width=2)
    else:
        top, e = y - 2 * h, 0.3 * h
        d.ellipse([x - h, y - e, x + h, y + e], fill=_shade(base, 0.75))
        d.rectangle([x - h, top, x + h, y], fill=_shade(base, 0.9))
        d.ellipse([x - h, top - e, x + h, top + e], fill=_shade(base, 1.2))
        if metal:
            d.line([(x - h * 0.5, top + e), (x - h * 0.5, y - 2)], fill=(245, 245, 245), width=2)


def _desc(o) -> str:
    return f"{o['size']} {o['color']} {o['material']} {o['shape']}"


def _fits(box, cx, boxes, cxs) -> bool:
    """Centres well apart (unambiguous left/right and front/behind) and at most 25% of the smaller box hidden."""
    for b, c in zip(boxes, cxs):
        if abs(cx - c) < 8 or abs(box[3] - b[3]) < 4:
            return False
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        small = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
        if iw > 0 and ih > 0 and iw * ih > 0.25 * small:
            return False
    return True


def _sample(rng, n: int) -> list[dict]:
    """n objects with distinct (color, shape), placed one at a time (rejection per object); if a scene cannot be
    completed after a few restarts, one object fewer (still deterministic in the rng)."""
    while True:
        for _ in range(20):
            combos = rng.sample([(c, s) for c in COLORS for s in SHAPES], n)
            objs, boxes, cxs = [], [], []
            for c, s in combos:
                o = {
                    "shape": s,
                    "color": c,
                    "size": rng.choice(["small", "large"]),
                    "material": rng.choice(["rubber", "metal"]),
                }
                for _ in range(60):
                    o["gx"], o["gy"] = rng.random(), rng.random()
                    box = _bbox(o)
                    cx = (box[0] + box[2]) / 2
                    if _fits(box, cx, boxes, cxs):
                        objs.append(o)
                        boxes.append(box)
                        cxs.append(cx)
                        break
                else:
                    break
            if len(objs) == n:
                return objs
        n -= 1


def _matches(o, f: dict) -> bool:
    return all(o[k] == v for k, v in f.items())


def _phrase(f: dict, plural: bool) -> str:
    words = [f[k] for k in ("size", "color", "material") if k in f]
    noun = f.get("shape", "object")
    noun = PLURAL.get(noun, "objects") if plural else noun
    return " ".join(words + [noun])


def _random_filter(rng, objs, keys) -> dict:
    o = rng.choice(objs)
    ks = rng.sample(keys, rng.randint(1, min(2, len(keys))))
    return {k: o[k] for k in ks}


def generate(seed: int, level: int | str | None = None) -> Record:
    rng = rng_for(KIND, seed)
    lv = resolve_level(level, rng)
    n = rng.randint(3, 5) if lv == 0 else rng.randint(4, 8)
    # listed left to right, as a detector's output is read: the i-th entry is the i-th object from the left
    objs = sorted(_sample(rng, n), key=lambda o: sum(_bbox(o)[::2]))
    n = len(objs)
    boxes = [_bbox(o) for o in objs]
    for o, b in zip(objs, boxes):
        o["bbox"] = b
    if lv == 0:
        op = rng.choice(["count_all", "count"])
    elif lv == 1:
        op = "count_after_remove"
    elif lv == 2:
        op = rng.choice(["count_rel", "attr"])
    else:
        op = rng.choice(["compare", "same_attr"])
    if op == "count_all":
        gold, query = str(n), {"op": "count", "filter": {}}
        question = "How many objects are there in the image?"
    elif op == "count":
        f = _random_filter(rng, objs, ["color", "shape", "size", "material"])
        gold, query = str(sum(_matches(o, f) for o in objs)), {"op": "count", "filter": f}
        question = f"How many {_phrase(f, True)} are there?"
    elif op == "count_after_remove":
        f = _random_filter(rng, objs, ["color", "shape", "size", "material"])
        gold = str(sum(not _matches(o, f) for o in objs))
        query = {"op": "count_after_remove", "filter": f}
        question = f"Subtract all {_phrase(f, True)}. How many objects are left?"
    elif op == "count_rel":
        ref = rng.choice(objs)
        rel = rng.choice(["left", "right", "front", "behind"])
        f = _random_filter(rng, objs, ["shape", "size", "material"]) if rng.random() < 0.5 else {}
        bx = ref["bbox"]

        def related(o) -> bool:
            b = o["bbox"]
            return {
                "left": (b[0] + b[2]) < (bx[0] + bx[2]),
                "right": (b[0] + b[2]) > (bx[0] + bx[2]),
                "front": b[3] > bx[3],
                "behind": b[3] < bx[3],
            }[rel]

        gold = str(sum(related(o) and _matches(o, f) for o in objs if o is not ref))
        where = {
            "left": "to the left of",
            "right": "to the right of",
            "front": "in front of",
            "behind": "behind",
        }[rel]
        query = {
            "op": "count_rel",
            "rel": rel,
            "ref": {"color": ref["color"], "shape": ref["shape"]},
            "filter": f,
        }
        question = f"How many {_phrase(f, True)} are {where} the {ref['color']} {ref['shape']}?"
    elif op == "attr":
        ref = rng.choice(objs)
        attr = rng.choice(["size", "material"])
        gold = ref[attr]
        query = {"op": "attr", "ref": {"color": ref["color"], "shape": ref["shape"]}, "attr": attr}
        question = f"What is the {attr} of the {ref['color']} {ref['shape']}?" + (
            " Answer small or large." if attr == "size" else " Answer rubber or metal."
        )
    elif op == "compare":
        for _ in range(50):
            a, b = rng.sample(SHAPES, 2) if rng.random() < 0.5 else rng.sample(list(COLORS), 2)
            key = "shape" if a in SHAPES else "color"
            ca, cb = sum(o[key] == a for o in objs), sum(o[key] == b for o in objs)
            if ca != cb:
                break
        fa, fb = {key: a}, {key: b}
        gold = "Yes" if ca > cb else "No"
        query = {"op": "compare", "a": fa, "b": fb}
        question = f"Are there more {_phrase(fa, True)} than {_phrase(fb, True)}? Answer Yes or No."
    else:
        ref = rng.choice(objs)
        attr = rng.choice(["size", "material"])
        gold = str(sum(o[attr] == ref[attr] for o in objs if o is not ref))
        query = {"op": "same_attr", "ref": {"color": ref["color"], "shape": ref["shape"]}, "attr": attr}
        question = f"How many other objects have the same {attr} as the {ref['color']} {ref['shape']}?"
    img = Image.new("RGB", (W, H), (205, 205, 200))
    d = ImageDraw.Draw(img)
    for i in range(8):  # ground gets lighter towards the camera
        y0 = 60 + i * (H - 60) // 8
        d.rectangle([0, y0, W, y0 + (H - 60) // 8 + 1], fill=_shade((190, 190, 185), 0.92 + 0.02 * i))
    for o in sorted(objs, key=lambda o: o["bbox"][3]):  # back to front
        _draw_obj(d, o)
    formal = (
        f"Scene with {n} objects (image {W}x{H} px; bbox = [x0, y0, x1, y1], x to the right, y down).\n"
        + "\n".join(
            f"{i + 1}. {_desc(o)}, bbox [{', '.join(map(str, o['bbox']))}]" for i, o in enumerate(objs)
        )
        + "\n"
    )
    dis = numeric_distractors(rng, gold) if gold.isdigit() else None
    return finish(KIND, seed, lv, "Deduction", img, formal, question, gold, query, rng, dis)
