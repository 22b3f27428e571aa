"""The shop under an ASGI server (async Django):

uvicorn --app-dir examples/django_seller shop.asgi:application --port 8000
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
application = get_asgi_application()
