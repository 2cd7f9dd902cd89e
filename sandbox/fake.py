"""Reference data for realistic seed records: countries, names, streets, a product catalog.

Plain data and tiny pure helpers; :mod:`sandbox.seed` draws from them with a
seeded ``random.Random`` so a seed run is reproducible.
"""

from __future__ import annotations

import dataclasses
import random
import unicodedata
from decimal import ROUND_HALF_UP, Decimal


@dataclasses.dataclass(frozen=True, slots=True)
class Country:
    """What addresses, phones and money look like in one country."""

    code: str
    currency: str
    language: str
    timezone: str
    phone_prefix: str
    tld: str
    company_suffix: str
    #: (city, postal code, state or region)
    cities: tuple[tuple[str, str, str | None], ...]
    streets: tuple[str, ...]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    street_number_first: bool = True


COUNTRIES: tuple[Country, ...] = (
    Country("FR", "EUR", "fr-FR", "Europe/Paris", "+33", "fr", "SAS",
            (("Paris", "75002", "Île-de-France"), ("Lyon", "69002", "Auvergne-Rhône-Alpes"),
             ("Marseille", "13001", "Provence-Alpes-Côte d'Azur"),
             ("Toulouse", "31000", "Occitanie"),
             ("Nantes", "44000", "Pays de la Loire"), ("Lille", "59000", "Hauts-de-France")),
            ("rue de la République", "avenue Victor Hugo", "boulevard Haussmann", "rue Nationale",
             "quai des Chartrons", "rue du Faubourg Saint-Antoine"),
            ("Camille", "Julien", "Sophie", "Thomas", "Élodie", "Nicolas", "Chloé", "Antoine"),
            ("Martin", "Bernard", "Dubois", "Durand", "Lefebvre", "Moreau", "Girard", "Fontaine")),
    Country("DE", "EUR", "de-DE", "Europe/Berlin", "+49", "de", "GmbH",
            (("Berlin", "10115", "Berlin"), ("München", "80331", "Bayern"),
             ("Hamburg", "20095", "Hamburg"), ("Köln", "50667", "Nordrhein-Westfalen"),
             ("Frankfurt am Main", "60311", "Hessen")),
            ("Hauptstraße", "Bahnhofstraße", "Gartenweg", "Schillerstraße", "Lindenallee"),
            ("Lukas", "Anna", "Jonas", "Lea", "Felix", "Marie", "Paul", "Hannah"),
            ("Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Wagner", "Becker", "Hoffmann"),
            street_number_first=False),
    Country("GB", "GBP", "en-GB", "Europe/London", "+44", "co.uk", "Ltd",
            (("London", "EC1A 1BB", "Greater London"),
             ("Manchester", "M1 1AE", "Greater Manchester"),
             ("Bristol", "BS1 4DJ", None), ("Edinburgh", "EH1 1YZ", "Scotland"),
             ("Leeds", "LS1 4DY", "West Yorkshire")),
            ("High Street", "Station Road", "Church Lane", "Victoria Road", "King Street"),
            ("Oliver", "Amelia", "George", "Isla", "Harry", "Emily", "Jack", "Sophie"),
            ("Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Evans", "Thomas")),
    Country("US", "USD", "en-US", "America/New_York", "+1", "com", "Inc.",
            (("New York", "10001", "NY"), ("San Francisco", "94105", "CA"),
             ("Austin", "78701", "TX"),
             ("Chicago", "60601", "IL"), ("Seattle", "98101", "WA"), ("Boston", "02108", "MA")),
            ("Main Street", "Market Street", "Broadway", "Maple Avenue", "Park Avenue",
             "Oak Street"),
            ("James", "Olivia", "Michael", "Emma", "David", "Ava", "Daniel", "Mia"),
            ("Johnson", "Miller", "Davis", "Garcia", "Rodriguez", "Anderson", "Clark", "Lewis")),
    Country("ES", "EUR", "es-ES", "Europe/Madrid", "+34", "es", "S.L.",
            (("Madrid", "28013", "Comunidad de Madrid"), ("Barcelona", "08002", "Cataluña"),
             ("Valencia", "46002", "Comunidad Valenciana"), ("Sevilla", "41004", "Andalucía")),
            ("Calle Mayor", "Gran Vía", "Avenida de la Constitución", "Calle de Alcalá"),
            ("Lucía", "Hugo", "Martina", "Pablo", "Sofía", "Álvaro", "Carmen", "Diego"),
            ("García", "Fernández", "López", "Martínez", "Sánchez", "Pérez", "Gómez", "Ruiz"),
            street_number_first=False),
    Country("NL", "EUR", "nl-NL", "Europe/Amsterdam", "+31", "nl", "B.V.",
            (("Amsterdam", "1012 JS", "Noord-Holland"), ("Rotterdam", "3011 AD", "Zuid-Holland"),
             ("Utrecht", "3511 AB", "Utrecht"), ("Eindhoven", "5611 AA", "Noord-Brabant")),
            ("Kerkstraat", "Dorpsstraat", "Stationsweg", "Prinsengracht", "Molenweg"),
            ("Daan", "Emma", "Sem", "Julia", "Lucas", "Tess", "Milan", "Sanne"),
            ("de Jong", "Jansen", "de Vries", "van Dijk", "Bakker", "Visser", "Smit", "Meijer"),
            street_number_first=False),
    Country("CA", "CAD", "en-CA", "America/Toronto", "+1", "ca", "Corp.",
            (("Toronto", "M5H 2N2", "ON"), ("Vancouver", "V6B 1A1", "BC"),
             ("Montréal", "H2Y 1C6", "QC"), ("Calgary", "T2P 1J9", "AB")),
            ("Queen Street West", "Granville Street", "Rue Sainte-Catherine", "Yonge Street"),
            ("Liam", "Charlotte", "Noah", "Chloé", "William", "Léa", "Ethan", "Zoé"),
            ("Tremblay", "Roy", "Gagnon", "MacDonald", "Campbell", "Lee", "Wong", "Martin")),
)

#: Industry → words that make a plausible company name in it.
INDUSTRIES: dict[str, tuple[str, ...]] = {
    "Software": ("Systems", "Software", "Labs", "Digital"),
    "Transportation": ("Logistics", "Freight", "Transport"),
    "Retail": ("Stores", "Market", "Retail"),
    "Manufacturing": ("Industries", "Manufacturing", "Works"),
    "Healthcare": ("Health", "Clinics", "Medical"),
    "Financial Services": ("Capital", "Finance", "Partners"),
    "Telecommunications": ("Telecom", "Networks"),
    "Construction": ("Construction", "Builders"),
    "Hospitality": ("Hotels", "Hospitality"),
    "Education": ("Academy", "Learning"),
}

NAME_WORDS: tuple[str, ...] = (
    "Northwind", "Blue Harbor", "Silverline", "Brightway", "Greenfield", "Atlas", "Summit",
    "Pioneer", "Crystal Bay", "Golden Gate", "Urbania", "Primera", "Cedar", "Redwood", "Orion",
    "Nova", "Alpine", "Coastal", "Evergreen", "Meridian", "Keystone", "Horizon", "Vertex",
    "Sterling", "Lakeside", "Ironbridge", "Westbrook", "Oakridge", "Falcon", "Polaris",
)

JOB_TITLES: tuple[tuple[str, str], ...] = (
    ("Chief Financial Officer", "Finance"), ("Accounts Payable Manager", "Finance"),
    ("IT Director", "IT"), ("Network Administrator", "IT"), ("Procurement Officer", "Purchasing"),
    ("Office Manager", "Administration"), ("Chief Executive Officer", "Management"),
    ("Operations Manager", "Operations"), ("Head of Customer Service", "Customer Service"),
)


@dataclasses.dataclass(frozen=True, slots=True)
class CatalogItem:
    """A product template: the seed makes variants of these."""

    name: str
    sku: str
    type: str
    category: str
    billing_type: str
    billing_period: str | None
    unit: str
    price: float
    cost: float


CATALOG: tuple[CatalogItem, ...] = (
    CatalogItem("Fibre 1 Gbit/s", "FIB-1G", "service", "Internet", "recurring", "monthly",
                "line", 49.9, 18.0),
    CatalogItem("Fibre 10 Gbit/s Pro", "FIB-10G", "service", "Internet", "recurring", "monthly",
                "line", 249.0, 95.0),
    CatalogItem("Mobile plan 50 GB", "MOB-50", "service", "Mobile", "recurring", "monthly",
                "seat", 19.99, 6.5),
    CatalogItem("Cloud backup 1 TB", "BCK-1T", "digital", "Cloud", "recurring", "monthly",
                "TB", 12.0, 3.1),
    CatalogItem("Managed firewall", "FW-MGD", "service", "Security", "recurring", "yearly",
                "site", 1290.0, 410.0),
    CatalogItem("Microsoft 365 Business", "M365-BUS", "digital", "Software", "recurring",
                "monthly", "seat", 12.5, 9.8),
    CatalogItem("Router X5", "RTR-X5", "good", "Hardware", "one_time", None, "each", 320.0,
                190.0),
    CatalogItem("IP desk phone", "PHN-IP2", "good", "Hardware", "one_time", None, "each", 139.0,
                72.0),
    CatalogItem("On-site installation", "SRV-INST", "service", "Services", "one_time", None,
                "visit", 180.0, 90.0),
    CatalogItem("Support hours", "SRV-HOUR", "service", "Services", "usage", None, "hour", 95.0,
                40.0),
    CatalogItem("International calls", "VOIP-INTL", "service", "Voice", "usage", None, "minute",
                0.12, 0.04),
    CatalogItem("SIP trunk", "SIP-TRK", "service", "Voice", "recurring", "quarterly", "channel",
                24.0, 8.0),
)

VARIANTS: tuple[str, ...] = ("", "Business", "Pro", "Enterprise", "Starter", "Plus")

CASES: tuple[tuple[str, str, str, str], ...] = (
    # (subject, category, type, description)
    ("Internet connection drops every evening", "Connectivity", "incident",
     "Since Monday the line drops between 18:00 and 20:00; the router shows LOS."),
    ("Invoice amount differs from the quote", "Billing", "complaint",
     "The March invoice bills 12 seats instead of the 10 agreed in the quote."),
    ("Request for a second SIP trunk", "Sales", "request",
     "We are opening a new site and need 10 more channels from next month."),
    ("How do I add a user to the backup service?", "Cloud", "question",
     "Which portal page lets an administrator invite a new user?"),
    ("Router replacement after lightning strike", "Hardware", "problem",
     "The router no longer powers on after last night's storm."),
    ("Change of billing address", "Billing", "request",
     "Please send invoices to our new head office from next month on."),
    ("Slow upload speed on fibre line", "Connectivity", "problem",
     "Upload tests show 80 Mbit/s on a 1 Gbit/s symmetric line."),
)


def money(value: Decimal | float) -> Decimal:
    """``value`` rounded half-up to cents."""
    return Decimal(str(value)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def slug(text: str) -> str:
    """ASCII, lower-case, dash-separated: ``Crystal Bay Hôtels`` → ``crystal-bay-hotels``."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    words = "".join(c if c.isalnum() else " " for c in ascii_text.lower()).split()
    return "-".join(words)


def phone(rng: random.Random, country: Country) -> str:
    """An E.164 number of ``country`` (+33 then 9 digits, +1 and +44 then 10)."""
    length = 10 if country.phone_prefix in ("+1", "+44") else 9
    rest = "".join(str(rng.randint(0, 9)) for _ in range(length - 1))
    return f"{country.phone_prefix}{rng.randint(2, 9)}{rest}"


def street_line(rng: random.Random, country: Country) -> str:
    street = rng.choice(country.streets)
    number = rng.randint(1, 180)
    return f"{number} {street}" if country.street_number_first else f"{street} {number}"


def address(rng: random.Random, country: Country, *, kind: str = "main",
            label: str | None = None, billing: bool = True, shipping: bool = True) -> dict:
    """A postal address in ``country``."""
    city, postal_code, state = rng.choice(country.cities)
    return {
        "type": kind,
        "label": label,
        "isBilling": billing,
        "isShipping": shipping,
        "line1": street_line(rng, country),
        "line2": rng.choice([None, None, "Building B", "Suite 400", "2nd floor"]),
        "city": city,
        "state": state,
        "postalCode": postal_code,
        "countryCode": country.code,
    }
