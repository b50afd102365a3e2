"""A small real image set for `swarm demo`: the photographs scikit-image ships, with hand-written captions.

Everything loads offline from the installed scikit-image package (its `skimage/data` folder); an image that is missing
from the installed version is skipped. Horizontally flipped copies of the colour photographs bring the set to about
24 images. Files are written as a mix of PNG and JPEG (grayscale and RGBA kept as they are), so the demo's ingest
also exercises format and mode normalisation.
"""
from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageOps

from swarm.logs import get_logger

logger = get_logger(__name__)

# (file in skimage/data, name to write, caption, also write a mirrored copy)
DEMO_IMAGES = (
    ("astronaut.png", "astronaut", "a photograph of an astronaut in a white space suit in front of the american flag",
     True),
    ("coffee.png", "coffee", "a photograph of a cup of coffee on a saucer with a spoon, seen from above", True),
    ("chelsea.png", "chelsea", "a photograph of a tabby cat with green eyes looking to the side", True),
    ("rocket.jpg", "rocket", "a photograph of a rocket on its launch pad under a blue sky", True),
    ("motorcycle_left.png", "motorcycle", "a photograph of a red motorcycle parked in a cluttered workshop", True),
    ("hubble_deep_field.jpg", "hubble", "a telescope image of many small distant galaxies in deep black space", True),
    ("ihc.png", "tissue", "a microscope image of tissue stained brown and blue", True),
    ("retina.jpg", "retina", "a medical photograph of the retina of a human eye, orange with red blood vessels", True),
    ("color.png", "colorwheel", "a colour wheel with every hue around a white centre", True),
    ("camera.png", "cameraman", "a black and white photograph of a man in a coat with a camera on a tripod", True),
    ("coins.png", "coins", "a grayscale photograph of rows of old coins on a dark background", False),
    ("moon.png", "moon", "a grayscale photograph of the cratered surface of the moon", False),
    ("brick.png", "brick", "a grayscale photograph of a brick wall", False),
    ("grass.png", "grass", "a grayscale close-up photograph of blades of grass", False),
    ("gravel.png", "gravel", "a grayscale close-up photograph of gravel", False),
    ("clock_motion.png", "clock", "a blurred grayscale photograph of a clock on a wall", False),
    ("page.png", "page", "a scanned page of printed text with uneven lighting", False),
    ("logo.png", "logo", "the scikit-image logo, a snake around a microscope slide, on white", False),
)


def skimage_data_dir() -> Path | None:
    try:
        import skimage.data
    except ImportError:
        return None
    return Path(os.path.dirname(skimage.data.__file__))


def write_demo_folder(path: str | os.PathLike, *, limit: int | None = None) -> int:
    """Write the demo images and their `.txt` captions into `path`. Returns how many images were written."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = skimage_data_dir()
    if data_dir is None:
        logger.warning("scikit-image is not installed: no demo images")
        return 0
    written = 0
    for filename, name, caption, mirror in DEMO_IMAGES:
        try:
            with Image.open(data_dir / filename) as source:
                source.load()
                image = source.copy()
        except (OSError, ValueError) as e:
            logger.warning(f"skipping demo image {filename}: {e}")
            continue
        variants = [(name, image)]
        if mirror:
            variants.append((f"{name} mirrored", ImageOps.mirror(image)))
        for variant_name, variant in variants:
            # Alternate formats; JPEG cannot hold alpha, so RGBA images stay PNG.
            as_jpeg = (written % 2 == 1) and variant.mode in ("RGB", "L")
            target = out / f"{variant_name}.{'jpg' if as_jpeg else 'png'}"
            if as_jpeg:
                variant.save(target, format="JPEG", quality=92)
            else:
                variant.save(target, format="PNG")
            (out / f"{variant_name}.txt").write_text(caption + "\n", encoding="utf-8")
            written += 1
            if limit is not None and written >= limit:
                return written
    return written
