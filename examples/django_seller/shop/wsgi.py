"""The shop under a WSGI server:

gunicorn --chdir examples/django_seller -w 2 -b 127.0.0.1:8000 shop.wsgi
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")
application = get_wsgi_application()
