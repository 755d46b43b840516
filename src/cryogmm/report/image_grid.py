"""Grids of images with labels, written straight to PNG with Pillow (which matplotlib uses to
write its PNGs): for figures that hold only images and text this takes a tenth of the time of a
matplotlib figure, where every label is an object laid out and drawn in Python (~2 ms each).
Sizes follow the matplotlib figures of `report.plots` (110 dpi, font sizes in points).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cryogmm.io.mrc import atomic_output
from cryogmm.report.plots import PNG_OPTIONS, nice_length

DPI = 110
CELL_INCHES = (1.6, 1.75)  # width, height of one image with its title above and caption below
IMAGE_INCHES = 1.4  # the largest image side
HEADING_INCHES = 0.45


@dataclass(frozen=True)
class Cell:
    """One image of a grid: (h, w) values on their own grey scale (lowest black, highest white),
    row 0 at the bottom as `imshow(..., origin="lower")` shows it, a title above and a caption
    below."""

    image: np.ndarray
    title: str = ""
    caption: str = ""


def _points(size: float) -> int:
    return round(size * DPI / 72)


def grey_levels(image: np.ndarray) -> np.ndarray:
    """`image` as uint8 from its lowest (0) to its highest value (255), row 0 at the top."""
    image = np.asarray(image, dtype=np.float64)
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return np.round(255 * scaled[::-1]).astype(np.uint8)


def write_image_grid(path: str | os.PathLike, cells: list[Cell | None], columns: int, *, heading: str = "",
                     pixel_size_in_angstroms: float | None = None) -> list[str]:
    """Write `cells` row by row, `columns` to a row (None leaves a cell empty), under `heading`;
    with `pixel_size_in_angstroms` the first image gets a scale bar (`scale_bar` of report.plots).
    The PNG is written under a temporary name, then renamed. Returns the texts written."""
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    font_path = font_manager.findfont(font_manager.FontProperties())  # matplotlib's default font
    fonts = {size: ImageFont.truetype(font_path, _points(size)) for size in (6, 7, 9)}
    rows = -(-len(cells) // columns)
    cell_w, cell_h = round(CELL_INCHES[0] * DPI), round(CELL_INCHES[1] * DPI)
    lines = _wrap(heading, fonts[9], columns * cell_w - 20) if heading else []
    line_height = round(1.3 * _points(9))
    top = round(HEADING_INCHES * DPI) + (len(lines) - 1) * line_height if heading else round(0.1 * DPI)
    canvas = Image.new("RGB", (columns * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((canvas.width / 2, round(0.08 * DPI) + k * line_height), line, fill="black", font=fonts[9],
                  anchor="mt")
    texts = [heading] if heading else []
    size = max((max(c.image.shape) for c in cells if c is not None), default=1)
    scale = IMAGE_INCHES * DPI / size  # screen pixels per image pixel
    for i, cell in enumerate(cells):
        if cell is None:
            continue
        h, w = cell.image.shape
        picture = Image.fromarray(grey_levels(cell.image)).resize(
            (round(w * scale), round(h * scale)), Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS)
        x0 = (i % columns) * cell_w + (cell_w - picture.width) // 2
        y0 = top + (i // columns) * cell_h + round(0.2 * DPI) + (round(size * scale) - picture.height) // 2
        canvas.paste(picture, (x0, y0))
        centre = x0 + picture.width / 2
        for text, y, anchor, points in ((cell.title, y0 - 3, "md", 7), (cell.caption, y0 + picture.height + 3, "mt", 6)):
            if text:
                draw.text((centre, y), text, fill="black", font=fonts[points], anchor=anchor)
                texts.append(text)
        if pixel_size_in_angstroms is not None:
            texts.append(_scale_bar(draw, fonts[6], pixel_size_in_angstroms, w, scale, x0, y0 + picture.height))
            pixel_size_in_angstroms = None  # the first image only
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="png", **PNG_OPTIONS)
    return texts


def _wrap(text: str, font, width: float) -> list[str]:
    """`text` in lines of at most `width` pixels (a longer word keeps a line of its own)."""
    lines = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def _scale_bar(draw, font, pixel_size_in_angstroms: float, box: int, scale: float, left: float, bottom: float) -> str:
    """The bar of `report.plots.scale_bar` on an image whose lower left corner is at (left, bottom)."""
    length = nice_length(0.3 * box * pixel_size_in_angstroms)
    x0, y0 = left + 0.06 * box * scale, bottom - 0.07 * box * scale
    x1 = x0 + length / pixel_size_in_angstroms * scale
    draw.line([(x0, y0), (x1, y0)], fill="white", width=_points(2.5))
    label = f"{length:g} Å"
    draw.text(((x0 + x1) / 2, y0 - 0.04 * box * scale), label, fill="white", font=font, anchor="md")
    return label
