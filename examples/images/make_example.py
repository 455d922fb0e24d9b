"""Draw examples/images/cat-on-lawn.png: a simple cartoon scene (sky, sun, tree, lawn, a grey cat).

Procedural and deterministic, so the example image has a known origin and licence (MIT, like textmask).
Run from anywhere: ``python examples/images/make_example.py``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

WIDTH, HEIGHT = 512, 384
HORIZON = 250


def draw() -> Image.Image:
    image = Image.new("RGB", (WIDTH, HEIGHT))
    pixels = ImageDraw.Draw(image)
    for y in range(HORIZON):  # sky: a vertical gradient
        t = y / HORIZON
        pixels.line([(0, y), (WIDTH, y)], fill=(int(110 + 80 * t), int(170 + 50 * t), int(235 + 15 * t)))
    for y in range(HORIZON, HEIGHT):  # lawn
        t = (y - HORIZON) / (HEIGHT - HORIZON)
        pixels.line([(0, y), (WIDTH, y)], fill=(int(70 + 30 * t), int(150 - 30 * t), int(60 - 20 * t)))
    pixels.ellipse([410, 30, 470, 90], fill=(255, 220, 90))  # sun
    pixels.ellipse([40, 70, 90, 95], fill=(250, 250, 255))  # cloud
    pixels.ellipse([70, 60, 130, 100], fill=(250, 250, 255))
    pixels.rectangle([60, 150, 80, 265], fill=(110, 75, 45))  # tree trunk
    pixels.ellipse([20, 80, 125, 185], fill=(40, 120, 50))  # tree crown

    grey, dark, pink = (120, 120, 125), (70, 70, 75), (230, 150, 160)
    pixels.ellipse([230, 230, 350, 330], fill=grey)  # body
    pixels.line([(345, 310), (385, 300), (400, 260)], fill=grey, width=12, joint="curve")  # tail
    pixels.ellipse([240, 160, 320, 240], fill=grey)  # head
    pixels.polygon([(245, 185), (250, 140), (275, 170)], fill=grey)  # ears
    pixels.polygon([(285, 170), (310, 140), (315, 185)], fill=grey)
    pixels.polygon([(252, 178), (254, 152), (268, 170)], fill=pink)
    pixels.polygon([(292, 170), (307, 152), (308, 178)], fill=pink)
    pixels.ellipse([258, 190, 270, 204], fill=(90, 170, 90))  # eyes
    pixels.ellipse([290, 190, 302, 204], fill=(90, 170, 90))
    pixels.ellipse([262, 193, 267, 203], fill=dark)
    pixels.ellipse([294, 193, 299, 203], fill=dark)
    pixels.polygon([(275, 212), (285, 212), (280, 218)], fill=pink)  # nose
    for side in (-1, 1):  # whiskers
        for dy in (-4, 2, 8):
            pixels.line([(280 + 8 * side, 216), (280 + 40 * side, 212 + dy)], fill=dark, width=1)
    pixels.ellipse([250, 310, 280, 332], fill=grey)  # paws
    pixels.ellipse([295, 310, 325, 332], fill=grey)
    for x in range(0, WIDTH, 7):  # grass blades in front
        height = 8 + (x * 37) % 11
        pixels.line([(x, HEIGHT), (x + 2, HEIGHT - height)], fill=(50, 125, 45), width=2)
    return image.filter(ImageFilter.SMOOTH)


if __name__ == "__main__":
    target = Path(__file__).with_name("cat-on-lawn.png")
    draw().save(target, optimize=True)
    print(f"wrote {target} ({target.stat().st_size / 1024:.0f} KB)")
