"""What the hub answers with itself: HTML pages, JSON answers, the dashboard page, the OpenAPI
document. No decisions: the addons in ``hubproxy.addons`` decide, these render.

- ``pages.py``: the hub's own pages (login problems, progress, 404, ...) and JSON answers;
- ``dashboardpage.py``: the dashboard's HTML, CSS and JavaScript;
- ``openapi.py``: the OpenAPI description of ``/_hub/api/``.
"""
