"""Grids of images with labels, drawn straight to PNG with Pillow (which matplotlib uses to write
its PNGs): for figures that hold only images and text this takes a tenth of the time of a
matplotlib figure, where every label is an object laid out and drawn in Python (~2 ms each).
Sizes follow the matplotlib figures of `report.plots` (font sizes in points, 110 dpi).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from cryogmm.io.mrc import atomic_output
from cryogmm.report.plots import PNG_OPTIONS, nice_length

DOT_COLOR = (255, 127, 14, 178)  # matplotlib's tab:orange at alpha 0.7


@dataclass(frozen=True)
class Cell:
    """One image of a grid, row 0 at the bottom as `imshow(..., origin="lower")` shows it: (h, w)
    values on their own grey scale (lowest black, highest white) or (h, w, 3 or 4) RGB(A) in
    [0, 1] over white; a title above, a caption below, and optionally dots at `points` (2, N):
    x, y in image pixels from the lower left corner of the image (0 to w, 0 to h)."""

    image: np.ndarray
    title: str = ""
    caption: str = ""
    points: np.ndarray | None = None


def grey_levels(image: np.ndarray) -> np.ndarray:
    """`image` as uint8 from its lowest (0) to its highest value (255), row 0 at the top."""
    image = np.asarray(image, dtype=np.float64)
    low, high = float(image.min()), float(image.max())
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
    return np.round(255 * scaled[::-1]).astype(np.uint8)


def _rgb(image: np.ndarray) -> np.ndarray:
    """An (h, w, 3 or 4) image in [0, 1] as uint8 RGB over white, row 0 at the top."""
    image = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
    if image.shape[-1] == 4:
        alpha = image[..., 3:]
        image = image[..., :3] * alpha + (1.0 - alpha)
    return np.round(255 * image[::-1]).astype(np.uint8)


def image_grid(cells: list[Cell | None], columns: int, *, heading: str = "",
               pixel_size_in_angstroms: float | None = None, dpi: int = 110,
               cell_inches: tuple[float, float] = (1.6, 1.75), image_inches: float = 1.4, title_points: float = 7,
               smooth: bool = False, frame: bool = False, dot_points: float = 2.0):
    """`cells` row by row, `columns` to a row (None leaves a cell empty), under `heading`, as a
    Pillow image, and the texts written on it.

    Each cell is `cell_inches` (width, height), its largest image `image_inches` wide; images are
    enlarged pixel by pixel (`smooth`: bilinear), with a black `frame` if asked; dots are
    `dot_points` across. With `pixel_size_in_angstroms` the first image gets a scale bar (as
    `report.plots.scale_bar` draws it).
    """
    from matplotlib import font_manager
    from PIL import Image, ImageDraw, ImageFont

    def px(points: float) -> int:
        return max(round(points * dpi / 72), 1)

    font_path = font_manager.findfont(font_manager.FontProperties())  # matplotlib's default font
    font = {size: ImageFont.truetype(font_path, px(size)) for size in {6, title_points, 9}}
    cell_w, cell_h = round(cell_inches[0] * dpi), round(cell_inches[1] * dpi)
    lines = _wrap(heading, font[9], columns * cell_w - 20) if heading else []
    line_height = round(1.3 * px(9))
    top = round(0.45 * dpi) + (len(lines) - 1) * line_height if heading else round(0.1 * dpi)
    rows = -(-len(cells) // columns)
    canvas = Image.new("RGB", (columns * cell_w, top + rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((canvas.width / 2, round(0.08 * dpi) + k * line_height), line, fill="black", font=font[9],
                  anchor="mt")
    texts = [heading] if heading else []
    size = max((max(c.image.shape[:2]) for c in cells if c is not None), default=1)
    scale = image_inches * dpi / size  # canvas pixels per image pixel
    resample = Image.Resampling.BILINEAR if smooth else (
        Image.Resampling.NEAREST if scale >= 2 else Image.Resampling.LANCZOS)
    for i, cell in enumerate(cells):
        if cell is None:
            continue
        h, w = cell.image.shape[:2]
        pixels = grey_levels(cell.image) if cell.image.ndim == 2 else _rgb(cell.image)
        picture = Image.fromarray(pixels).resize((round(w * scale), round(h * scale)), resample)
        x0 = (i % columns) * cell_w + (cell_w - picture.width) // 2
        y0 = top + (i // columns) * cell_h + round(0.2 * dpi) + (round(size * scale) - picture.height) // 2
        canvas.paste(picture, (x0, y0))
        if cell.points is not None:
            _dots(canvas, cell.points, x0, y0, picture.width / w, picture.height / h, picture.size, px(dot_points) / 2)
            draw = ImageDraw.Draw(canvas)
        if frame:
            draw.rectangle((x0 - 1, y0 - 1, x0 + picture.width, y0 + picture.height), outline="black")
        centre = x0 + picture.width / 2
        for text, y, anchor, points in ((cell.title, y0 - 4, "md", title_points),
                                        (cell.caption, y0 + picture.height + 3, "mt", 6)):
            if text:
                draw.text((centre, y), text, fill="black", font=font[points], anchor=anchor)
                texts.append(text)
        if pixel_size_in_angstroms is not None:
            texts.append(_scale_bar(draw, font[6], pixel_size_in_angstroms, w, scale, x0, y0 + picture.height, px(2.5)))
            pixel_size_in_angstroms = None  # the first image only
    return canvas, texts


def write_image_grid(path: str | os.PathLike, cells: list[Cell | None], columns: int, **options) -> list[str]:
    """`image_grid` written to the PNG `path` (under a temporary name, then renamed); returns the
    texts written on it."""
    canvas, texts = image_grid(cells, columns, **options)
    with atomic_output(path) as tmp:
        canvas.save(tmp, format="png", **PNG_OPTIONS)
    return texts


def _dots(canvas, points: np.ndarray, x0: int, y0: int, sx: float, sy: float, size: tuple[int, int],
          radius: float) -> None:
    """Dots at `points` (2, N) in image pixels from the lower left corner, blended over `canvas`
    (the image's upper left corner at x0, y0; sx, sy canvas pixels per image pixel)."""
    from PIL import Image, ImageDraw

    x = np.asarray(points[0], dtype=float) * sx
    y = size[1] - np.asarray(points[1], dtype=float) * sy
    inside = (x >= 0) & (x <= size[0]) & (y >= 0) & (y <= size[1])
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for a, b in zip(x[inside], y[inside]):
        draw.ellipse((a - radius, b - radius, a + radius, b + radius), fill=DOT_COLOR)
    region = canvas.crop((x0, y0, x0 + size[0], y0 + size[1])).convert("RGBA")
    canvas.paste(Image.alpha_composite(region, layer).convert("RGB"), (x0, y0))


def _wrap(text: str, font, width: float) -> list[str]:
    """`text` in lines of at most `width` pixels (a longer word keeps a line of its own)."""
    lines = []
    for word in text.split(" "):
        if lines and font.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return lines


def _scale_bar(draw, font, pixel_size_in_angstroms: float, box: int, scale: float, left: float, bottom: float,
               thickness: int) -> str:
    """The bar of `report.plots.scale_bar` on an image whose lower left corner is at (left, bottom)."""
    length = nice_length(0.3 * box * pixel_size_in_angstroms)
    x0, y0 = left + 0.06 * box * scale, bottom - 0.07 * box * scale
    x1 = x0 + length / pixel_size_in_angstroms * scale
    draw.line([(x0, y0), (x1, y0)], fill="white", width=thickness)
    label = f"{length:g} Å"
    draw.text(((x0 + x1) / 2, y0 - 0.04 * box * scale), label, fill="white", font=font, anchor="md")
    return label
