"""Default per-provider rate limits: conservative starting points, editable in the admin."""

from django.db import migrations

DEFAULTS = [
    ("Gmail", "gmail.com googlemail.com", 20),
    ("Outlook / Hotmail", "outlook.com hotmail.com live.com msn.com", 10),
    ("Yahoo / AOL", "yahoo.com ymail.com rocketmail.com aol.com", 10),
    ("QQ", "qq.com foxmail.com vip.qq.com", 5),
    ("NetEase 163 / 126", "163.com 126.com yeah.net vip.163.com", 5),
    ("Sina", "sina.com sina.cn vip.sina.com", 3),
]


def create(apps, schema_editor):
    DomainRateLimit = apps.get_model("delivery", "DomainRateLimit")
    for name, domains, rate in DEFAULTS:
        DomainRateLimit.objects.get_or_create(
            name=name, defaults={"domains": domains, "rate": rate, "period": "second"}
        )


def remove(apps, schema_editor):
    DomainRateLimit = apps.get_model("delivery", "DomainRateLimit")
    DomainRateLimit.objects.filter(name__in=[name for name, _, _ in DEFAULTS]).delete()


class Migration(migrations.Migration):
    dependencies = [("delivery", "0005_domain_rate_limits")]
    operations = [migrations.RunPython(create, remove)]
