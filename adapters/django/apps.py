"""The app config (Django finds it here): ``INSTALLED_APPS = [..., "fourmica_x402.adapters.django"]``."""

from .checks import FourmicaX402Config  # noqa: F401
