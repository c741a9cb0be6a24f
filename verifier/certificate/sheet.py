"""Every generation a witness made, kept small: one contact sheet per image for the report.

The sheet has one row per guidance scale (in the run's ``guidance_scales`` order) and one column per
seed (in the run's seed order); a scale that stopped at fewer seeds leaves its remaining cells white.
Tiles are the generation itself up to ``MAX_TILE`` pixels a side and shrunk (antialiased) beyond, so a
sheet's size grows with the seeds, not with the model's resolution (on the 32-pixel reference models,
32 tiles: 58-69 kB).
"""

from __future__ import annotations

import numpy as np

MAX_TILE = 96
LAYOUT = "row r holds guidance_scales[r]; column c holds seeds[c]; cells past a scale's generations are white"


def tile_size(resolution: int) -> int:
    """The side of one tile for generations of ``resolution`` pixels."""
    return min(resolution, MAX_TILE)


def thumbnail(image: np.ndarray, tile: int) -> np.ndarray:
    """A float RGB HWC image in [0, 1] as a ``tile``-pixel uint8 square (non-finite pixels become black)."""
    pixels = (np.clip(np.nan_to_num(image), 0, 1) * 255 + 0.5).astype(np.uint8)
    if pixels.shape[0] == tile and pixels.shape[1] == tile:
        return pixels
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((tile, tile), Image.Resampling.LANCZOS))


def contact_sheet(tiles: dict[float, list[np.ndarray]], scales: list[float], tile: int) -> np.ndarray:
    """The sheet's pixels (uint8 HWC): row ``r`` holds scale ``scales[r]``'s tiles in seed order."""
    columns = max((len(tiles.get(scale, [])) for scale in scales), default=0)
    sheet = np.full((tile * len(scales), tile * max(columns, 1), 3), 255, dtype=np.uint8)
    for row, scale in enumerate(scales):
        for column, pixels in enumerate(tiles.get(scale, [])):
            sheet_tile(sheet, row, column, tile)[...] = pixels
    return sheet


def sheet_png(tiles: dict[float, list[np.ndarray]], scales: list[float], tile: int) -> bytes:
    """The contact sheet as PNG bytes."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(contact_sheet(tiles, scales, tile)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def sheet_tile(sheet: np.ndarray, row: int, column: int, tile: int) -> np.ndarray:
    """One tile of a sheet's pixels (a view: assigning to it writes the sheet)."""
    return sheet[row * tile:(row + 1) * tile, column * tile:(column + 1) * tile]
