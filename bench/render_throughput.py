"""Render + compose + serialize (+ DKIM) throughput per core, without Django.

.venv/bin/python bench/render_throughput.py [--count N] [--dkim none|rsa|ed25519]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from email.message import EmailMessage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mailkit.compose import Composer, MessageSpec, make_message_id  # noqa: E402
from mailkit.dkim import DkimSigner, generate_dkim_key  # noqa: E402
from mailkit.render import (  # noqa: E402
    TemplateSource,
    compile_templates,
    contact_context,
    render_content,
)

CSS = """
body { margin: 0; padding: 0; background: #f4f4f4; font-family: Helvetica, Arial, sans-serif; }
.wrapper { width: 100%; background: #f4f4f4; } .container { width: 600px; background: #ffffff; }
h1 { font-size: 24px; color: #222222; margin: 0 0 12px; } p { font-size: 15px; line-height: 22px;
color: #444444; } a { color: #0a66c2; } .button { background: #0a66c2; color: #ffffff;
padding: 12px 20px; border-radius: 4px; text-decoration: none; } .footer { font-size: 12px;
color: #888888; } td.product { padding: 8px; border-bottom: 1px solid #eeeeee; }
"""

PARAGRAPH = (
    "<p>Spring is here and so is our biggest sale of the season. Every order this week ships "
    "free, and members get early access to the new collection before anyone else.</p>\n"
)

HTML = (
    "<!DOCTYPE html><html><head><meta charset='utf-8'><style>" + CSS + "</style></head><body>"
    "<table class='wrapper'><tr><td><table class='container' align='center'><tr><td>"
    "<h1>Hello {{ first_name | default('friend') }}!</h1>"
    "<p>As a {{ tier | default('valued') }} member in {{ city or 'your city' }}, you have "
    "{{ points | number }} points, worth {{ (points * 0.01) | number(2) }} EUR.</p>"
    + PARAGRAPH
    * 8
    + "<p>Member since {{ signup | date('%d %B %Y', tz=tz) }}.</p>"
    "<p><a class='button' href='https://shop.example.com/sale?c={{ contact_id }}&utm=spring'>"
    "Shop the sale</a></p>"
    "<p class='footer'>You receive this because you subscribed as {{ email }}. "
    "<a href='{{ unsubscribe_url }}'>Unsubscribe</a> | <a href='{{ web_url }}'>View online</a>"
    "</p></td></tr></table></td></tr></table></body></html>"
)

HTML_WITH_TABLE_LOOP = HTML.replace(
    "<p>Member since",
    "<table>{% for p in products %}<tr><td class='product'>{{ p }}</td></tr>{% endfor %}</table>"
    "<p>Member since",
)

NAMES = ["Alice Martin", "张伟", "Bob Smith", "李娜", "Chloé Dubois", "王芳", "David Jones", "刘洋"]
CITIES = ["Paris", "北京", "London", "上海", "", "Berlin"]


def contacts(count: int):
    for i in range(count):
        name = NAMES[i % len(NAMES)]
        attributes = {
            "city": CITIES[i % len(CITIES)],
            "points": 1000 + i * 7,
            "tier": "gold" if i % 3 == 0 else "",
            "signup": f"2023-0{1 + i % 9}-1{i % 10}T10:00:00Z",
            "tz": "Asia/Shanghai" if i % 2 else "Europe/Paris",
            "contact_id": i,
            "products": ["Linen shirt", "Canvas bag", "运动鞋"],
        }
        yield f"user{i}@example.org", name, attributes


def run(count: int, signer: DkimSigner | None, html: str = HTML) -> tuple[float, int]:
    compiled = compile_templates(
        TemplateSource(
            subject="{{ first_name | default('Hi') }}, our spring sale starts now", html=html
        )
    )
    composer = Composer(
        MessageSpec(
            from_email="news@example.com",
            from_name="Example Shop 示例商店",
            reply_to="help@example.com",
            list_id="Newsletter <newsletter.42.example.com>",
            campaign_id=42,
        )
    )
    size = 0
    started = time.perf_counter()
    for i, (email, name, attributes) in enumerate(contacts(count)):
        context = contact_context(
            email=email,
            name=name,
            attributes=attributes,
            extra={
                "unsubscribe_url": f"https://example.com/u/{i:08x}signedtoken",
                "web_url": f"https://example.com/w/{i:08x}signedtoken",
            },
        )
        content = render_content(compiled, context)
        raw = composer.compose(
            to_email=email,
            to_name=name,
            content=content,
            message_id=make_message_id(domain="example.com", delivery_id=i),
            unsubscribe_url=f"https://example.com/u/{i:08x}signedtoken",
            unsubscribe_mailto="unsubscribe@example.com",
            delivery_reference=f"{i}.abcdefghijklmnop",
        )
        if signer is not None:
            raw = signer.sign(raw)
        size += len(raw)
    return time.perf_counter() - started, size // max(count, 1)


def stdlib_baseline(count: int) -> float:
    compiled = compile_templates(TemplateSource(subject="{{ first_name }}, spring sale", html=HTML))
    started = time.perf_counter()
    for email, name, attributes in contacts(count):
        content = render_content(
            compiled, contact_context(email=email, name=name, attributes=attributes)
        )
        message = EmailMessage()
        message["From"] = "Example Shop 示例商店 <news@example.com>"
        message["To"] = f"{name} <{email}>"
        message["Subject"] = content.subject
        message.set_content(content.text)
        message.add_alternative(content.html, subtype="html")
        message.as_bytes()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--dkim", choices=["none", "rsa", "ed25519"], action="append")
    args = parser.parse_args()
    modes = args.dkim or ["none", "rsa", "ed25519"]
    print(f"{args.count} messages per run, one process, one core")
    for mode in modes:
        signer = None
        if mode != "none":
            pem, _ = generate_dkim_key(algorithm=mode)
            signer = DkimSigner(domain="example.com", selector="s1", private_key_pem=pem)
        run(min(500, args.count), signer)  # warm up
        elapsed, size = run(args.count, signer)
        label = {"none": "no DKIM", "rsa": "RSA-2048", "ed25519": "Ed25519"}[mode]
        print(
            f"  {label:<28} {args.count / elapsed:8.0f} msg/s   {elapsed / args.count * 1000:.3f} ms/msg"
            f"   ~{size / 1024:.1f} KB/msg"
        )
    n = min(args.count, 2_000)
    elapsed, _ = run(n, None, HTML_WITH_TABLE_LOOP)
    print(
        f"  {'no DKIM, text per recipient*':<28} {n / elapsed:8.0f} msg/s   "
        f"{elapsed / n * 1000:.3f} ms/msg"
    )
    n = min(args.count, 500)
    elapsed = stdlib_baseline(n)
    print(
        f"  {'stdlib EmailMessage (base)':<28} {n / elapsed:8.0f} msg/s   {elapsed / n * 1000:.3f} ms/msg"
    )
    print("  * a {% for %} between table rows keeps inscriptis from converting the template once,")
    print("    so the text part is converted from each rendered HTML instead")


if __name__ == "__main__":
    main()
