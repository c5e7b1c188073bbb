"""The hub as a mitmdump script.

    mitmdump --mode reverse:http://127.0.0.1:1@7112 -s addons/hub.py \
        --set hub_labels=/etc/rediacc/hub/hub.labels.yaml --set hub_env_file=hub/.env

The reverse target is a placeholder: the hub routes every request itself. ``hub start`` runs the
same addons in a leaner embedded master.
"""

from hubproxy.addons import hub_addons
from hubproxy.addons.bootstrap import Bootstrap
from hubproxy.context import HubContext

_context = HubContext()
addons = [Bootstrap(_context), *hub_addons(_context)]
