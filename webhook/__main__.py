"""``python -m webhook`` is the ``pullsecret-injector`` command."""

import sys

from webhook.cli import main

sys.exit(main())
