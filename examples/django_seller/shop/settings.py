"""Settings of the example Django seller (no database needed: payments live in the Core's file)."""

import os

SECRET_KEY = "example-only-not-secret"  # a throwaway value for a local example
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "shop.urls"
INSTALLED_APPS = ["fourmica_x402.adapters.django"]
MIDDLEWARE = ["fourmica_x402.adapters.django.PaymentMiddleware"]
DATABASES: dict = {}
USE_TZ = True

FOURMICA_X402 = {
    # A throwaway TEST address (Hardhat account #1, publicly known). Set PAY_TO to your own.
    "PAY_TO": os.environ.get("PAY_TO", "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"),
    "NETWORK": "eip155:84532",
    "CORE": os.environ.get("FOURMICA_X402_DB", "sqlite:///fourmica_x402.db"),
}
