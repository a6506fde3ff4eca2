"""The dashboard: server-rendered pages with JSON twins, users and roles (fleet/web/app.py)."""
