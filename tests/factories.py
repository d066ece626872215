"""factory_boy factories shared by the test suite (one plain module; add yours below)."""

from __future__ import annotations

import factory

from contacts.models import Contact, ContactList, ContactStatus, Subscription, SubscriptionStatus


class ContactListFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ContactList
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"List {n}")


class ContactFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Contact

    email = factory.Sequence(lambda n: f"contact{n}@example.com")
    name = factory.Faker("name")
    attributes = factory.LazyFunction(dict)
    status = ContactStatus.ACTIVE


class SubscriptionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Subscription

    contact = factory.SubFactory(ContactFactory)
    contact_list = factory.SubFactory(ContactListFactory)
    status = SubscriptionStatus.SUBSCRIBED
