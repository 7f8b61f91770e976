"""One PNG of a local output's pictures, each above its prompt: `python examples/contact_sheet.py out/demo sheet.png`.

Made for small runs of small pictures (the README's picture of the demo); `latentmill report` is the
page for real runs.
"""

import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image, ImageDraw

COLUMNS, SCALE, LINES, LINE_HEIGHT, WRAP = 4, 2, 4, 11, 22


def contact_sheet(output: Path, dest: Path) -> None:
    rows = sorted(pq.read_table(output / "manifest").to_pylist(), key=lambda row: row["id"])
    pictures = [Image.open(output / "media" / Path(row["output_uri"]).name).convert("RGB") for row in rows]
    width, height = pictures[0].width * SCALE, pictures[0].height * SCALE
    cell = (width + 8, height + LINES * LINE_HEIGHT + 8)
    sheet = Image.new("RGB", (cell[0] * COLUMNS, cell[1] * -(-len(rows) // COLUMNS)), "white")
    pen = ImageDraw.Draw(sheet)
    for index, (row, picture) in enumerate(zip(rows, pictures)):
        x, y = index % COLUMNS * cell[0] + 4, index // COLUMNS * cell[1] + 4
        sheet.paste(picture.resize((width, height), Image.NEAREST), (x, y))
        for line, text in enumerate(textwrap.wrap(row["prompt"], WRAP)[:LINES]):
            pen.text((x, y + height + 2 + line * LINE_HEIGHT), text, fill="black")
    sheet.save(dest)


if __name__ == "__main__":
    contact_sheet(Path(sys.argv[1]), Path(sys.argv[2]))
