"""The unmanaged models: no table is created; the permissions are."""

from typing import ClassVar

from django.db import migrations, models


class Migration(migrations.Migration):  # type: ignore[misc]  # Django ships no type information
    initial = True
    dependencies: ClassVar[list[tuple[str, str]]] = []

    operations: ClassVar[list[migrations.operations.base.Operation]] = [
        migrations.CreateModel(
            name="DeadLetter",
            fields=[("id", models.CharField(max_length=64, primary_key=True, serialize=False))],
            options={
                "verbose_name": "dead letter",
                "verbose_name_plural": "dead letters",
                "db_table": "aevents_admin_no_table_dead_letter",
                "managed": False,
                "default_permissions": ("view", "change", "delete"),
            },
        ),
        migrations.CreateModel(
            name="Delivery",
            fields=[("id", models.CharField(max_length=64, primary_key=True, serialize=False))],
            options={
                "verbose_name": "delivery",
                "verbose_name_plural": "deliveries",
                "db_table": "aevents_admin_no_table_delivery",
                "managed": False,
                "default_permissions": ("view",),
            },
        ),
    ]
