#!/usr/bin/env python
"""docs/examples/looks.jpg: test sample 3 in the lattice, varied and drawn looks, and a 672x672 hr sample with a
cluttered crop, each titled with its question and answer.

    .venv/bin/python scripts/looks_figure.py docs/examples/looks.jpg
"""

import sys

from PIL import Image, ImageDraw

from llava.data.synthetic import make_sample


def main(out: str) -> None:
    panels = [make_sample("test", 3, look=look) for look in ("lattice", "varied", "drawn")]
    hr = next(s for s in (make_sample("test", i, look="hr") for i in range(40))
              if s.size == (672, 672) and s.layout["cluttered_crops"])
    canvas = Image.new("RGB", (3 * 336 + 30 + 672, 30 + 672), "white")
    draw = ImageDraw.Draw(canvas)
    for i, sample in enumerate(panels):
        canvas.paste(sample.image, (i * 336, 30))
        draw.text((i * 336 + 6, 8), f"{sample.look}: {sample.question} {sample.answer}", fill=(0, 0, 0))
    canvas.paste(hr.image, (3 * 336 + 30, 30))
    draw.text((3 * 336 + 36, 8), f"hr (672x672, four 336-px crops): {hr.question} {hr.answer}", fill=(0, 0, 0))
    canvas.save(out, quality=85)


if __name__ == "__main__":
    main(sys.argv[1])
