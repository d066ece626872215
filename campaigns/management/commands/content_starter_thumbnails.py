"""Render every starter and screenshot it with headless Chromium: the gallery's thumbnails."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from PIL import Image

from campaigns.content.previews import design_preview
from campaigns.content.render import design_render
from campaigns.content.starters import STARTER_SLUGS, starter_design

_PLACEHOLDER = "https://starter-images.invalid"
STARTERS_DIR = Path(__file__).resolve().parents[2] / "static" / "campaigns" / "starters"


class Command(BaseCommand):
    help = "Screenshot the starter templates (English) into static/campaigns/starters/thumbs/."

    def add_arguments(self, parser):
        parser.add_argument("--language", default="en", choices=["en", "zh-Hans"])

    def handle(self, *args, language: str, **options):
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise CommandError("Needs Chromium (Debian: apt-get install chromium).")
        out = STARTERS_DIR / "thumbs"
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as work:
            for slug in STARTER_SLUGS:
                design = starter_design(slug=slug, language=language, image_base_url=_PLACEHOLDER)
                html = design_preview(rendered=design_render(design=design), subject="-")["html"]
                # The images from the files themselves: the screenshot needs no server.
                html = html.replace(_PLACEHOLDER, STARTERS_DIR.as_uri())
                page = Path(work) / f"{slug}.html"
                page.write_text(html, encoding="utf-8")
                shot = Path(work) / f"{slug}.png"
                subprocess.run(
                    [chromium, "--headless=new", "--no-sandbox", "--disable-gpu",
                     "--hide-scrollbars", "--allow-file-access-from-files",
                     "--window-size=600,800", f"--screenshot={shot}", page.as_uri()],
                    check=True, capture_output=True, timeout=60,
                )  # fmt: skip
                with Image.open(shot) as image:
                    image.convert("RGB").resize((300, 400), Image.LANCZOS).save(
                        out / f"{slug}.png", optimize=True
                    )
                self.stdout.write(f"{slug}: {out / (slug + '.png')}")
