"""Eight starter designs, each in English and Simplified Chinese, to build on in the editor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _

from campaigns.content.schema import SCHEMA_VERSION, design_validate

LANGUAGES = ("en", "zh-Hans")


@dataclass(frozen=True)
class Starter:
    slug: str
    name: Promise
    description: Promise


STARTERS = (
    Starter("newsletter", _("Newsletter"), _("Two columns of stories under a header image.")),
    Starter("promotion", _("Promotion"), _("A bold offer, a code and one button.")),
    Starter("launch", _("Product launch"), _("A new product: picture, three reasons, a button.")),
    Starter("event", _("Event invitation"), _("Date, place, agenda and a sign-up button.")),
    Starter("welcome", _("Welcome"), _("A warm hello and the first steps for a new contact.")),
    Starter("reengagement", _("Re-engagement"), _("Ask inactive contacts whether to stay.")),
    Starter("receipt", _("Receipt / notification"), _("An order summary or an account notice.")),
    Starter("letter", _("Plain letter"), _("One column of text, like a personal email.")),
)
STARTER_SLUGS = tuple(starter.slug for starter in STARTERS)


def _style(**style: Any) -> dict:
    return style


def _h(text: str, level: int = 1, **style: Any) -> dict:
    return {"type": "heading", "text": text, "level": level, "style": _style(**style)}


def _p(html: str, **style: Any) -> dict:
    return {"type": "text", "html": html, "style": _style(**style)}


def _img(src: str, alt: str, href: str = "", width: int = 0, **style: Any) -> dict:
    return {"type": "image", "src": src, "alt": alt, "href": href, "width": width, "style": style}


def _btn(label: str, href: str, **style: Any) -> dict:
    return {"type": "button", "label": label, "href": href, "style": _style(**style)}


def _section(*columns: list[dict], **extra: Any) -> dict:
    return {"columns": [{"blocks": blocks} for blocks in columns], **extra}


def _footer(zh: bool) -> dict:
    address = (
        "上海市浦东新区世纪大道 100 号 Skylark 公司"
        if zh
        else "Skylark Ltd, 100 Main Street, Springfield"
    )
    return _section(
        [
            {"type": "divider", "style": {}},
            {
                "type": "social",
                "links": [
                    {"network": "weibo" if zh else "x", "href": "https://example.com/social",
                     "label": "微博" if zh else "X"},
                    {"network": "web", "href": "https://example.com", "label": "官网" if zh else "Website"},
                ],
                "style": {},
            },
            {"type": "footer", "address": address, "webview_label": "在浏览器中查看" if zh else "View in your browser",
             "style": {}},
        ]
    )  # fmt: skip


# Texts of each starter: English first, then Chinese. {img} is the base URL of the images.
_COPY: dict[str, tuple[dict[str, str], dict[str, str]]] = {
    "newsletter": (
        {"pre": "This month: three stories worth your time", "title": "The monthly letter",
         "hello": 'Hello {{ first_name | default("there") }}, here is what happened this month.',
         "a": "Our spring update", "a_text": "New features, faster sending and a fresh look.",
         "b": "From the blog", "b_text": "Five ways to write subject lines people open.",
         "cta": "Read more"},
        {"pre": "本月精选：三篇值得一读的文章", "title": "月度通讯",
         "hello": '{{ first_name | default("朋友") }}，你好！这是本月的新鲜事。',
         "a": "春季更新", "a_text": "新功能上线，发送更快，界面焕然一新。",
         "b": "博客精选", "b_text": "五个让人忍不住打开的邮件标题写法。",
         "cta": "阅读全文"},
    ),
    "promotion": (
        {"pre": "30% off everything until Sunday", "title": "30% off, this weekend only",
         "hello": '{{ first_name | default("Friend") }}, treat yourself: use the code below at checkout.',
         "code": "SPRING30", "cta": "Shop now"},
        {"pre": "全场七折，周日截止", "title": "周末限时，全场七折",
         "hello": '{{ first_name | default("亲爱的顾客") }}，结账时输入下面的优惠码即可享受折扣。',
         "code": "SPRING30", "cta": "立即选购"},
    ),
    "launch": (
        {"pre": "Meet the new Skylark One", "title": "Meet Skylark One",
         "hello": "Built for the way you work, and ready today.",
         "r1": "Faster", "r1_text": "Twice the speed of the last model.",
         "r2": "Lighter", "r2_text": "Half the weight, all the power.",
         "r3": "Greener", "r3_text": "Made from recycled materials.", "cta": "Discover it"},
        {"pre": "全新 Skylark One 正式发布", "title": "全新 Skylark One",
         "hello": "为你的工作方式而生，今天起正式开售。",
         "r1": "更快", "r1_text": "速度是上一代的两倍。",
         "r2": "更轻", "r2_text": "重量减半，性能不减。",
         "r3": "更环保", "r3_text": "采用可回收材料制造。", "cta": "了解详情"},
    ),
    "event": (
        {"pre": "You are invited: Skylark Summit, 12 June", "title": "You are invited",
         "hello": 'Dear {{ first_name | default("guest") }}, join us for an afternoon of talks and tea.',
         "when": "<p><strong>When:</strong> 12 June, 14:00 to 18:00<br><strong>Where:</strong> Riverside Hall, Springfield</p>"
                 "<ul><li>14:00 Welcome</li><li>14:30 Talks</li><li>17:00 Tea and conversations</li></ul>",
         "cta": "Save my seat"},
        {"pre": "诚邀参加 Skylark 峰会（6 月 12 日）", "title": "诚挚邀请",
         "hello": '尊敬的{{ first_name | default("嘉宾") }}，诚邀您参加我们的分享会与下午茶。',
         "when": "<p><strong>时间：</strong>6 月 12 日 14:00–18:00<br><strong>地点：</strong>上海滨江会议中心</p>"
                 "<ul><li>14:00 签到欢迎</li><li>14:30 主题分享</li><li>17:00 下午茶交流</li></ul>",
         "cta": "立即报名"},
    ),
    "welcome": (
        {"pre": "Welcome aboard! Here is how to start", "title": "Welcome aboard",
         "hello": 'Hi {{ first_name | default("there") }}, thank you for joining us.',
         "steps": "<ol><li>Complete your profile</li><li>Pick the topics you like</li><li>Watch for our weekly letter</li></ol>",
         "cta": "Get started"},
        {"pre": "欢迎加入！三步快速上手", "title": "欢迎加入",
         "hello": '{{ first_name | default("你好") }}，感谢你的加入！',
         "steps": "<ol><li>完善个人资料</li><li>选择感兴趣的话题</li><li>留意我们每周的邮件</li></ol>",
         "cta": "开始使用"},
    ),
    "reengagement": (
        {"pre": "Should we keep writing to you?", "title": "We miss you",
         "hello": '{{ first_name | default("Hello") }}, it has been a while. Do you still want our emails?',
         "cta": "Yes, keep me subscribed", "no": "No thanks: you can unsubscribe below, no hard feelings."},
        {"pre": "还想继续收到我们的邮件吗？", "title": "好久不见",
         "hello": '{{ first_name | default("你好") }}，好久没有你的消息了。还想继续收到我们的邮件吗？',
         "cta": "是的，继续订阅", "no": "不想再收到？可以点击下方链接退订，我们理解。"},
    ),
    "receipt": (
        {"pre": "Your order is confirmed", "title": "Thank you for your order",
         "hello": 'Hi {{ first_name | default("there") }}, we have received your order and are preparing it.',
         "table": '<table width="100%" cellpadding="6" style="border-collapse:collapse;font-size:14px">'
                  '<tr><td style="border-bottom:1px solid #e5e7eb">Order</td><td align="right" style="border-bottom:1px solid #e5e7eb">{{ order_id | default("-") }}</td></tr>'
                  '<tr><td style="border-bottom:1px solid #e5e7eb">Total</td><td align="right" style="border-bottom:1px solid #e5e7eb">{{ order_total | default("-") }}</td></tr></table>',
         "cta": "View my order"},
        {"pre": "你的订单已确认", "title": "感谢你的订购",
         "hello": '{{ first_name | default("你好") }}，我们已收到你的订单，正在为你备货。',
         "table": '<table width="100%" cellpadding="6" style="border-collapse:collapse;font-size:14px">'
                  '<tr><td style="border-bottom:1px solid #e5e7eb">订单号</td><td align="right" style="border-bottom:1px solid #e5e7eb">{{ order_id | default("-") }}</td></tr>'
                  '<tr><td style="border-bottom:1px solid #e5e7eb">合计</td><td align="right" style="border-bottom:1px solid #e5e7eb">{{ order_total | default("-") }}</td></tr></table>',
         "cta": "查看订单"},
    ),
    "letter": (
        {"pre": "A short note from our founder",
         "body": '<p>Dear {{ first_name | default("friend") }},</p><p>I wanted to write to you personally to say thank you. '
                 "Your support this year made everything we built possible.</p><p>If you ever want to tell me what we could do better, "
                 'just reply to this email: I read every answer.</p><p>Warm regards,<br>Alex</p>'},
        {"pre": "创始人的一封短信",
         "body": '<p>亲爱的{{ first_name | default("朋友") }}：</p><p>想亲自写信感谢你。正是你这一年的支持，'
                 "让我们做成了这么多事情。</p><p>如果你有任何建议，直接回复这封邮件就好，每一封我都会认真读。</p><p>祝好！<br>Alex</p>"},
    ),
}  # fmt: skip


def _sections(slug: str, c: dict[str, str], img: str, zh: bool) -> list[dict]:
    site = "https://example.com"
    if slug == "newsletter":
        return [
            _section(
                [
                    _img(f"{img}/hero.png", c["title"], site, padding=[0, 0, 0, 0]),
                    _h(c["title"]),
                    _p(f"<p>{c['hello']}</p>"),
                ]
            ),
            _section(
                [
                    _img(f"{img}/photo.png", c["a"]),
                    _h(c["a"], 2),
                    _p(f"<p>{c['a_text']}</p>"),
                    _btn(c["cta"], f"{site}/a", align="left"),
                ],
                [
                    _img(f"{img}/photo.png", c["b"]),
                    _h(c["b"], 2),
                    _p(f"<p>{c['b_text']}</p>"),
                    _btn(c["cta"], f"{site}/b", align="left"),
                ],
            ),
        ]
    if slug == "promotion":
        return [
            _section(
                [
                    _h(c["title"], align="center", font_size=34, color="#b91c1c"),
                    _p(f"<p>{c['hello']}</p>", align="center"),
                    _h(c["code"], 2, align="center", font="mono", background="#fef3c7"),
                    _btn(c["cta"], f"{site}/sale", background="#b91c1c"),
                ]
            ),
        ]
    if slug == "launch":
        reasons = [
            [_h(c[f"r{i}"], 3, align="center"), _p(f"<p>{c[f'r{i}_text']}</p>", align="center")]
            for i in (1, 2, 3)
        ]
        return [
            _section(
                [
                    _img(f"{img}/product.png", c["title"], width=300),
                    _h(c["title"], align="center"),
                    _p(f"<p>{c['hello']}</p>", align="center"),
                ]
            ),
            _section(*reasons),
            _section([_btn(c["cta"], f"{site}/one")]),
        ]
    if slug == "event":
        return [
            _section(
                [
                    _img(f"{img}/event.png", c["title"], padding=[0, 0, 0, 0]),
                    _h(c["title"]),
                    _p(f"<p>{c['hello']}</p>"),
                    _p(c["when"]),
                    _btn(c["cta"], f"{site}/rsvp"),
                ]
            ),
        ]
    if slug == "welcome":
        return [
            _section(
                [
                    _h(c["title"], align="center"),
                    _p(f"<p>{c['hello']}</p>", align="center"),
                    {"type": "spacer", "height": 8, "style": {}},
                    _p(c["steps"]),
                    _btn(c["cta"], f"{site}/start"),
                ]
            ),
        ]
    if slug == "reengagement":
        return [
            _section(
                [
                    _h(c["title"], align="center"),
                    _p(f"<p>{c['hello']}</p>", align="center"),
                    _btn(c["cta"], f"{site}/stay"),
                    _p(f"<p>{c['no']}</p>", align="center", color="#6b7280"),
                ]
            ),
        ]
    if slug == "receipt":
        return [
            _section(
                [
                    _h(c["title"], 2),
                    _p(f"<p>{c['hello']}</p>"),
                    {"type": "html", "html": c["table"], "style": {}},
                    _btn(c["cta"], f"{site}/orders", align="left"),
                ]
            ),
        ]
    return [_section([_p(c["body"], font="serif", font_size=16)])]  # letter


def starter_design(*, slug: str, language: str, image_base_url: str) -> dict:
    """A validated starter design; its images are served from ``image_base_url``."""
    if slug not in _COPY or language not in LANGUAGES:
        raise KeyError(slug)
    zh = language == "zh-Hans"
    copy = _COPY[slug][1 if zh else 0]
    sections = _sections(slug, copy, image_base_url.rstrip("/"), zh)
    design = {
        "version": SCHEMA_VERSION,
        "settings": {
            "preheader": copy["pre"],
            "lang": language,
            "font": "serif" if slug == "letter" else "sans",
            "background": "#ffffff" if slug == "letter" else "#f4f4f5",
        },
        "sections": [*sections, _footer(zh)],
    }
    return design_validate(design)


def starter_subject(*, slug: str, language: str) -> str:
    copy = _COPY[slug][1 if language == "zh-Hans" else 0]
    return copy.get("title") or copy["pre"]
