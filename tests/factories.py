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


class CampaignFactory(factory.django.DjangoModelFactory):
    """A draft campaign; pass `lists=[...]` to target lists."""

    class Meta:
        model = "campaigns.Campaign"
        skip_postgeneration_save = True

    name = factory.Sequence(lambda n: f"Campaign {n}")
    subject = "Hello {{ name | default('friend') }}"
    html = '<p>Hi {{ name }}</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    from_email = "news@skylark.test"
    from_name = "Skylark"

    @factory.post_generation
    def lists(self, create: bool, extracted, **kwargs) -> None:
        if create and extracted:
            self.lists.set(extracted)


def audience(size: int, *, name: str = "Audience", domain: str = "example.com") -> ContactList:
    """A list of `size` subscribed contacts r0@domain, r1@domain, ..."""
    contact_list = ContactListFactory(name=name)
    for i in range(size):
        SubscriptionFactory(
            contact=ContactFactory(email=f"r{i}@{domain}", name=f"R {i}"),
            contact_list=contact_list,
        )
    return contact_list
