"""Photo-like JPEGs for scripts/bench_thumbnails.sh, generated once and cached.

Each photo is 12 megapixels, JPEG quality 90 with 4:2:0 chroma (as cameras and Pillow write
them), 2.5-3.5 MB: a sky above a horizon, large smooth areas in a few related, muted hues,
soft-edged shapes (objects), a smooth light field (shade, vignetting), multi-scale grain in
some regions (foliage, gravel, fabric) but not in others (sky, walls), and sensor noise. So the
entropy-coded data, which a decoder must walk whatever the scale it decodes at, is as large as a
camera's, and neither flat colour (tiny files) nor pure noise (huge ones).

Orientation: like a camera held upright, every fifth photo (n % 5 == 2) is stored 4000x3000
with EXIF Orientation 6 (rotate 90 degrees clockwise to view, so 3000x4000 once oriented); one
in ten (n % 10 == 4) is stored 3000x4000 with Orientation 8, viewed as 4000x3000 (a camera held
the other way, stored portrait by the phone); one in ten (n % 10 == 9) is stored 3000x4000 with
Orientation 1. All carry Make, Model and DateTime tags.

The cache is `<dir>/v1/<n>.jpg`; a new version of this generator gets a new folder. Run as a
script to fill it: python thumbphotos.py DIR N.
"""

import colorsys
import io
import os
import random
import sys
import time

from PIL import Image, ImageChops, ImageDraw, ImageFilter

VERSION = "v1"
LANDSCAPE = (4000, 3000)
QUALITY = 90
ORIENTATION_TAG = 0x0112


def layout(n):
    """(stored size, EXIF orientation, oriented size) of photo n."""
    if n % 5 == 2:
        return LANDSCAPE, 6, LANDSCAPE[::-1]
    if n % 10 == 4:
        return LANDSCAPE[::-1], 8, LANDSCAPE
    if n % 10 == 9:
        return LANDSCAPE[::-1], 1, LANDSCAPE[::-1]
    return LANDSCAPE, 1, LANDSCAPE


def _colour(rng, hue, sat=(0.1, 0.6), val=(0.15, 0.9)):
    h = (hue + rng.uniform(-0.08, 0.08)) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, rng.uniform(*sat), rng.uniform(*val))
    return int(r * 255), int(g * 255), int(b * 255)


def _field(size, cells, pick, mode):
    """A smooth random field: a few random values, upscaled bicubically."""
    small = Image.new(mode, cells)
    small.putdata([pick() for _ in range(cells[0] * cells[1])])
    return small.resize(size, Image.BICUBIC)


def _grain(size, octaves):
    """Noise centred on 128, summed over several scales (a photo's detail spans scales)."""
    out = None
    for div, sigma in octaves:
        n = Image.effect_noise((max(1, size[0] // div), max(1, size[1] // div)), sigma)
        if div > 1:
            n = n.resize(size, Image.BICUBIC)
        out = n if out is None else ImageChops.add(out, n, 1.0, -128)
    return out


def _grey3(im):
    return Image.merge("RGB", (im, im, im))


def render(n):
    """The pixels of photo n as viewed (before orientation is undone for storage)."""
    (sw, sh), orientation, (w, h) = layout(n)
    # Seeded per photo; Pillow's effect_noise is not seedable, so only the grain differs from
    # one machine to the next (the layout and the sizes, which the benchmark checks, do not).
    rng = random.Random(n)
    size = (w, h)
    hues = [rng.random() for _ in range(3)]
    ground = _field(size, (rng.randint(3, 7), rng.randint(3, 6)), lambda: _colour(rng, rng.choice(hues)), "RGB")
    sky_top = _colour(rng, rng.uniform(0.5, 0.65), (0.2, 0.5), (0.6, 0.95))
    sky_low = _colour(rng, rng.uniform(0.5, 0.65), (0.05, 0.3), (0.75, 1.0))
    vertical = Image.linear_gradient("L").resize(size)
    sky = Image.composite(Image.new("RGB", size, sky_low), Image.new("RGB", size, sky_top), vertical)
    horizon = rng.uniform(0.2, 0.6)

    def edge(v):
        t = (v / 255 - horizon + 0.01) / 0.02
        return 0 if t <= 0 else 255 if t >= 1 else int(t * 255)

    hmask = Image.linear_gradient("L").resize((1, 256)).point(edge).resize(size, Image.BILINEAR)
    img = Image.composite(ground, sky, hmask)
    # Objects, drawn at half resolution and upscaled: soft edges, as through a lens.
    lw, lh = w // 2, h // 2
    obj = img.resize((lw, lh), Image.BILINEAR)
    d = ImageDraw.Draw(obj)
    for _ in range(rng.randint(10, 30)):
        c = _colour(rng, rng.choice(hues))
        x0, y0 = rng.randint(-200, lw), rng.randint(int(lh * horizon) - 300, lh)
        x1, y1 = x0 + rng.randint(40, 900), y0 + rng.randint(40, 700)
        k = rng.random()
        if k < 0.4:
            d.ellipse((x0, y0, x1, y1), fill=c)
        elif k < 0.85:
            d.polygon([(rng.randint(x0, x1), rng.randint(y0, y1)) for _ in range(rng.randint(3, 7))], fill=c)
        else:
            d.line((x0, y0, x1, y1), fill=c, width=rng.randint(3, 20))
    img = obj.filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 2.0))).resize(size, Image.BICUBIC)
    # Light: shade and vignetting.
    light = _field(size, (5, 4), lambda: rng.randint(170, 255), "L")
    img = ImageChops.multiply(img, _grey3(light))
    # Texture in some regions, much less in the sky.
    g = _grain(size, [(24, 30), (6, 22), (2, 14)])
    tex = ImageChops.add(img, _grey3(g), 1.0, -128)
    tmask = _field(size, (rng.randint(4, 9), rng.randint(3, 7)), lambda: rng.choice((0, 40, 120, 255)), "L")
    tmask = Image.composite(tmask, tmask.point(lambda v: v // 3), hmask)
    img = Image.composite(tex, img, tmask)
    # Sensor noise.
    s = Image.effect_noise(size, rng.uniform(2.5, 4.5))
    img = ImageChops.add(img, _grey3(s), 1.0, -128)
    # Stored as the camera stores it: orientation undone.
    if orientation == 6:
        img = img.transpose(Image.Transpose.ROTATE_90)  # viewing rotates it 90 degrees clockwise
    elif orientation == 8:
        img = img.transpose(Image.Transpose.ROTATE_270)
    assert img.size == (sw, sh), (n, img.size, (sw, sh))
    return img, orientation


def encode(n):
    img, orientation = render(n)
    exif = Image.Exif()
    exif[0x010F] = "Celeriac"  # Make
    exif[0x0110] = "Bench Camera 12MP"  # Model
    exif[0x0132] = f"2024:06:{1 + n % 28:02d} 12:{n % 60:02d}:00"  # DateTime
    exif[ORIENTATION_TAG] = orientation
    out = io.BytesIO()
    img.save(out, "JPEG", quality=QUALITY, exif=exif.tobytes())
    return out.getvalue()


def path(cache_dir, n):
    return os.path.join(cache_dir, VERSION, f"{n}.jpg")


def _make(job):
    cache_dir, n = job
    p = path(cache_dir, n)
    data = encode(n)
    tmp = f"{p}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, p)
    return n, len(data)


def ensure(cache_dir, count, log=print, processes=None):
    """Makes the photos 0..count-1 that the cache lacks; returns their paths."""
    os.makedirs(os.path.join(cache_dir, VERSION), exist_ok=True)
    missing = [n for n in range(count) if not os.path.exists(path(cache_dir, n))]
    if missing:
        log(f"generating {len(missing)} photo(s) of 12 MP into {os.path.join(cache_dir, VERSION)} (once; cached)")
        t0 = time.monotonic()
        procs = processes or len(os.sched_getaffinity(0))
        if procs > 1 and len(missing) > 1:
            import multiprocessing

            with multiprocessing.get_context("fork").Pool(procs) as pool:
                for i, _ in enumerate(pool.imap_unordered(_make, [(cache_dir, n) for n in missing]), 1):
                    if i % 20 == 0:
                        log(f"  {i}/{len(missing)} photos in {time.monotonic() - t0:.0f}s")
        else:
            for n in missing:
                _make((cache_dir, n))
        log(f"  generated {len(missing)} in {time.monotonic() - t0:.0f}s")
    return [path(cache_dir, n) for n in range(count)]


if __name__ == "__main__":
    ensure(sys.argv[1], int(sys.argv[2]))
